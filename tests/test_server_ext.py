"""The jupyter_server extension, against real servers: a ``jupyter server`` subprocess with
the extension (standalone: the control plane embedded in it; remote: a separate
``python -m pai_lab.control``), real local jobs, real HTTP clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from pai_lab.server import hub_service_url
from tests.support.common import free_port
from tests.support.jupyter import REPO, isolated_env, start_jupyter_server, write_notebook

pytestmark = pytest.mark.timeout(240)
WS = "pai/api/v1/workspaces/default"
LIMIT = 120  # hang guard for waits, never a timing assertion


def err(r: requests.Response) -> dict:
    """The platform's error body: {"error": {"code", "message"}}."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return body["error"]


def wait_state(server, job_id: str, states: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + LIMIT
    while True:
        job = server.get(f"{WS}/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job stuck in {job['state']}: {job}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(standalone_server):
    s = standalone_server
    write_notebook(
        s.root_dir / "proj" / "train.ipynb",
        [
            "C = 1.0",
            "import time, pai_lab\nprint('start', C, flush=True)\ntime.sleep(float(SLEEP) if 'SLEEP' in dir() else 0)",
            "print(open('data/x.txt').read())\npai_lab.log_metric('acc', 0.75)\nprint('end', flush=True)",
        ],
        tags={0: ["parameters"]},
    )
    (s.root_dir / "proj" / "data").mkdir()
    (s.root_dir / "proj" / "data" / "x.txt").write_text("sibling data")
    (s.root_dir / "secret.txt").write_text("not for jobs")
    return s


# ------------------------------------------------------------------------ status, auth
def test_status_names_mode_without_secrets(server):
    r = server.get("pai/api/status")
    assert r.status_code == 200
    body = r.json()
    assert body["mode"] == "standalone" and body["ready"] is True and body["error"] is None
    assert body["control_url"].startswith("http://127.0.0.1:")
    assert "token" not in json.dumps(body).lower()


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "pai/api/status"),
        ("GET", "pai/api/v1/me"),
        ("GET", f"{WS}/jobs"),
        ("PUT", f"{WS}/files/datasets/x.txt"),
        ("POST", "pai/api/notebook-jobs"),
    ],
)
def test_requests_without_credentials_are_refused(server, method, path):
    r = requests.request(method, server.url + path, data=b"{}", timeout=30)
    assert r.status_code == 403
    assert err(r)["code"] == "forbidden"
    bad = requests.request(
        method, server.url + path, data=b"{}", headers={"Authorization": "token wrong"}, timeout=30
    )
    assert bad.status_code == 403
    # nothing was written through a refused PUT
    assert server.get(f"{WS}/files/datasets/x.txt").status_code == 404


