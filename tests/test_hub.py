"""The hub end to end: a real JupyterHub + configurable-http-proxy with pai-lab's config.

One hub (the session's ``pai_hub``, one GPU "0") serves most tests: login with the default
authenticator, sign-up with admin approval, CPU and GPU servers with their environment
and limits, GPU exclusivity, and the control plane service. A second hub, started with
``pai-lab up``, covers the idle culler, a machine without GPUs and a server that dies at
start-up.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import requests

from pai_lab.hub.profiles import DEFAULT_PROFILES
from tests.support.hub import (
    BROKEN_PROFILE,
    control_plane_available,
    proc_environ,
    read_events,
    xsrf_from,
)

pytestmark = pytest.mark.hub

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def hub(pai_hub):
    return pai_hub


@pytest.fixture(scope="module")
def alice(hub):
    s = hub.signup_and_approve("alice", PASSWORD)
    return s, hub.token_for(s, "alice")


def test_default_login_is_native_with_generated_admin_password(hub):
    pw_file = hub.data_dir / "admin-password"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert len(hub.admin_password()) >= 16
    # No password-less login, wrong passwords and unknown users refused.
    for user, pw in [("admin", ""), ("admin", "admin"), ("nobody", ""), ("nobody", "x")]:
        _, resp = hub.try_login(user, pw)
        assert "/hub/login" in resp.url, (user, pw)
        assert "Invalid username or password" in resp.text
    s = hub.login("admin", hub.admin_password())
    assert s.get(f"{hub.url}/hub/home").status_code == 200
    info = hub.api("GET", "/info").json()
    assert info["authenticator"]["class"] == "pai_lab.hub.auth.PaiNativeAuthenticator"
    assert info["spawner"]["class"] == "pai_lab.hub.spawner.LocalProfileSpawner"
    # The password was printed once, at the first start.
    assert hub.log().count(hub.admin_password()) == 1


def test_signup_needs_admin_approval(hub):
    s = requests.Session()
    page = s.get(f"{hub.url}/hub/signup")
    s.post(
        f"{hub.url}/hub/signup",
        data={
            "username": "mallory",
            "signup_password": PASSWORD,
            "signup_password_confirmation": PASSWORD,
            "_xsrf": xsrf_from(page.text),
        },
    ).raise_for_status()
    _, resp = hub.try_login("mallory", PASSWORD)
    assert "/hub/login" in resp.url
    assert "has not been authorized" in resp.text


def test_profile_form_lists_profiles_with_idle_times(hub, alice):
    s, _ = alice
    page = s.get(f"{hub.url}/hub/spawn")
    assert page.status_code == 200
    for p in DEFAULT_PROFILES:
        assert p["display_name"] in page.text
    assert "Stopped after 60 min idle." in page.text
    assert "Stopped after 20 min idle." in page.text  # GPU profile: sooner
    assert "1 of 1 GPUs free now." in page.text
    assert "Idle servers are stopped automatically" in page.text  # announcement


@pytest.fixture(scope="module")
def alice_server(hub, alice):
    """Alice picks 'CPU small' on the spawn page and presses Start (stopped at the end)."""
    s, _ = alice
    r = hub.spawn_from_form(s, "cpu-small", allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    hub.wait_ready("alice")
    yield hub.server_pid("alice")
    hub.stop_server("alice")


def test_spawn_cpu_small_from_form_and_reach_it_through_the_proxy(hub, alice, alice_server):
    s, token = alice
    status = requests.get(
        f"{hub.url}/user/alice/api/status", headers={"Authorization": f"token {token}"}
    )
    assert status.status_code == 200, status.text
    assert "started" in status.json()
    # The browser session reaches the lab after the OAuth round trip.
    lab = s.get(f"{hub.url}/user/alice/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text

    pid = alice_server
    env = proc_environ(pid)
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # CPU profile sees no GPU
    assert env["PAI_LAB_PROFILE"] == "cpu-small"
    assert env["PAI_LAB_IDLE_TIMEOUT"] == "3600"
    assert "stops itself after 60 min" in env["PAI_LAB_IDLE_MESSAGE"]
    assert env["MEM_LIMIT"] == str(2 * 1024**3)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["HOME"] == str(hub.data_dir / "users" / "alice")
    assert os.readlink(f"/proc/{pid}/cwd") == env["HOME"]
    limits = open(f"/proc/{pid}/limits").read()
    data_line = next(line for line in limits.splitlines() if line.startswith("Max data size"))
    assert str(2 * 1024**3) in data_line
    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    assert b"--ServerApp.shutdown_no_activity_timeout=3600" in cmd
    assert b"--MappingKernelManager.cull_idle_timeout=3600" in cmd
    news = Path(env["HOME"]) / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension"
    assert (
        json.loads((news / "notification.jupyterlab-settings").read_text())["fetchNews"] == "false"
    )


@pytest.fixture(scope="module")
def bob(hub):
    s = hub.signup_and_approve("bob", PASSWORD)
    return s, hub.token_for(s, "bob")


def test_gpu_profile_gets_the_only_gpu_and_a_second_is_refused(hub, bob):
    r = hub.api("POST", "/users/bob/server", json={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("bob")
    env = proc_environ(hub.server_pid("bob"))
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    pool = json.loads((hub.data_dir / "gpus.json").read_text())
    assert pool["owners"] == {"server:bob": [0]}

    # Someone else asks for a GPU through the form: the form comes back with the reason.
    admin = hub.login("admin", hub.admin_password())
    r = hub.spawn_from_form(admin, "gpu")
    assert r.status_code == 409
    assert "waiting for a free GPU (0 of 1 free)" in r.text
    assert "Pick a CPU profile" in r.text
    # ... and through the API (what the CLI does): a JSON 409 with the same sentence.
    r = hub.api("POST", "/users/admin/server", json={"profile": "gpu"})
    assert r.status_code == 409, r.text
    assert "waiting for a free GPU" in r.json()["message"]
    assert hub.server_model("admin") is None

    hub.stop_server("bob")
    pool = json.loads((hub.data_dir / "gpus.json").read_text())
    assert pool["owners"] == {}


def test_unknown_profile_is_a_clear_400(hub):
    r = hub.api("POST", "/users/admin/server", json={"profile": "tpu"})
    assert r.status_code == 400
    assert "unknown profile 'tpu'" in r.json()["message"]


@pytest.mark.skipif(not control_plane_available(), reason="control plane not in the tree yet")
def test_control_plane_knows_the_hub_user_by_token_server_token_and_cookie(
    hub, alice, alice_server
):
    s, token = alice
    me_url = f"{hub.url}/services/pai/api/v1/me"
    me = requests.get(me_url, headers={"Authorization": f"token {token}"})
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "alice"
    assert me.json()["admin"] is False
    assert {"name": "default", "role": "developer"} in me.json()["workspaces"]
    # No credentials, or a made-up token: 401 as JSON, not a page or a traceback.
    for headers in ({}, {"Authorization": "token not-a-token"}):
        anon = requests.get(me_url, headers=headers)
        assert anon.status_code == 401, anon.text
        assert anon.json()["error"]["code"]
    # The browser: one OAuth round trip through the hub, then the service cookie alone.
    r = s.get(f"{hub.url}/services/pai/login", params={"next": "/services/pai/api/v1/me"})
    assert r.status_code == 200, (r.status_code, r.url, r.text[:300])
    assert r.json()["name"] == "alice"
    assert s.get(me_url).json()["name"] == "alice"
    # A cookie-only write without the XSRF header is not accepted (cross-site forms).
    r = s.post(f"{hub.url}/services/pai/api/v1/workspaces", json={"name": "sneaky"})
    assert r.status_code == 401, r.text
    # The user's server token (what the lab extension and jobs started from it use).
    env = proc_environ(alice_server)
    me = requests.get(
        f"{env['PAI_LAB_URL']}/api/v1/me",
        headers={"Authorization": f"token {env['PAI_LAB_TOKEN']}"},
    )
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "alice"
    # Hub admins are admins there too.
    me = requests.get(me_url, headers={"Authorization": f"token {hub.admin_token()}"})
    assert me.json()["admin"] is True


@pytest.mark.skipif(not control_plane_available(), reason="control plane not in the tree yet")
def test_workspace_roles_hold_for_hub_users(hub, alice, bob):
    """The admin makes a workspace with alice in it; bob (another hub user) is refused,
    and the refusal is in the workspace's audit log."""
    api = f"{hub.url}/services/pai/api/v1"
    admin = {"Authorization": f"token {hub.admin_token()}"}
    r = requests.post(f"{api}/workspaces", json={"name": "team-a"}, headers=admin)
    assert r.status_code == 201, r.text
    r = requests.put(
        f"{api}/workspaces/team-a/members/alice", json={"role": "developer"}, headers=admin
    )
    assert r.status_code in (200, 201), r.text
    as_alice = {"Authorization": f"token {alice[1]}"}
    as_bob = {"Authorization": f"token {bob[1]}"}
    assert requests.get(f"{api}/workspaces/team-a/jobs", headers=as_alice).status_code == 200
    for path in ("jobs", "files/"):
        r = requests.get(f"{api}/workspaces/team-a/{path}", headers=as_bob)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["message"]
    names = [
        w["name"] for w in requests.get(f"{api}/workspaces", headers=as_bob).json()["workspaces"]
    ]
    assert "team-a" not in names
    events = requests.get(
        f"{api}/workspaces/team-a/audit", params={"actor": "bob"}, headers=admin
    ).json()["events"]
    assert any(e["outcome"] == "denied" for e in events), events


