"""PyTorch end to end through the real control plane: the digits example as 1- and 2-worker
jobs (gloo DDP), resume from a checkpoint on retry, a killed rank, and the TorchScript
model registered, deployed and served over V2 (also through adaptive batching).

All jobs are submitted once per module (they run side by side) and each test waits for the
one it needs. Epochs are few so every job takes seconds of CPU.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pai_lab.serving.testing import http, stop_process, wait_ready
from tests.support.common import free_port

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "torch_digits.ipynb"
EPOCHS = 5
SIGNATURE = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
}


def _submit(client, **spec) -> str:
    return client.submit_file(str(EXAMPLE), **spec)["id"]


@pytest.fixture(scope="module")
def jobs(shared_control):
    """Submit every training job once; tests wait for the one they need."""
    client = shared_control.client()
    params = {"epochs": EPOCHS, "seed": 0}
    return {
        "one": _submit(client, parameters=params, outputs=["model.pt"]),
        "two": _submit(client, parameters=params, workers=2, outputs=["model.pt"]),
        "resume": _submit(
            client,
            parameters={**params, "fail_at_epoch": 3},
            workers=2,
            outputs=["model.pt"],
            retries=1,
        ),
    }


_finished: dict[str, dict] = {}


def finished(cp, job_id: str) -> dict:
    if job_id not in _finished:
        _finished[job_id] = cp.client().wait_job(job_id)
    return _finished[job_id]


def logs(cp, job_id: str) -> str:
    return "".join(cp.client().iter_logs(job_id))


def last_metric(job: dict, name: str) -> float:
    values = [m for m in job.get("metrics") or [] if m["name"] == name]
    assert values, f"job {job['id']} recorded no {name!r}: {job.get('metrics')}"
    return max(values, key=lambda m: m.get("step") if m.get("step") is not None else -1)["value"]


def assert_succeeded(cp, job: dict) -> None:
    assert job["state"] == "succeeded", (job.get("exit_reason"), logs(cp, job["id"])[-3000:])


# ---- training ----------------------------------------------------------------------------
def test_one_and_two_workers_converge_the_same(shared_control, jobs):
    one = finished(shared_control, jobs["one"])
    two = finished(shared_control, jobs["two"])
    assert_succeeded(shared_control, one)
    assert_succeeded(shared_control, two)
    acc1, acc2 = last_metric(one, "accuracy"), last_metric(two, "accuracy")
    assert acc1 > 0.9 and acc2 > 0.9, (acc1, acc2)
    # the same global batch (2 x 32 rows, gradients averaged by DDP) and the same data order
    assert abs(acc1 - acc2) <= 0.03, (acc1, acc2)
    assert last_metric(two, "samples_per_s") > 0
    steps = sorted(m["step"] for m in two["metrics"] if m["name"] == "accuracy")
    assert steps == list(range(EPOCHS))  # rank 0 alone logs metrics: once per epoch


def test_both_ranks_log_into_the_job_log(shared_control, jobs):
    finished(shared_control, jobs["two"])
    text = logs(shared_control, jobs["two"])
    assert "[rank 0] rank 0/2 on cpu" in text, text[-3000:]
    assert "[rank 1] rank 1/2 on cpu" in text, text[-3000:]
    assert f"[rank 0] epoch {EPOCHS - 1}: loss" in text
    # rank 0 alone saved the TorchScript model, and the job uploaded it
    assert "[rank 0] saved model.pt" in text and "[rank 1] saved model.pt" not in text
    one_text = logs(shared_control, jobs["one"])
    assert "rank 0/1 on cpu" in one_text and "[rank " not in one_text


def test_retry_resumes_from_the_checkpoint(shared_control, jobs):
    job = finished(shared_control, jobs["resume"])
    assert_succeeded(shared_control, job)
    assert job["attempt"] == 2
    # attempt 1 (its run dir keeps logs.txt and result.json) stopped after epoch 2
    first = shared_control.data_dir / "runs" / jobs["resume"] / "1"
    result = json.loads((first / "result.json").read_text())
    assert result["state"] == "failed"
    assert "simulated preemption after epoch 2 (attempt 1)" in result["exit_reason"], result
    first_log = (first / "logs.txt").read_text()
    assert "[rank 0] epoch 2: loss" in first_log and "epoch 3: loss" not in first_log
    text = logs(shared_control, jobs["resume"])
    # attempt 2's log: both ranks resumed after the last checkpointed epoch (a rank that
    # started over would desynchronise DDP) and epochs 0..2 were not trained again
    assert "attempt 2 on" in text, text[-3000:]
    second = text[text.index("attempt 2 on") :]
    assert "[rank 0] resumed from checkpoint at epoch 2" in second, second[-3000:]
    assert "[rank 1] resumed from checkpoint at epoch 2" in second, second[-3000:]
    assert not re.search(r"\] epoch [012]: loss", second), second
    for epoch in range(3, EPOCHS):
        assert f"[rank 0] epoch {epoch}: loss" in second
    # attempt 2's metrics only cover the epochs it trained, and it still converged
    steps = sorted(m["step"] for m in job["metrics"] if m["name"] == "accuracy")
    assert steps == list(range(3, EPOCHS)), job["metrics"]
    assert last_metric(job, "accuracy") > 0.9
    # the resumed run continues the uninterrupted one: same weights, optimizer state and
    # data order, so the same accuracy per epoch (to within one test image of 450)
    two = finished(shared_control, jobs["two"])
    for epoch in range(3, EPOCHS):
        resumed, straight = (
            next(m["value"] for m in j["metrics"] if m["name"] == "accuracy" and m["step"] == epoch)
            for j in (job, two)
        )
        assert abs(resumed - straight) <= 1 / 450 + 1e-9, (epoch, resumed, straight)


def _kernel_of_rank(run_dir: Path, rank: int) -> int | None:
    """The kernel process running ``rank``'s notebook (the runner lists kernel pids)."""
    try:
        pids = (run_dir / "kernel.pid").read_text().split()
    except OSError:
        return None
    for p in pids:
        try:
            env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(p)
    return None


