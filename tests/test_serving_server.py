"""Open Inference Protocol V2 conformance of the model server, over real HTTP.

One real server process (started through ``pai-lab serve``'s argparse command) serves an
iris LogisticRegression; every route is exercised with good and bad requests.
"""

from __future__ import annotations

import re
import threading

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from pai_lab.serving.testing import http, serve_process, stop_process, wait_ready
from tests.support.common import free_port

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    return x, LogisticRegression(max_iter=1000).fit(x, y)


@pytest.fixture(scope="module")
def server(tmp_path_factory, iris):
    d = tmp_path_factory.mktemp("serve")
    joblib.dump(iris[1], d / "model.joblib")
    port = free_port()
    proc = serve_process(
        [str(d / "model.joblib"), "--name", "iris", "--port", str(port), "--token", TOKEN,
         "--max-latency-ms", "50", "--max-body-bytes", str(1 << 20)],
        log_path=d / "server.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop_process(proc)


def infer(url, body, token=TOKEN, path="/v2/models/iris/infer", **kw):
    return http("POST", url + path, body, token=token, **kw)


def tensor(x, name="input-0", datatype="FP64"):
    x = np.asarray(x)
    return {"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.tolist()}


def metric(text: str, name: str, labels: str = "") -> float:
    pat = re.escape(name) + (
        r"\{[^}]*" + re.escape(labels) + r"[^}]*\}" if labels else r"(\{[^}]*\})?"
    )
    total = 0.0
    for m in re.finditer(r"^" + pat + r" ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(m.lastindex))
    return total


# -- health, metadata, auth ----------------------------------------------------------------


def test_health_routes_are_open_for_probes(server):
    assert http("GET", server + "/v2/health/live")[:2] == (200, {"live": True})
    assert http("GET", server + "/v2/health/ready")[:2] == (200, {"ready": True})


@pytest.mark.parametrize("path", ["/v2", "/v2/models/iris", "/v2/models/iris/ready", "/metrics"])
def test_token_required(server, path):
    status, body, headers = http("GET", server + path)
    assert status == 401 and "token" in body["error"]
    assert headers.get("www-authenticate", "").startswith("Bearer")
    assert http("GET", server + path, token="wrong")[0] == 401
    assert http("GET", server + path, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert http("GET", server + path, token=TOKEN)[0] == 200


def test_infer_needs_token(server, iris):
    body = {"inputs": [tensor(iris[0][:1])]}
    assert infer(server, body, token=None)[0] == 401
    assert infer(server, body, token="nope")[0] == 401


def test_server_metadata(server):
    status, body, _ = http("GET", server + "/v2", token=TOKEN)
    assert status == 200
    assert body["name"] == "pai-lab" and body["version"] and body["extensions"] == []


def test_model_metadata_has_signature(server):
    for path in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        status, body, _ = http("GET", server + path, token=TOKEN)
        assert status == 200
        assert body["name"] == "iris" and body["versions"] == ["1"]
        assert body["platform"] == "sklearn"
        assert body["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
        assert body["outputs"] == [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ]


def test_model_ready(server):
    assert http("GET", server + "/v2/models/iris/ready", token=TOKEN)[:2] == (
        200,
        {"name": "iris", "ready": True},
    )
    assert http("GET", server + "/v2/models/iris/versions/1/ready", token=TOKEN)[0] == 200


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/iris/versions/9"),
        ("GET", "/v2/models/iris/versions/9/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/iris/versions/9/infer"),
        ("GET", "/v3/whatever"),
    ],
)
def test_unknown_model_version_or_route_is_404(server, iris, method, path):
    body = {"inputs": [tensor(iris[0][:1])]} if method == "POST" else None
    status, resp, _ = http(method, server + path, body, token=TOKEN)
    assert status == 404
    assert isinstance(resp["error"], str) and resp["error"]


# -- inference ---------------------------------------------------------------------------


def test_predict_matches_in_process(server, iris):
    x, model = iris
    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"):
        status, body, _ = infer(server, {"id": "req-7", "inputs": [tensor(x)]}, path=path)
        assert status == 200, body
        assert body["model_name"] == "iris" and body["model_version"] == "1"
        assert body["id"] == "req-7"
        (out,) = body["outputs"]
        assert out["name"] == "predict" and out["datatype"] == "INT64" and out["shape"] == [150]
        assert out["data"] == model.predict(x).tolist()


def test_flat_data_and_fp32_accepted(server, iris):
    x, model = iris
    t = {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x[:3].ravel().tolist()}
    status, body, _ = infer(server, {"inputs": [t]})
    assert status == 200, body
    assert body["outputs"][0]["data"] == model.predict(x[:3].astype(np.float32)).tolist()


def test_predict_proba_by_output_name_and_by_parameter(server, iris):
    x, model = iris
    expected = model.predict_proba(x[:10])
    status, body, _ = infer(
        server, {"inputs": [tensor(x[:10])], "outputs": [{"name": "predict_proba"}]}
    )
    assert status == 200, body
    (out,) = body["outputs"]
    assert out["name"] == "predict_proba" and out["shape"] == [10, 3] and out["datatype"] == "FP64"
    np.testing.assert_allclose(np.reshape(out["data"], (10, 3)), expected, rtol=1e-12)

    status, body, _ = infer(
        server, {"inputs": [tensor(x[:10])], "parameters": {"method": "predict_proba"}}
    )
    assert status == 200 and body["outputs"][0]["name"] == "predict_proba"
    np.testing.assert_allclose(np.reshape(body["outputs"][0]["data"], (10, 3)), expected)

    status, body, _ = infer(
        server,
        {"inputs": [tensor(x[:2])], "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
    )
    assert [o["name"] for o in body["outputs"]] == ["predict", "predict_proba"]


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"this is not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"outputs": []}', "no 'inputs'"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}',
         "model expects [-1, 4]"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3]}]}',
         "needs 4 elements"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": ["a","b","c","d"]}]}',
         "does not accept strings"),
        (b'{"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1, 4], "data": [1,2,3,4]}]}',
         "unsupported datatype"),
        (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": ["a","b","c","d"]}]}',
         "must be FP64"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1,2,3,4]}],'
         b' "outputs": [{"name": "decision_function"}]}', "unknown output"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1e999,2,3,4]}]}',
         "infinity"),
        (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1,2,3,4]}],'
         b' "parameters": {"method": "transform"}}', "'method'"),
    ],
)  # fmt: skip
def test_bad_payloads_get_400_with_a_message(server, raw, needle):
    status, body, _ = infer(server, None, raw=raw)
    assert status == 400, body
    assert needle in body["error"]


