"""A real JupyterHub + configurable-http-proxy with pai-lab's config, for tests.

``start_hub(tmp_dir, extra=..., env=...)`` runs ``python -m jupyterhub -f
pai_lab/hub/jupyterhub_config.py`` (the same file ``pai-lab up`` runs) on free loopback
ports with its own data dir; ``extra`` is a JupyterHub config snippet applied *before*
``configure(c)`` (through ``PAI_LAB_HUB_EXTRA_CONFIG``), so tests change settings the way
a deployer would. Login is the real default authenticator (NativeAuthenticator): the
generated admin password is read from ``<data_dir>/admin-password`` and other users sign up
and are approved by the admin, over HTTP, like people do.

Stopping is graceful (SIGTERM, JupyterHub stops servers, services and proxy), then every
process the hub started is reaped: the proxy and services run in their own sessions and
would outlive a killed hub (FIELD-NOTES).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.common import free_port

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "pai_lab" / "hub" / "jupyterhub_config.py"
START_LIMIT = 120  # seconds: only a hang guard, never a timing assertion
_XSRF_RE = re.compile(r'name="_xsrf"\s+value="([^"]+)"')


def _children(pid: int) -> dict[int, int]:
    """{pid: ppid} of every process (read from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces/parens: ppid is after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...)."""
    tree = _children(pid)
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in tree.items():
            if ppid == parent and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def proc_environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            env[k.decode()] = v.decode("utf-8", "replace")
    return env


def xsrf_from(html: str) -> str:
    m = _XSRF_RE.search(html)
    if not m:
        raise AssertionError(f"no _xsrf field in page: {html[:300]!r}")
    return m.group(1)


_ACTION_RE = re.compile(r'id="spawn_form"\s+action="([^"]+)"')


def spawn_action(html_text: str) -> str:
    """The spawn form's action (it carries ``?_xsrf=...`` in its query)."""
    m = _ACTION_RE.search(html_text)
    if not m:
        raise AssertionError(f"no spawn form in page: {html_text[:300]!r}")
    return html.unescape(m.group(1))