def test_killing_one_rank_fails_the_job_naming_that_rank(shared_control):
    """SIGKILL rank 1's training process (what the OOM killer does): the job fails and the
    reason names rank 1, even though rank 0 also errors when its gloo peer vanishes."""
    client = shared_control.client()
    job_id = _submit(client, parameters={"epochs": 100000}, workers=2)
    run_dir = shared_control.data_dir / "runs" / job_id / "1"
    pid = None
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while pid is None and time.monotonic() < deadline:
        job = client.get_job(job_id)
        assert job["state"] in ("queued", "starting", "running"), job
        if "[rank 0] epoch 0: loss" in logs(shared_control, job_id):  # both ranks training
            pid = _kernel_of_rank(run_dir, 1)
        else:
            time.sleep(0.5)
    assert pid is not None, logs(shared_control, job_id)[-3000:]
    os.kill(pid, signal.SIGKILL)
    job = client.wait_job(job_id)
    text = logs(shared_control, job_id)
    assert job["state"] == "failed", job
    assert job["exit_reason"].startswith("rank 1: "), (job["exit_reason"], text[-3000:])
    assert "kernel died" in job["exit_reason"], job["exit_reason"]


# ---- the TorchScript model: register, deploy, serve --------------------------------------
@pytest.fixture(scope="module")
def model(shared_control, jobs, tmp_path_factory):
    """The 2-worker job's model.pt registered as digits:1, with a local copy of the version."""
    job = finished(shared_control, jobs["two"])
    assert_succeeded(shared_control, job)
    client = shared_control.client()
    version = client.register_model(
        "digits",
        from_job=jobs["two"],
        path="outputs/model.pt",
        framework="torch",
        signature=SIGNATURE,
    )
    d = tmp_path_factory.mktemp("digits-model")
    files = client.list_files(f"models/digits/{version['version']}")
    for f in files:
        client.download(f["path"], d / f["name"])
    return version, d


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x[:40] / 16.0).astype(np.float32), y[:40]


