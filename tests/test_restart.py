"""A control plane killed with SIGKILL mid-job comes back and the job ends correctly."""

from __future__ import annotations

import time

from pai_lab.errors import BackendUnavailable

CODE = """
import time
for i in range(8):
    print(f"line {i}", flush=True)
    time.sleep(0.5)
print("done", flush=True)
"""


def test_sigkill_restart_reattaches_running_job(control_factory):
    cp = control_factory()
    c = cp.client()
    job = c.submit_job({"source": {"script": "slow.py", "content": CODE}})
    deadline = time.monotonic() + 120
    while c.get_job(job["id"])["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cp.kill()
    try:
        c.me()
        raise AssertionError("control plane still answering after SIGKILL")
    except BackendUnavailable:
        pass
    time.sleep(1)
    cp.start()  # same data dir, same port
    job = c.wait_job(job["id"])
    assert job["state"] == "succeeded", job
    logs = "".join(c.iter_logs(job["id"]))
    assert all(f"line {i}" in logs for i in range(8)) and "done" in logs


def test_job_that_finished_while_down_is_recorded(control_factory):
    cp = control_factory()
    c = cp.client()
    job = c.submit_job({"source": {"script": "quick.py", "content": "import time\ntime.sleep(1)\nprint('finished alone')\n"}})
    deadline = time.monotonic() + 120
    while c.get_job(job["id"])["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cp.kill()
    time.sleep(3)  # the job finishes while nobody supervises it
    cp.start()
    job = c.wait_job(job["id"])
    assert job["state"] == "succeeded"
    assert "finished alone" in "".join(c.iter_logs(job["id"]))