class Hub:
    """A running hub: URLs, data dir, helpers to log in and call its API."""

    def __init__(self, proc: subprocess.Popen, url: str, data_dir: Path, log_path: Path):
        self.proc = proc
        self.url = url.rstrip("/")
        self.data_dir = data_dir
        self.log_path = log_path
        self._admin_token: str | None = None

    # -- info --------------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin_password(self) -> str:
        return (self.data_dir / "admin-password").read_text().strip()

    # -- browser-like sessions -------------------------------------------------------
    def login(self, username: str, password: str) -> requests.Session:
        """Log in through the hub's login form; raises if the hub refuses."""
        s, resp = self.try_login(username, password)
        if "/hub/login" in resp.url:
            raise AssertionError(f"login as {username} refused: {resp.status_code}")
        return s

    def try_login(self, username: str, password: str) -> tuple[requests.Session, requests.Response]:
        s = requests.Session()
        page = s.get(f"{self.url}/hub/login")
        page.raise_for_status()
        resp = s.post(
            f"{self.url}/hub/login",
            data={"username": username, "password": password, "_xsrf": xsrf_from(page.text)},
        )
        return s, resp

    def signup_and_approve(self, username: str, password: str) -> requests.Session:
        """A new user signs up, the admin approves, the user logs in (all over HTTP)."""
        s = requests.Session()
        page = s.get(f"{self.url}/hub/signup")
        page.raise_for_status()
        r = s.post(
            f"{self.url}/hub/signup",
            data={
                "username": username,
                "signup_password": password,
                "signup_password_confirmation": password,
                "_xsrf": xsrf_from(page.text),
            },
        )
        r.raise_for_status()
        admin = self.login("admin", self.admin_password())
        r = admin.get(f"{self.url}/hub/authorize/{username}")
        r.raise_for_status()
        return self.login(username, password)

    def token_for(self, session: requests.Session, username: str, note: str = "test") -> str:
        """A hub API token for ``username``, created with its browser session."""
        xsrf = session.cookies.get("_xsrf", path="/hub/") or session.cookies.get("_xsrf")
        r = session.post(
            f"{self.url}/hub/api/users/{username}/tokens",
            json={"note": note},
            headers={"X-XSRFToken": xsrf, "Referer": f"{self.url}/hub/token"},
        )
        r.raise_for_status()
        return r.json()["token"]

    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.token_for(self.login("admin", self.admin_password()), "admin")
        return self._admin_token

    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {token or self.admin_token()}"
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kw)

    # -- servers -----------------------------------------------------------------
    def spawn_from_form(self, session: requests.Session, profile: str, **kw) -> requests.Response:
        """Pick ``profile`` on the hub's spawn page and press Start, like a browser."""
        page = session.get(f"{self.url}/hub/spawn")
        page.raise_for_status()
        return session.post(
            self.url + spawn_action(page.text),
            files={"profile": (None, profile)},  # the form is multipart/form-data
            **kw,
        )

    def server_model(self, username: str) -> dict | None:
        r = self.api("GET", f"/users/{username}")
        r.raise_for_status()
        return r.json().get("servers", {}).get("")

    def wait_ready(self, username: str, limit: float = START_LIMIT) -> dict:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            model = self.server_model(username)
            if model and model.get("ready"):
                return model
            if model is None and self.proc.poll() is not None:
                raise AssertionError("hub died:\n" + self.log()[-3000:])
            time.sleep(0.25)
        raise AssertionError(f"server of {username} not ready; hub log:\n{self.log()[-3000:]}")

    def wait_stopped(self, username: str, limit: float = START_LIMIT) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.server_model(username) is None:
                return
            time.sleep(0.25)
        raise AssertionError(f"server of {username} still running; log:\n{self.log()[-3000:]}")

    def server_pid(self, username: str) -> int:
        """The pid of ``username``'s single-user server (a child of the hub)."""
        for pid in descendants(self.proc.pid):
            try:
                env = proc_environ(pid)
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if env.get("JUPYTERHUB_USER") == username and b"jupyterhub-singleuser" in cmd:
                return pid
        raise AssertionError(f"no server process for {username}")

    def stop_server(self, username: str) -> None:
        r = self.api("DELETE", f"/users/{username}/server")
        assert r.status_code in (202, 204), r.text
        self.wait_stopped(username)

    # -- lifecycle -------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful stop, then reap anything the hub started that is still alive."""
        procs = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def start_hub(
    tmp_dir: Path,
    extra: str = "",
    env: dict[str, str] | None = None,
    gpus: str | None = "",
    via_up: bool = False,
) -> Hub:
    """Start a hub with pai-lab's config (+ ``extra`` config text) and wait until it answers.

    ``via_up=True`` starts it the way people do, with ``pai-lab up`` (``python -m
    pai_lab.hub.up --ip --port --data-dir --config``), which then becomes JupyterHub.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_dir / "data"
    port, hub_port = free_port(), free_port()
    extra_path = tmp_dir / "extra_config.py"
    extra_path.write_text(
        "c = get_config()  # noqa\n"
        f"c.PaiHub.data_dir = {str(data_dir)!r}\n"
        # short single-user poll so a server that stopped itself is noticed quickly
        "c.Spawner.poll_interval = 2\n" + extra
    )
    full_env = dict(os.environ)
    full_env.update(
        {
            "PAI_LAB_HUB_EXTRA_CONFIG": str(extra_path),
            "PAI_LAB_DATA_DIR": str(data_dir),
            "PYTHONPATH": os.pathsep.join(
                [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
            ),
        }
    )
    if gpus is None:
        full_env.pop("PAI_LAB_GPUS", None)
    else:
        full_env["PAI_LAB_GPUS"] = gpus
    full_env.update(env or {})
    log_path = tmp_dir / "hub.log"
    logf = open(log_path, "wb")
    if via_up:
        cmd = [sys.executable, "-m", "pai_lab.hub.up", "--ip", "127.0.0.1", "--port", str(port)]
        cmd += ["--data-dir", str(data_dir), "--config", str(extra_path)]
    else:
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)]
        cmd += [
            f"--JupyterHub.bind_url=http://127.0.0.1:{port}",
            f"--JupyterHub.hub_bind_url=http://127.0.0.1:{hub_port}",
        ]
    proc = subprocess.Popen(
        cmd,
        cwd=str(tmp_dir),
        env=full_env,
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    logf.close()
    hub = Hub(proc, f"http://127.0.0.1:{port}", data_dir, log_path)
    deadline = time.monotonic() + START_LIMIT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"hub exited with {proc.returncode}:\n{hub.log()[-4000:]}")
        try:
            if requests.get(f"{hub.url}/hub/api/", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            hub.stop()
            raise RuntimeError(f"hub did not answer:\n{hub.log()[-4000:]}")
        time.sleep(0.2)
    return hub


def control_plane_available() -> bool:
    """True once the lead's control plane (``python -m pai_lab.control``) is in the tree."""
    return (REPO / "pai_lab" / "control" / "__main__.py").exists() and (
        REPO / "pai_lab" / "control" / "hub_identity.py"
    ).exists()


BROKEN_PROFILE = {
    "slug": "broken",
    "display_name": "Broken (test)",
    "description": "A server that cannot start.",
    "env": {"JUPYTERHUB_SINGLEUSER_APP": "pai_lab_no_such_module.App"},
    "idle_timeout": 600,
}


def _own_tmp(prefix: str) -> Path:
    # Not pytest's tmp_path: pytest prunes old numbered base dirs, and other pytest runs on
    # the same machine could delete a running hub's data dir.
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pai_hub() -> Iterator[Hub]:
    """One shared hub for the session: the default profiles, one GPU "0", the control
    plane when it is in the tree. Tests leave no server running."""
    extra = ""
    if not control_plane_available():
        extra += "c.PaiHub.control_plane = False\n"
    root = _own_tmp("pai-hub-")
    h = start_hub(root, extra=extra, gpus="0")
    yield h
    h.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hub_factory() -> Iterator:
    """Start extra hubs in a test; all are stopped and reaped at teardown."""
    hubs: list[Hub] = []
    root = _own_tmp("pai-hubs-")

    def make(name: str = "hub", **kw) -> Hub:
        h = start_hub(root / name, **kw)
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.stop()
    shutil.rmtree(root, ignore_errors=True)


def read_events(resp: requests.Response) -> Iterator[dict]:
    """Parse a text/event-stream response (the hub's spawn progress) into dicts."""
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            yield json.loads(line[5:].strip())
