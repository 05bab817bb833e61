"""A TorchScript model served over V2: FP32 in and out, through adaptive batching."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from pai_lab.serving.testing import http, serve_process, stop_process, wait_ready
from tests.support.common import free_port

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("torch")
    net = Net().eval()
    torch.jit.script(net).save(str(d / "net.pt"))
    (d / "model.json").write_text(
        json.dumps(
            {
                "signature": {
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}],
                }
            }
        )
    )
    port = free_port()
    proc = serve_process(
        [str(d), "--name", "net", "--framework", "torch", "--port", str(port),
         "--device", "cpu", "--max-latency-ms", "50"],
        log_path=d / "log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, net
    finally:
        stop_process(proc)


def test_metadata_comes_from_model_json(torch_server):
    url, _ = torch_server
    status, body, _ = http("GET", url + "/v2/models/net")
    assert status == 200
    assert body["platform"] == "pytorch_torchscript"
    assert body["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]


def test_fp32_outputs_match_the_module(torch_server):
    url, net = torch_server
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [5, 4], "data": x.tolist()}]
    }
    status, resp, _ = http("POST", url + "/v2/models/net/infer", body)
    assert status == 200, resp
    (out,) = resp["outputs"]
    assert out["name"] == "probs" and out["datatype"] == "FP32" and out["shape"] == [5, 3]
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    got = np.asarray(out["data"], dtype=np.float32).reshape(5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_wrong_shape_is_400(torch_server):
    url, _ = torch_server
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
    }
    status, resp, _ = http("POST", url + "/v2/models/net/infer", body)
    assert status == 400 and "[-1, 4]" in resp["error"]


def test_concurrent_requests_batch_and_each_gets_its_rows(torch_server):
    url, net = torch_server
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(i % 3 + 1, 4)).astype(np.float32) for i in range(12)]
    results = {}
    barrier = threading.Barrier(len(xs))

    def call(i):
        x = xs[i]
        barrier.wait()
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}  # fmt: skip
        results[i] = http("POST", url + "/v2/models/net/infer", body)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        status, resp, _ = results[i]
        assert status == 200, resp
        with torch.inference_mode():
            expected = net(torch.from_numpy(x)).numpy()
        got = np.asarray(resp["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