def torch_logits(model_dir: Path, x: np.ndarray) -> np.ndarray:
    net = torch.jit.load(str(model_dir / "model.pt"))
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def infer_body(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }


def test_registered_version_records_framework_signature_and_lineage(model, jobs):
    version, d = model
    assert version["framework"] == "torch"
    assert version["signature"] == SIGNATURE
    assert jobs["two"] in json.dumps(version)  # lineage: the source job
    assert version["metrics"]["accuracy"] > 0.9
    assert (d / "model.pt").stat().st_size > 0


def test_deployment_answers_v2_with_the_models_logits(shared_control, model, digits):
    version, d = model
    client = shared_control.client()
    dep = client.create_deployment("digits", model=f"digits:{version['version']}")
    try:
        x, y = digits
        status, resp, _ = http(
            "POST", dep["url"].rstrip("/") + "/v2/models/digits/infer", infer_body(x), dep["token"]
        )
        assert status == 200, resp
        (out,) = resp["outputs"]
        assert out["name"] == "logits" and out["datatype"] == "FP32"
        assert out["shape"] == [len(x), 10]
        got = np.asarray(out["data"], dtype=np.float32).reshape(len(x), 10)
        expected = torch_logits(d, x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert (got.argmax(1) == expected.argmax(1)).all()
        assert (got.argmax(1) == y).mean() > 0.9
        # no token: refused
        status, _, _ = http(
            "POST", dep["url"].rstrip("/") + "/v2/models/digits/infer", infer_body(x)
        )
        assert status == 401
    finally:
        client.delete_deployment("digits")


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    """``pai-lab serve`` on the registered files, with a generous batching window."""
    _, d = model
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pai_lab.cli", "serve", str(d / "model.pt"),
             "--name", "digits", "--port", str(port), "--device", "cpu",
             "--max-batch-size", "64", "--max-latency-ms", "200"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop_process(proc)


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}\{{model="digits"\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(served, model, digits):
    _, d = model
    x, _ = digits
    # requests of 1..4 rows each, released together so the batcher merges them
    slices = [(i, i + 1 + i % 4) for i in range(0, 30, 3)]
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(len(slices))

    def call(k: int, lo: int, hi: int) -> None:
        barrier.wait()
        results[k] = http("POST", served + "/v2/models/digits/infer", infer_body(x[lo:hi]))

    _, before, _ = http("GET", served + "/metrics")
    calls_before = _metric(before, "pai_serving_batch_size_count")
    threads = [threading.Thread(target=call, args=(k, lo, hi)) for k, (lo, hi) in enumerate(slices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = torch_logits(d, x)
    for k, (lo, hi) in enumerate(slices):
        status, resp, _ = results[k]
        assert status == 200, resp
        (out,) = resp["outputs"]
        assert out["shape"] == [hi - lo, 10]
        got = np.asarray(out["data"], dtype=np.float32).reshape(hi - lo, 10)
        np.testing.assert_allclose(got, expected[lo:hi], rtol=1e-5, atol=1e-5)
        assert (got.argmax(1) == expected[lo:hi].argmax(1)).all()
    _, after, _ = http("GET", served + "/metrics")
    calls = _metric(after, "pai_serving_batch_size_count") - calls_before
    rows = _metric(after, "pai_serving_batch_size_sum") - _metric(
        before, "pai_serving_batch_size_sum"
    )
    assert rows == sum(hi - lo for lo, hi in slices)
    assert 1 <= calls < len(slices), f"{len(slices)} requests took {calls} predict calls"


def test_wrong_width_is_a_clear_400(served):
    x = np.zeros((2, 63), dtype=np.float32)
    status, resp, _ = http("POST", served + "/v2/models/digits/infer", infer_body(x))
    assert status == 400 and "64" in json.dumps(resp), resp
