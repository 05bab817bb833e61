"""The control plane end to end: a real server process, real kernels, a real sqlite file.

Every response made through the client is checked against the OpenAPI document.
"""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import joblib
import pytest
import requests

from pai_lab.errors import BadRequest, Conflict, Forbidden, NotFound, QuotaExceeded, Unauthorized

NB = Path(__file__).parent / "notebooks"


def nb(name: str) -> dict:
    return json.loads((NB / name).read_text())


def script_job(code: str, **kw) -> dict:
    return {"source": {"script": "job.py", "content": code}, **kw}


@pytest.fixture(scope="module")
def cp(shared_control):
    return shared_control


@pytest.fixture
def client(cp, openapi):
    c = cp.client()
    c.session.hooks["response"].append(openapi.hook)
    yield c
    assert openapi.checked > 0 or True  # some tests only stream


def wait_state(c, job_id, states, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get_job(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}; last: {job}")


def test_iris_notebook_job_end_to_end(client, openapi):
    job = client.submit_job(
        {
            "source": {"notebook": "iris.ipynb", "content": nb("iris.ipynb")},
            "parameters": {"C": 0.5},
            "outputs": ["model.joblib"],
        }
    )
    assert job["state"] == "queued" and job["spec"]["parameters"] == {"C": 0.5}
    job = client.wait_job(job["id"])
    assert job["state"] == "succeeded", job
    acc = {m["name"]: m["value"] for m in job["metrics"]}["accuracy"]
    assert 0.9 < acc <= 1.0
    assert job["environment"]["python"].startswith("3.")
    assert len(job["environment"]["notebook_sha256"]) == 64
    logs = "".join(client.iter_logs(job["id"]))
    assert "C=0.5 accuracy=" in logs  # the parameter reached the notebook
    names = {e["name"] for e in client.list_files(f"jobs/{job['id']}")}
    assert {"input.ipynb", "output.ipynb", "logs.txt", "outputs"} <= names
    model = joblib.load(io.BytesIO(client.read_file(f"jobs/{job['id']}/outputs/model.joblib")))
    assert list(model.predict([[5.1, 3.5, 1.4, 0.2]])) == [0]
    executed = json.loads(client.read_file(f"jobs/{job['id']}/output.ipynb"))
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    assert openapi.checked >= 5


def test_failing_notebook_keeps_output_and_reason(client):
    job = client.wait_job(
        client.submit_job({"source": {"notebook": "raises.ipynb", "content": nb("raises.ipynb")}})[
            "id"
        ]
    )
    assert job["state"] == "failed"
    assert "ZeroDivisionError" in job["exit_reason"]
    out = json.loads(client.read_file(f"jobs/{job['id']}/output.ipynb"))
    assert any(
        o.get("ename") == "ZeroDivisionError" for c in out["cells"] for o in c.get("outputs", [])
    )
    assert "about to divide" in "".join(client.iter_logs(job["id"]))


def test_max_runtime_times_out(client):
    job = client.submit_job(
        {
            "source": {"notebook": "sleeper.ipynb", "content": nb("sleeper.ipynb")},
            "max_runtime": "3s",
        }
    )
    job = client.wait_job(job["id"])
    assert job["state"] == "timed_out", job
    assert job["spec"]["max_runtime"] == 3


def test_cancel_running_job_then_cancel_again_conflicts(client):
    job = client.submit_job(
        script_job("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    )
    wait_state(client, job["id"], ("running",))
    client.cancel_job(job["id"])
    job = client.wait_job(job["id"])
    assert job["state"] == "cancelled"
    with pytest.raises(Conflict, match="already ended"):
        client.cancel_job(job["id"])


def test_admin_submitted_job_can_use_pai_paths(client):
    code = (
        "import pai_lab\n"
        "with pai_lab.fs.open('datasets/from-job.txt', 'wb') as f:\n"
        "    f.write(b'written by the job')\n"
        "print(pai_lab.fs.cat_file('datasets/from-job.txt'))\n"
    )
    job = client.wait_job(client.submit_job(script_job(code))["id"])
    assert job["state"] == "succeeded", "".join(client.iter_logs(job["id"]))
    assert client.read_file("datasets/from-job.txt") == b"written by the job"


def test_script_and_command_sources(client):
    j1 = client.wait_job(
        client.submit_job(
            script_job(
                "import pai_lab\npai_lab.log_metric('loss', 0.5, step=1)\nprint('hi from script')\n"
            )
        )["id"]
    )
    assert j1["state"] == "succeeded" and j1["metrics"][0]["name"] == "loss"
    j2 = client.wait_job(
        client.submit_job({"source": {"command": ["python", "-c", "print('hi from command')"]}})[
            "id"
        ]
    )
    assert j2["state"] == "succeeded"
    assert "hi from command" in "".join(client.iter_logs(j2["id"]))


BAD_SUBMISSIONS = [
    ({}, "source: missing"),
    ({"source": {"notebook": "x.ipynb"}}, "source.content: missing"),
    (
        {
            "source": {
                "notebook": "x.ipynb",
                "content": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": "nope"},
            }
        },
        "not a valid notebook",
    ),
    ({"source": {"notebook": "x.ipynb", "content": "{not json"}}, "not JSON"),
    ({"source": {"script": "a.py", "content": "def ("}}, "does not compile"),
    ({"source": {"command": []}}, "non-empty list"),
    ({"source": {"command": ["true"]}, "max_runtme": 5}, "unknown field(s): max_runtme"),
    ({"source": {"command": ["true"]}, "workers": "two"}, "workers: expected an integer"),
    ({"source": {"command": ["true"]}, "max_runtime": "soon"}, "is not a duration"),
    ({"source": {"command": ["true"]}, "parameters": {"1bad": 1}}, "not a valid Python identifier"),
    ({"source": {"command": ["true"]}, "outputs": ["../../etc/passwd"]}, "must be a relative path"),
    ({"source": {"command": ["true"]}, "files": {"a.txt": "***"}}, "not valid base64"),
    ({"source": {"command": ["true"]}, "profile": "huge"}, "unknown profile 'huge'"),
    ({"source": {"command": ["true"]}, "env": {"PAI_JOB_ID": "x"}}, "set by the platform"),
]


@pytest.mark.parametrize("body,message", BAD_SUBMISSIONS)
def test_bad_submissions_are_400_and_leave_nothing(client, body, message):
    before = client.list_jobs(limit=1)["total"]
    with pytest.raises(BadRequest) as e:
        client.submit_job(body)
    assert message in e.value.message
    assert client.list_jobs(limit=1)["total"] == before


def test_malformed_json_unknown_workspace_and_routes(cp, client):
    h = {"Authorization": f"Bearer {cp.token}"}
    r = requests.post(cp.url + "api/v1/workspaces/default/jobs", data="{oops", headers=h)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = requests.post(cp.url + "api/v1/workspaces/default/jobs", data="[1]", headers=h)
    assert r.status_code == 400 and "expected a JSON object" in r.json()["error"]["message"]
    with pytest.raises(NotFound, match="workspace 'nope' does not exist"):
        client.submit_job(script_job("print(1)"), workspace="nope")
    r = requests.get(cp.url + "api/v1/no/such/route", headers=h)
    assert r.status_code == 404 and "no such API route" in r.json()["error"]["message"]
    r = requests.get(cp.url + "api/v1/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "evil",
    ["../x", "a/../../x", "%2e%2e/x", "a%252f..%252f..%252fx", "..%5cx", "a/%00b"],
)
def test_file_paths_cannot_escape_the_workspace(cp, evil):
    h = {"Authorization": f"Bearer {cp.token}"}
    for method in ("GET", "PUT", "DELETE"):
        r = requests.request(
            method, f"{cp.url}api/v1/workspaces/default/files/{evil}", headers=h, data=b"x"
        )
        assert r.status_code in (400, 403, 404), (method, evil, r.status_code, r.text)
        assert "error" in r.json()
    assert not list((cp.data_dir / "store").rglob("x"))


def test_upload_download_delete_roundtrip(client):
    data = b"a,b\n1,2\n" * 1000
    assert client.upload("datasets/t.csv", data)["size"] == len(data)
    assert client.read_file("datasets/t.csv") == data
    entry = client.file_info("datasets/t.csv")
    assert entry["type"] == "file" and entry["size"] == len(data)
    with pytest.raises(BadRequest, match="is a file"):
        client.list_files("datasets/t.csv")
    with pytest.raises(BadRequest):
        client.delete_file("datasets")  # not empty, not recursive
    client.delete_file("datasets/t.csv")
    with pytest.raises(NotFound):
        client.read_file("datasets/t.csv")


def test_interrupted_upload_leaves_old_file_intact(cp, client):
    client.upload("interrupted/keep.bin", b"old content")
    s = socket.create_connection(("127.0.0.1", cp.port))
    s.sendall(
        (
            "PUT /api/v1/workspaces/default/files/interrupted/keep.bin HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {cp.token}\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        + b"N" * 5000
    )
    time.sleep(0.5)
    s.close()
    folder = cp.data_dir / "store/workspaces/default/interrupted"
    deadline = time.monotonic() + 30  # the server notices the disconnect asynchronously
    while sorted(p.name for p in folder.iterdir()) != ["keep.bin"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.bin"]
    assert client.read_file("interrupted/keep.bin") == b"old content"


def test_idempotency_key(client):
    body = script_job("print('once')", idempotency_key="k-123")
    first = client.submit_job(body)
    again = client.submit_job(body)
    assert again["id"] == first["id"]
    with pytest.raises(Conflict, match="different spec"):
        client.submit_job({**body, "parameters": {"x": 1}})
    client.wait_job(first["id"])


def test_fifo_queue_with_concurrency_quota(cp, client):
    client.create_workspace("fifo", quotas={"max_concurrent_jobs": 1, "max_gpus": 0})
    code = "import time\nprint('tick', flush=True)\ntime.sleep(2)\n"
    a = client.submit_job(script_job(code, name="first"), workspace="fifo")
    b = client.submit_job(script_job(code, name="second"), workspace="fifo")
    time.sleep(0.5)
    b_now = client.get_job(b["id"], workspace="fifo")
    assert b_now["state"] == "queued"
    assert "1 of 1 concurrent jobs" in (b_now["wait_reason"] or "")
    a = client.wait_job(a["id"], workspace="fifo")
    b = client.wait_job(b["id"], workspace="fifo")
    assert a["state"] == b["state"] == "succeeded"
    assert b["started_at"] >= a["finished_at"]


def test_gpu_jobs_get_a_device_and_quota_is_enforced(control_factory):
    cp = control_factory(env={"PAI_LAB_GPUS": "0"})
    c = cp.client()
    code = "import os\nprint('devices', os.environ.get('CUDA_VISIBLE_DEVICES'))\n"
    job = c.wait_job(c.submit_job(script_job(code, profile="gpu"))["id"])
    assert job["state"] == "succeeded"
    assert "devices 0" in "".join(c.iter_logs(job["id"]))
    with pytest.raises(QuotaExceeded, match="asks for 2 GPU"):
        c.submit_job(script_job("print(1)", resources={"gpu": 1}, workers=2))


def test_retries_run_a_second_attempt(client):
    code = "import os, pathlib\nprint('attempt', os.environ['PAI_JOB_ID'])\nraise SystemExit(3)\n"
    job = client.wait_job(client.submit_job(script_job(code, retries=1))["id"])
    assert job["state"] == "failed" and job["attempt"] == 2


def test_openapi_document_is_served(cp):
    served = requests.get(cp.url + "api/v1/openapi.json").json()
    on_disk = json.loads((Path(__file__).parents[1] / "pai_lab/control/openapi.json").read_text())
    assert served == on_disk and served["openapi"].startswith("3.")


def test_another_user_gets_403_and_the_denial_is_audited(cp, client):
    client.create_workspace("team-a")
    alice = client.create_user_token("alice")
    bob = client.create_user_token("bob")
    client.set_member("alice", "developer", workspace="team-a")
    a = cp.client(alice, workspace="team-a")
    b = cp.client(bob, workspace="team-a")
    job = a.submit_job(script_job("print('alice')"))
    a.upload("secret.txt", b"alice's data")
    for call in (
        lambda: b.list_jobs(),
        lambda: b.get_job(job["id"]),
        lambda: b.cancel_job(job["id"]),
        lambda: b.read_file("secret.txt"),
        lambda: b.upload("x.txt", b"x"),
        lambda: b.submit_job(script_job("print('bob')")),
    ):
        with pytest.raises(Forbidden):
            call()
    assert "team-a" not in {w["name"] for w in b.me()["workspaces"]}
    events = client.audit(workspace="team-a", outcome="denied")["events"]
    assert {e["actor"] for e in events} == {"bob"} and len(events) >= 6
    with pytest.raises(Unauthorized):
        cp.client("wrong-token").me()
    a.wait_job(job["id"])