def test_huge_body_is_400_with_a_message(server):
    raw = b'{"inputs": [' + b" " * (2 << 20) + b"]}"
    status, body, _ = infer(server, None, raw=raw)
    assert status == 400
    assert "exceeds the limit" in body["error"]
    # the server is fine afterwards
    assert http("GET", server + "/v2/health/ready")[0] == 200


def test_wrong_method_is_json_error(server):
    status, body, _ = http("GET", server + "/v2/models/iris/infer", token=TOKEN)
    assert status == 405 and "error" in body


# -- batching and metrics --------------------------------------------------------------


def _scrape(url):
    status, text, _ = http("GET", url + "/metrics", token=TOKEN)
    assert status == 200
    return text


def test_concurrent_requests_are_merged_and_split_back(server, iris):
    x, model = iris
    before = _scrape(server)
    calls0 = metric(before, "pai_serving_batch_size_count")
    rows0 = metric(before, "pai_serving_batch_size_sum")
    n_threads, rounds = 16, 3
    results: dict = {}
    barrier = threading.Barrier(n_threads)

    def client(i):
        for r in range(rounds):
            barrier.wait()
            k = (i * rounds + r) % 150
            status, body, _ = infer(server, {"inputs": [tensor(x[k : k + 1])]})
            results[(i, r)] = (k, status, body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n_threads * rounds
    for k, status, body in results.values():  # each caller got its own row's answer
        assert status == 200, body
        assert body["outputs"][0]["data"] == model.predict(x[k : k + 1]).tolist()
    after = _scrape(server)
    calls = metric(after, "pai_serving_batch_size_count") - calls0
    rows = metric(after, "pai_serving_batch_size_sum") - rows0
    assert rows == n_threads * rounds  # every request's row went through predict once
    assert calls < n_threads * rounds  # ...in fewer predict calls: requests were merged


def test_metrics_count_requests_and_latency(server, iris):
    text = _scrape(server)
    before = metric(text, "pai_serving_requests_total", 'code="200"')
    lat_before = metric(text, "pai_serving_request_duration_seconds_count")
    for _ in range(3):
        assert infer(server, {"inputs": [tensor(iris[0][:1])]})[0] == 200
    infer(server, None, raw=b"nope")
    text = _scrape(server)
    assert metric(text, "pai_serving_requests_total", 'code="200"') == before + 3
    assert metric(text, "pai_serving_requests_total", 'code="400"') >= 1
    assert metric(text, "pai_serving_request_duration_seconds_count") == lat_before + 4
    assert 'pai_serving_batch_size_bucket{le="1.0",model="iris"}' in text


# -- workers and the command line ------------------------------------------------------


def test_two_workers_share_the_port_and_metrics(tmp_path, iris):
    joblib.dump(iris[1], tmp_path / "m.joblib")
    port = free_port()
    proc = serve_process(
        [str(tmp_path / "m.joblib"), "--name", "iris", "--port", str(port), "--workers", "2"],
        log_path=tmp_path / "log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        for _ in range(20):
            assert infer(url, {"inputs": [tensor(iris[0][:2])]}, token=None)[0] == 200
        # whichever worker answers the scrape, it reports the whole server
        counts = set()
        for _ in range(6):
            text = http("GET", url + "/metrics")[1]
            counts.add(metric(text, "pai_serving_requests_total", 'code="200"'))
        assert counts == {20.0}, (counts, text)
        import subprocess

        kids = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(kids) == 2
    finally:
        stop_process(proc)


def test_serve_command_reports_a_missing_model(tmp_path):
    proc = serve_process([str(tmp_path / "absent.joblib"), "--port", str(free_port())],
                         log_path=tmp_path / "log")  # fmt: skip
    assert proc.wait(60) == 2
    assert "does not exist" in (tmp_path / "log").read_text()