def _browser_session(server) -> requests.Session:
    """Log in like a browser: the login form with its _xsrf, then cookies only."""
    s = requests.Session()
    r = s.get(server.url + "login", timeout=30)
    assert r.status_code == 200
    xsrf = s.cookies.get("_xsrf")
    assert xsrf
    r = s.post(
        server.url + "login",
        data={"password": server.token, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code in (302, 303), r.text[:300]
    return s


def test_browser_cookie_auth_needs_xsrf_for_writes(server):
    s = _browser_session(server)
    xsrf = s.cookies.get("_xsrf")
    # reads work with the login cookie alone
    r = s.get(server.url + "pai/api/v1/me", timeout=30)
    assert r.status_code == 200 and r.json()["admin"] is True
    # a write without the XSRF header (what a cross-site form would send) is refused
    url = server.url + f"{WS}/files/datasets/xsrf.txt"
    r = s.put(url, data=b"evil", timeout=30)
    assert r.status_code == 403
    assert "xsrf" in err(r)["message"].lower()
    r = s.put(url, data=b"evil", headers={"X-XSRFToken": "not-the-cookie"}, timeout=30)
    assert r.status_code == 403
    assert server.get(f"{WS}/files/datasets/xsrf.txt").status_code == 404
    # with the matching header it goes through
    r = s.put(url, data=b"good", headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 201, r.text
    assert server.get(f"{WS}/files/datasets/xsrf.txt").content == b"good"


# ------------------------------------------------------------------------ proxying
def test_identity_profiles_workspaces_and_query_strings(server):
    me = server.get("pai/api/v1/me").json()
    assert me["admin"] is True
    assert {"name": "default", "role": "admin"} in me["workspaces"]
    profiles = server.get("pai/api/v1/profiles").json()["profiles"]
    assert profiles and all("slug" in p and "available" in p for p in profiles)
    r = server.get(f"{WS}/jobs?state=nonsense")
    assert r.status_code == 400 and "state" in err(r)["message"]
    r = server.get(f"{WS}/jobs?limit=1&offset=0")
    assert r.status_code == 200 and set(r.json()) >= {"jobs", "total"}


def test_json_writes_pass_through_every_method(server):
    """POST/PATCH/PUT/DELETE with JSON bodies and their status codes, through the proxy."""
    r = server.request("POST", "pai/api/v1/workspaces", json={"name": "proxy-ws"})
    assert r.status_code == 201, r.text
    r = server.request("POST", "pai/api/v1/workspaces", json={"name": "proxy-ws"})
    assert r.status_code == 409 and err(r)["code"] == "conflict"
    r = server.request("PATCH", "pai/api/v1/workspaces/proxy-ws", json={"description": "via proxy"})
    assert r.status_code == 200 and r.json()["description"] == "via proxy"
    r = server.request(
        "PUT", "pai/api/v1/workspaces/proxy-ws/members/carol", json={"role": "viewer"}
    )
    assert r.status_code in (200, 201), r.text
    members = server.get("pai/api/v1/workspaces/proxy-ws/members").json()["members"]
    assert {"carol": "viewer"}.items() <= {m["user"]: m["role"] for m in members}.items()
    r = server.request("DELETE", "pai/api/v1/workspaces/proxy-ws/members/carol")
    assert r.status_code in (200, 204), r.text
    names = [w["name"] for w in server.get("pai/api/v1/workspaces").json()["workspaces"]]
    assert "proxy-ws" in names
    audit = server.get("pai/api/v1/workspaces/proxy-ws/audit").json()
    assert any(e.get("action") == "set_member" for e in audit.get("events", audit.get("items", [])))


def test_files_roundtrip_streams_large_binary_both_ways(server):
    blob = os.urandom(3 * 2**20 + 17)

    def gen():  # no Content-Length: a chunked upload, forwarded chunked
        for i in range(0, len(blob), 256 * 1024):
            yield blob[i : i + 256 * 1024]

    r = server.request("PUT", f"{WS}/files/datasets/blob.bin", data=gen())
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(blob)
    r = server.request("PUT", f"{WS}/files/datasets/small.txt", data=b"hello")
    assert r.status_code == 201
    r = server.get(f"{WS}/files/datasets/blob.bin", stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(blob))
    got = b"".join(r.iter_content(65536))
    assert got == blob
    listing = server.get(f"{WS}/files/datasets").json()["entries"]
    assert {"blob.bin", "small.txt"} <= {e["name"] for e in listing}
    r = server.request("DELETE", f"{WS}/files/datasets/small.txt")
    assert r.status_code in (200, 204)
    r = server.get(f"{WS}/files/datasets/small.txt")
    assert r.status_code == 404 and "small.txt" in err(r)["message"]
    # HEAD passes through without a body
    r = server.request("HEAD", f"{WS}/files/datasets/blob.bin")
    assert r.status_code in (200, 405) and r.content == b""


@pytest.mark.parametrize("bad", ["../etc/passwd", "%2e%2e/secret", "a/%2F../../x"])
def test_traversal_in_files_is_refused_by_control_plane(server, bad):
    r = server.get(f"{WS}/files/{bad}")
    assert r.status_code in (400, 403, 404)
    assert err(r)["message"]


def test_malformed_json_and_unknown_routes_pass_through(server):
    r = server.request(
        "POST",
        f"{WS}/jobs",
        data=b"{not json",
        headers=server.headers(**{"Content-Type": "application/json"}),
    )
    assert r.status_code == 400
    assert err(r)["code"] == "bad_request"
    r = server.get("pai/api/v1/no/such/route")
    assert r.status_code == 404 and err(r)["code"] == "not_found"
    r = server.get("pai/api/v1/workspaces/nope/jobs")
    assert r.status_code in (403, 404)


# ------------------------------------------------------------------------ notebook-jobs
@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"{oops", 400, ["json"]),
        (b"[1, 2]", 400, ["object"]),
        (json.dumps({}).encode(), 400, ["path"]),
        (json.dumps({"path": "proj/missing.ipynb"}).encode(), 404, ["missing.ipynb"]),
        (json.dumps({"path": "secret.txt"}).encode(), 400, ["notebook"]),
        (json.dumps({"path": "../x.ipynb"}).encode(), 400, [".."]),
        (
            json.dumps({"path": "proj/train.ipynb", "files": ["../secret.txt"]}).encode(),
            400,
            [".."],
        ),
        (
            json.dumps({"path": "proj/train.ipynb", "files": ["/etc/passwd"]}).encode(),
            400,
            ["relative"],
        ),
        (
            json.dumps({"path": "proj/train.ipynb", "files": ["data/../../secret.txt"]}).encode(),
            400,
            [".."],
        ),
        (
            json.dumps({"path": "proj/train.ipynb", "files": ["nope.csv"]}).encode(),
            404,
            ["nope.csv"],
        ),
        (json.dumps({"path": "proj/train.ipynb", "bogus": 1}).encode(), 400, ["bogus"]),
        (json.dumps({"path": "proj/train.ipynb", "workers": "many"}).encode(), 400, ["workers"]),
        (
            json.dumps({"path": "proj/train.ipynb", "content": {"cells": 3}}).encode(),
            400,
            ["notebook"],
        ),
    ],
)
def test_notebook_jobs_bad_input(server, body, status, words):
    before = server.get(f"{WS}/jobs").json()["total"]
    r = server.request("POST", "pai/api/notebook-jobs", data=body)
    assert r.status_code == status, r.text
    msg = err(r)["message"].lower()
    for w in words:
        assert w.lower() in msg, msg
    assert server.get(f"{WS}/jobs").json()["total"] == before  # nothing submitted


