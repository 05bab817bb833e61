"""Local deployments: router + replica processes, canary split, shadow, restarts, scaling."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from pai_lab.errors import BadRequest, NotFound
from pai_lab.serving.local import LocalDeploymentBackend, _pid_alive
from pai_lab.serving.router import validate_deployment
from pai_lab.serving.testing import http

TOKEN = "deploy-token"
X, Y = load_iris(return_X_y=True)
ROW = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": X[0].tolist()}]}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    joblib.dump(LogisticRegression(max_iter=1000).fit(X, Y), d / "v1.joblib")
    joblib.dump(LogisticRegression(max_iter=1000, C=0.1).fit(X, Y), d / "v2.joblib")
    # the shadow model takes 3 features: every mirrored request fails on it, and clients
    # must never notice
    joblib.dump(LogisticRegression(max_iter=1000).fit(X[:, :3], Y), d / "shadow.joblib")
    return d


def deployment(models, canary=10, main_replicas=2):
    return {
        "workspace": "team-a",
        "name": "iris-svc",
        "token": TOKEN,
        "variants": [
            {"name": "main", "model": "iris", "version": "1", "framework": "sklearn",
             "model_path": str(models / "v1.joblib"), "replicas": main_replicas,
             "traffic": 100 - canary},
            {"name": "canary", "model": "iris", "version": "2",
             "model_path": str(models / "v2.joblib"), "replicas": 1, "traffic": canary},
            {"name": "shadow", "model": "iris", "version": "9",
             "model_path": str(models / "shadow.joblib"), "shadow": True},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return LocalDeploymentBackend(
        data_dir=str(tmp_path_factory.mktemp("data")), health_interval=0.25, unhealthy_after=2
    )


@pytest.fixture(scope="module")
def deployed(backend, models):
    status = run(backend.create(deployment(models)))
    try:
        yield status
    finally:
        try:
            run(backend.delete("iris-svc", "team-a"))
        except NotFound:
            pass


def infer_many(url, n, path="/v2/models/iris/infer", workers=8):
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda _: http("POST", url + path, ROW, token=TOKEN), range(n)))


def variant(status, name):
    return next(v for v in status["variants"] if v["name"] == name)


def test_validation_names_the_field(models):
    good = deployment(models)
    validate_deployment(good)
    cases = [
        ({"variants": []}, "variants"),
        ({"name": ""}, "name"),
        ({"variants": [dict(good["variants"][0], traffic=80)]}, "add up to 100"),
        ({"variants": [dict(good["variants"][0], model_path="/nonexistent/m.joblib")]}, "does not exist"),
        ({"variants": [dict(good["variants"][0], replicas=0)]}, "replicas"),
        ({"variants": [dict(good["variants"][0], min_replicas=3, max_replicas=2)]}, "min_replicas"),
        ({"variants": [dict(good["variants"][0], traffic=150)]}, "percentage"),
        ({"variants": [dict(good["variants"][2])]}, "non-shadow"),
        ({"variants": [good["variants"][0], good["variants"][0]]}, "duplicate"),
    ]  # fmt: skip
    for change, needle in cases:
        with pytest.raises(BadRequest, match=re.escape(needle)):
            validate_deployment({**good, **change})


def test_create_reports_url_and_replicas(deployed):
    assert deployed["state"] == "ready"
    assert deployed["url"].startswith("http://127.0.0.1:")
    assert variant(deployed, "main")["replicas"] == {"desired": 2, "ready": 2, "total": 2}
    assert variant(deployed, "canary")["replicas"]["ready"] == 1
    pids = [r["pid"] for v in deployed["variants"] for r in v["replica_list"]]
    assert len(set(pids)) == 4 and all(_pid_alive(p) for p in pids)


def test_router_auth_and_open_health(deployed):
    url = deployed["url"]
    assert http("GET", url + "/v2/health/ready")[0] == 200
    assert http("POST", url + "/v2/models/iris/infer", ROW)[0] == 401
    assert http("POST", url + "/v2/models/iris/infer", ROW, token="wrong")[0] == 401
    status, body, _ = http("GET", url + "/v2/models/iris", token=TOKEN)
    assert status == 200 and body["inputs"][0]["shape"] == [-1, 4]
    assert http("GET", url + "/v2/models/unknown", token=TOKEN)[0] == 404
    assert http("POST", url + "/v2/models/iris/versions/7/infer", ROW, token=TOKEN)[0] == 404
    # replicas refuse direct calls without the router's private token
    port = variant(deployed, "main")["replica_list"][0]["port"]
    assert http("POST", f"http://127.0.0.1:{port}/v2/models/iris/infer", ROW, token=TOKEN)[0] == 401


def test_canary_split_is_within_four_sigma_and_shadow_is_mirrored(deployed):
    url = deployed["url"]
    n, p = 300, 0.10
    results = infer_many(url, n)
    assert all(s == 200 for s, _, _ in results), {s for s, _, _ in results}
    by_variant = [h["x-pai-variant"] for _, _, h in results]
    versions = [b["model_version"] for _, b, _ in results]
    canary = by_variant.count("canary")
    assert by_variant.count("main") + canary == n
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(canary - n * p) <= 4 * sigma, canary
    assert versions.count("2") == canary  # the canary's answers come from version 2
    # the shadow got a copy of every request; it failed on all of them (3-feature model)
    # and no client saw that
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = http("GET", url + "/metrics", token=TOKEN)[1]
        m = re.search(
            r'pai_router_shadow_requests_total\{code="400",variant="shadow"\} (\S+)', text
        )
        if m and float(m.group(1)) >= n:
            break
        time.sleep(0.2)
    assert m and float(m.group(1)) >= n
    assert 'pai_router_shadow_requests_total{code="200"' not in text


def test_version_in_url_pins_the_variant(deployed):
    results = infer_many(deployed["url"], 20, path="/v2/models/iris/versions/2/infer")
    assert {h["x-pai-variant"] for _, _, h in results} == {"canary"}
    assert {b["model_version"] for _, b, _ in results} == {"2"}


def test_killed_replica_keeps_serving_and_is_restarted(backend, deployed):
    before = run(backend.status("iris-svc", "team-a"))
    main = variant(before, "main")
    victim = main["replica_list"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    results = infer_many(deployed["url"], 60, path="/v2/models/iris/versions/1/infer", workers=4)
    assert [s for s, _, _ in results] == [200] * 60
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        st = variant(run(backend.status("iris-svc", "team-a")), "main")
        pids = {r["pid"] for r in st["replica_list"]}
        if st["restarts"] >= 1 and st["replicas"]["ready"] == 2 and victim not in pids:
            break
        time.sleep(0.25)
    assert st["restarts"] >= 1 and victim not in pids
    assert st["replicas"]["ready"] == 2


def test_update_shifts_traffic(backend, models, deployed):
    st = run(backend.update(deployment(models, canary=0)))
    assert variant(st, "canary")["traffic"] == 0
    results = infer_many(deployed["url"], 40)
    assert {h["x-pai-variant"] for _, _, h in results} == {"main"}
    with pytest.raises(BadRequest, match="add up to 100"):
        bad = deployment(models)
        bad["variants"][0]["traffic"] = 50
        run(backend.update(bad))


def test_reattach_finds_the_running_router(tmp_path, deployed, backend):
    again = LocalDeploymentBackend(data_dir=backend.data_dir)
    found = run(again.reattach())
    st = found["team-a/iris-svc"]
    assert st["url"] == deployed["url"] and st["state"] == "ready"


def test_autoscaling_out_and_in_then_delete(tmp_path, models):
    backend = LocalDeploymentBackend(
        data_dir=str(tmp_path), health_interval=0.25, target_inflight=1.0,
        autoscale_window=1.0, scale_in_delay=1.0,
    )  # fmt: skip
    dep = {
        "workspace": "team-a",
        "name": "auto",
        "token": TOKEN,
        "variants": [{"name": "main", "model": "iris", "version": "1",
                      "model_path": str(models / "v1.joblib"),
                      "replicas": 1, "min_replicas": 1, "max_replicas": 2}],
    }  # fmt: skip
    st = run(backend.create(dep))
    url = st["url"]
    try:
        # 6 clients in a closed loop keep ~6 requests in flight: the pool scales to 2
        deadline = time.monotonic() + 90
        grown = False
        with ThreadPoolExecutor(6) as ex:
            while time.monotonic() < deadline and not grown:
                list(ex.map(lambda _: http("POST", url + "/v2/models/iris/infer", ROW, token=TOKEN),
                            range(24)))  # fmt: skip
                v = variant(run(backend.status("auto", "team-a")), "main")
                grown = v["replicas"]["desired"] == 2
        assert grown
        # idle: after the scale-in delay it goes back to min_replicas
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            v = variant(run(backend.status("auto", "team-a")), "main")
            if v["replicas"]["desired"] == 1 and v["replicas"]["total"] == 1:
                break
            time.sleep(0.25)
        assert v["replicas"] == {"desired": 1, "ready": 1, "total": 1}
        assert http("POST", url + "/v2/models/iris/infer", ROW, token=TOKEN)[0] == 200
    finally:
        pids = [r["pid"] for r in v["replica_list"]] + [st["router_pid"]]
        run(backend.delete("auto", "team-a"))
    time.sleep(0.5)
    assert not any(_pid_alive(p) for p in pids)
    with pytest.raises(NotFound):
        run(backend.status("auto", "team-a"))
    np.testing.assert_equal(os.path.exists(tmp_path / "deployments" / "team-a" / "auto"), False)