def test_culler_no_gpu_machine_and_a_server_dying_at_start(hub_factory):
    """A second hub, started with `pai-lab up`: a short culler timeout, no GPUs, and a
    profile that cannot start."""
    profiles = [dict(p) for p in DEFAULT_PROFILES] + [BROKEN_PROFILE]
    h = hub_factory(
        "culler",
        extra="c.PaiHub.idle_cull_timeout = 3\nc.PaiHub.idle_cull_every = 1\n"
        f"c.Profiles.profiles = {profiles!r}\nc.PaiHub.control_plane = False\n",
        gpus="",
        via_up=True,
    )
    out = h.log()
    assert f"pai-lab: starting JupyterHub at {h.url}/" in out
    assert "log in as 'admin'; on this first start the password is printed below" in out
    r = h.api("POST", "/users/admin/server", json={"profile": "gpu"})
    assert r.status_code == 409
    assert "this machine has no GPUs" in r.json()["message"]

    # A server that dies at start-up: the user is told why, not given a 500.
    s, token = h.login("admin", h.admin_password()), h.admin_token()
    r = h.spawn_from_form(s, "broken", allow_redirects=False)
    if r.status_code == 302:  # slower than 1 s: the progress stream tells the story
        with requests.get(
            f"{h.url}/hub/api/users/admin/server/progress",
            headers={"Authorization": f"token {token}"},
            stream=True,
        ) as events:
            last = None
            for last in read_events(events):
                if last.get("failed") or last.get("ready"):
                    break
        assert last and last.get("failed"), last
        message = last["message"]
    else:
        message = r.text
    assert "exited during start-up (exit code" in message
    assert "pai_lab_no_such_module" in message  # the log tail names the cause
    assert "InvalidStateError" not in h.log()
    assert h.server_model("admin") is None

    # The idle culler stops a server nobody uses.
    r = h.api("POST", "/users/admin/server", json={"profile": "cpu-small"})
    assert r.status_code in (201, 202), r.text
    h.wait_ready("admin")
    h.wait_stopped("admin")  # nobody touches it: the culler stops it
    assert "Culling server admin" in h.log() or "culling" in h.log().lower()