def test_notebook_jobs_snapshot_uses_unsaved_content_and_siblings(server):
    saved = json.loads((server.root_dir / "proj" / "train.ipynb").read_text())
    edited = json.loads(json.dumps(saved))
    edited["cells"][0]["source"] = "C = 42.0  # unsaved edit"
    r = server.request(
        "POST",
        "pai/api/notebook-jobs",
        json={
            "path": "proj/train.ipynb",
            "content": edited,
            "files": ["data"],
            "name": "snap",
            "max_runtime": "5m",
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["name"] == "snap" and job["spec"]["source"] == {"notebook": "train.ipynb"}
    server.request("POST", f"{WS}/jobs/{job['id']}/cancel")
    snap = server.get(f"{WS}/files/jobs/{job['id']}/input.ipynb").json()
    assert snap["cells"][0]["source"] == "C = 42.0  # unsaved edit"
    sib = server.get(f"{WS}/files/jobs/{job['id']}/files/data/x.txt")
    assert sib.status_code == 200 and sib.content == b"sibling data"
    # without content: the saved file, through the contents manager
    r = server.request("POST", "pai/api/notebook-jobs", json={"path": "proj/train.ipynb"})
    assert r.status_code == 201, r.text
    job2 = r.json()
    server.request("POST", f"{WS}/jobs/{job2['id']}/cancel")
    snap2 = server.get(f"{WS}/files/jobs/{job2['id']}/input.ipynb").json()
    assert snap2["cells"][0]["source"] == "C = 1.0"
    assert (
        wait_state(server, job["id"], ("cancelled", "succeeded", "failed"))["state"] == "cancelled"
    )


# ------------------------------------------------------------------------ jobs: run, follow, cancel
def test_submit_list_follow_logs_streamed_live(server):
    r = server.request(
        "POST",
        "pai/api/notebook-jobs",
        json={
            "path": "proj/train.ipynb",
            "files": ["data/x.txt"],
            "parameters": {"C": 0.5, "SLEEP": 4},
        },
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    listed = server.get(f"{WS}/jobs?limit=50").json()["jobs"]
    assert job_id in [j["id"] for j in listed]

    resp = server.get(f"{WS}/jobs/{job_id}/logs?follow=1", stream=True, timeout=LIMIT)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = ""
    state_when_started = None
    for chunk in resp.iter_content(None):
        text += chunk.decode()
        if state_when_started is None and "start 0.5" in text:
            # the line arrived while the job still sleeps: streamed, not buffered to the end
            state_when_started = server.get(f"{WS}/jobs/{job_id}").json()["state"]
    assert "start 0.5" in text and "sibling data" in text and "end" in text
    assert state_when_started == "running"
    job = server.get(f"{WS}/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    assert [m["value"] for m in job["metrics"] if m["name"] == "acc"] == [0.75]
    # offset passes through: only what follows that byte
    tail = server.get(f"{WS}/jobs/{job_id}/logs?offset=5").text
    assert tail and text.endswith(tail[-10:]) and len(tail) == len(text.encode()) - 5
    out = server.get(f"{WS}/files/jobs/{job_id}/output.ipynb").json()
    assert any("start 0.5" in json.dumps(c.get("outputs", [])) for c in out["cells"])


def test_cancel_running_job_through_proxy(server):
    r = server.request(
        "POST",
        "pai/api/notebook-jobs",
        json={"path": "proj/train.ipynb", "parameters": {"SLEEP": 120}, "files": ["data"]},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_state(server, job_id, ("running",))
    r = server.request("POST", f"{WS}/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    job = wait_state(server, job_id, ("cancelled", "succeeded", "failed"))
    assert job["state"] == "cancelled"
    r = server.request("POST", f"{WS}/jobs/nonexistent/cancel")
    assert r.status_code == 404 and "nonexistent" in err(r)["message"]


def test_client_disconnect_mid_follow_does_not_break_the_server(server):
    r = server.request(
        "POST",
        "pai/api/notebook-jobs",
        json={"path": "proj/train.ipynb", "parameters": {"SLEEP": 120}, "files": ["data"]},
    )
    job_id = r.json()["id"]
    wait_state(server, job_id, ("running",))
    host, port = server.url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"GET /jp/{WS}/jobs/{job_id}/logs?follow=1 HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: token {server.token}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    # the server still answers, and the job is unaffected by the dropped follower
    assert server.get(f"{WS}/jobs/{job_id}").json()["state"] == "running"
    server.request("POST", f"{WS}/jobs/{job_id}/cancel")
    assert wait_state(server, job_id, ("cancelled", "failed", "succeeded"))["state"] == "cancelled"


def test_kernels_get_the_control_plane_env(server):
    r = server.request("POST", "api/kernels", json={"name": "python3"})
    assert r.status_code == 201
    kid = r.json()["id"]
    try:
        from jupyter_client import BlockingKernelClient

        kc = BlockingKernelClient(
            connection_file=str(Path(server.env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kid}.json")
        )
        kc.load_connection_file()
        kc.start_channels(hb=False)  # the heartbeat reads "dead" until its first beat
        kc.wait_for_ready(timeout=LIMIT)
        out = []
        kc.execute_interactive(
            "import os\nfrom pai_lab.client import PaiClient\nprint(PaiClient().me()['name'], os.environ['PAI_LAB_JUPYTER_BASE_URL'])",
            output_hook=lambda m: (
                out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None
            ),
            timeout=LIMIT,
        )
        kc.stop_channels()
        me = server.get("pai/api/v1/me").json()["name"]
        assert "".join(out).split() == [me, "/jp/"]
    finally:
        server.request("DELETE", f"api/kernels/{kid}")


# ------------------------------------------------------------------------ other modes
def test_hub_service_url_derivation():
    env = {"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api"}
    assert hub_service_url(env) == "http://127.0.0.1:8081/services/pai/"
    env = {"JUPYTERHUB_API_URL": "https://hub.example/prefix/hub/api/"}
    assert hub_service_url(env, "ml") == "https://hub.example/prefix/services/ml/"
    assert hub_service_url({}) is None


def _start_control(tmp: Path, token: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    env = isolated_env(tmp / "cp-env")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pai_lab.control",
            "--port",
            str(port),
            "--ip",
            "127.0.0.1",
            "--data-dir",
            str(tmp / "cp"),
            "--token",
            token,
        ],
        env=env,
        stdout=open(tmp / "cp.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + LIMIT
    while True:
        try:
            if requests.get(
                url + "api/v1/me", headers={"Authorization": f"token {token}"}, timeout=5
            ).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, (tmp / "cp.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _stop_control(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_remote_control_plane_outage_and_jobs_outliving_the_notebook_server(
    tmp_path, jupyter_server_factory
):
    """A separate control plane (as under the hub): the server forwards with its configured
    token (never the user's Jupyter token); an outage is a 503 naming the control plane;
    jobs outlive both a control-plane restart and the notebook server."""
    token = "cp-secret-token"
    proc, url = _start_control(tmp_path, token)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        s = jupyter_server_factory("remote", env={"PAI_LAB_URL": url, "PAI_LAB_TOKEN": token})
        assert s.get("pai/api/status").json() == {
            "mode": "remote",
            "control_url": url,
            "ready": True,
            "error": None,
            "workspace": "default",
        }
        assert s.get("pai/api/v1/me").json()["admin"] is True
        write_notebook(
            s.root_dir / "slow.ipynb",
            ["import time\nprint('go', flush=True)\ntime.sleep(2)\nprint('done', flush=True)"],
        )
        r = s.request("POST", "pai/api/notebook-jobs", json={"path": "slow.ipynb"})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        _stop_control(proc)  # outage
        for method, path, body in [
            ("GET", "pai/api/v1/me", None),
            ("PUT", f"{WS}/files/a.txt", b"x"),
        ]:
            r = s.request(method, path, data=body)
            assert r.status_code == 503
            e = err(r)
            assert e["code"] == "backend_unavailable" and url in e["message"]
        r = s.request("POST", "pai/api/notebook-jobs", json={"path": "slow.ipynb"})
        assert r.status_code == 503 and url.rstrip("/") in err(r)["message"]

        proc, url2 = _start_control(tmp_path, token, port=port)  # back, same data dir
        assert url2 == url
        assert s.get("pai/api/v1/me").status_code == 200
        assert s.stop() == 0  # the notebook server goes away (culled, say)
        h = {"Authorization": f"token {token}"}
        deadline = time.monotonic() + LIMIT
        while True:
            job = requests.get(
                url + f"api/v1/workspaces/default/jobs/{job_id}", headers=h, timeout=30
            ).json()
            if job["state"] in ("succeeded", "failed", "cancelled", "lost", "timed_out"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert job["state"] == "succeeded", job
    finally:
        _stop_control(proc)


def test_zz_standalone_stops_with_the_server_and_its_running_job_is_picked_up_again(server):
    """After the other tests of the shared server (it stops it). What docs/notebooks.md promises:
    the embedded control plane stops with the server; a job still running then is
    reattached (state, logs) when the same server starts again on the same data dir."""
    r = server.request(
        "POST",
        "pai/api/notebook-jobs",
        json={"path": "proj/train.ipynb", "parameters": {"SLEEP": 4}, "files": ["data"]},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_state(server, job_id, ("running",))
    cp = server.get("pai/api/status").json()["control_url"]
    host, port = cp.split("//")[1].rstrip("/").split(":")
    socket.create_connection((host, int(port)), timeout=5).close()  # listening now
    assert server.stop() == 0
    assert "stopping the embedded control plane" in server.log()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=5).close()

    # New port and token, same data dir. Enabled the other supported way this time:
    # ``pai_lab`` (the package's module-style extension point, no app class).
    again = start_jupyter_server(
        server.root_dir.parent, extensions={"pai_lab": True, "pai_lab.server": False}
    )
    try:
        assert "pai_lab | extension was successfully loaded" in again.log()
        job = wait_state(again, job_id, ("succeeded", "failed", "lost", "cancelled", "timed_out"))
        assert job["state"] == "succeeded", job
        logs = again.get(f"{WS}/jobs/{job_id}/logs").text
        assert "start 1.0" in logs and "end" in logs
    finally:
        assert again.stop() == 0
    assert again.log().count("stopping the embedded control plane") == 2  # both runs


# ------------------------------------------------------------------------ under JupyterHub
HUB_PASSWORD = "correct-horse-battery"


@pytest.mark.hub
def test_under_the_hub_a_users_server_submits_with_its_hub_token_and_others_cannot_see(
    hub_factory,
):
    """alice's single-user server (spawned by a real hub) submits through the extension
    with its own hub token into a workspace bob is not in; bob sees nothing of it."""
    from tests.support.hub import control_plane_available

    if not control_plane_available():
        pytest.skip("hub identity for the control plane is not in the tree")
    hub = hub_factory(
        "hub",
        extra=f"c.Spawner.environment = {{'JUPYTER_CONFIG_PATH': {str(REPO / 'jupyter-config')!r}}}\n",
    )
    alice_s = hub.signup_and_approve("alice", HUB_PASSWORD)
    alice = hub.token_for(alice_s, "alice")
    bob_s = hub.signup_and_approve("bob", HUB_PASSWORD)
    bob = hub.token_for(bob_s, "bob")
    # The platform operator (control-plane admin token) sets up a team workspace for alice.
    admin = {"Authorization": f"token {(hub.data_dir / 'admin-token').read_text().strip()}"}
    cp = f"{hub.url}/services/pai/api/v1"
    r = requests.post(f"{cp}/workspaces", json={"name": "team-a"}, headers=admin, timeout=60)
    assert r.status_code == 201, r.text
    r = requests.put(
        f"{cp}/workspaces/team-a/members/alice",
        json={"role": "developer"},
        headers=admin,
        timeout=60,
    )
    assert r.status_code in (200, 201), r.text

    r = hub.api("POST", "/users/alice/server", json={"profile": "cpu-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    try:
        user_url = f"{hub.url}/user/alice/"
        ah = {"Authorization": f"token {alice}"}
        status = requests.get(user_url + "pai/api/status", headers=ah, timeout=60)
        assert status.status_code == 200, status.text
        assert status.json()["mode"] == "hub" and status.json()["ready"] is True
        me = requests.get(user_url + "pai/api/v1/me", headers=ah, timeout=60).json()
        assert me["name"] == "alice" and me["admin"] is False  # the server's token is alice's

        nb = json.loads(
            json.dumps(
                {
                    "nbformat": 4,
                    "nbformat_minor": 5,
                    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
                    "cells": [
                        {
                            "id": "c1",
                            "cell_type": "code",
                            "metadata": {},
                            "execution_count": None,
                            "outputs": [],
                            "source": "import time\ntime.sleep(6)\nprint('hello from the hub')",
                        }
                    ],
                }
            )
        )
        r = requests.put(
            user_url + "api/contents/hub.ipynb",
            json={"type": "notebook", "format": "json", "content": nb},
            headers=ah,
            timeout=60,
        )
        assert r.status_code in (200, 201), r.text
        r = requests.post(
            user_url + "pai/api/notebook-jobs",
            json={"path": "hub.ipynb", "workspace": "team-a"},
            headers=ah,
            timeout=60,
        )
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["owner"] == "alice" and job["workspace"] == "team-a"
        jurl = f"workspaces/team-a/jobs/{job['id']}"
        assert requests.get(user_url + f"pai/api/v1/{jurl}", headers=ah, timeout=60).ok

        bh = {"Authorization": f"token {bob}"}
        # bob cannot use alice's server at all ...
        r = requests.get(user_url + f"pai/api/v1/{jurl}", headers=bh, timeout=60)
        assert r.status_code == 403
        # ... and the control plane does not show him alice's job or her workspace's list
        for path in (jurl, "workspaces/team-a/jobs", f"{jurl}/logs"):
            r = requests.get(f"{cp}/{path}", headers=bh, timeout=60)
            assert r.status_code == 403, (path, r.text)
            assert "bob" in r.json()["error"]["message"]
        listed = requests.get(f"{cp}/workspaces/default/jobs", headers=bh, timeout=60).json()
        assert job["id"] not in [j["id"] for j in listed["jobs"]]
        # The job belongs to the control plane, not to alice's server: stopping the server
        # (as the culler would) leaves it running to the end.
        assert requests.get(f"{cp}/{jurl}", headers=ah, timeout=60).json()["state"] not in (
            "succeeded",
            "failed",
        )
        hub.stop_server("alice")
        hub.wait_stopped("alice")
        deadline = time.monotonic() + 240
        state = None
        while time.monotonic() < deadline:
            state = requests.get(f"{cp}/{jurl}", headers=ah, timeout=60).json()["state"]
            if state in ("succeeded", "failed", "cancelled", "timed_out", "lost"):
                break
            time.sleep(0.5)
        assert state == "succeeded"
        logs = requests.get(f"{cp}/{jurl}/logs", headers=ah, timeout=60).text
        assert "hello from the hub" in logs
    finally:
        hub.stop_server("alice")
