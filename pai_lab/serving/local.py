"""Local deployments: one router process per deployment, N model-server replicas per variant.

The control plane calls this backend; it keeps no state in memory that matters, so the
control plane may restart at any time and ``reattach`` finds the running routers again.

The deployment dict (what the REST API stores and passes in)::

    {
      "workspace": "team-a",
      "name": "iris-svc",
      "token": "<bearer token clients must send; '' = open>",
      "variants": [
        {"name": "main", "model": "iris", "version": "3",
         "model_path": "/data/store/workspaces/team-a/models/iris/3",   # local file or dir
         "framework": "sklearn",                # or "torch"; None guesses from the suffix
         "replicas": 2, "min_replicas": 2, "max_replicas": 4,
         "traffic": 90, "shadow": false},
        {"name": "canary", "model": "iris", "version": "4", "model_path": "...",
         "replicas": 1, "traffic": 10},
        {"name": "shadow", "model": "iris", "version": "5", "model_path": "...",
         "shadow": true}                        # gets a copy of every request, answers nobody
      ]
    }

Rules (checked by :func:`.router.validate_deployment`, which raises
``pai_lab.errors.BadRequest`` naming the field): non-shadow ``traffic`` adds up to 100 (a
single non-shadow variant may omit it); ``min_replicas <= replicas <= max_replicas``
(min/max default to replicas: no autoscaling); ``model_path`` must exist locally — the
control plane copies registry artifacts out of the store first (``get_file``) for
non-file stores. Model files are never taken from a client request.

API (all ``async``; each returns the status dict below):

- ``create(deployment)``: start the router, wait until every variant has all its replicas
  ready (at most ``start_timeout``; then the status says what is missing), return status.
  ``Conflict`` if it exists.
- ``update(deployment)``: new traffic split, replica counts, or variants (new model
  versions start before old ones stop); waits like ``create``. ``NotFound`` if missing.
- ``delete(name, workspace="default")``: stop router and replicas, remove the run dir.
- ``status(name, workspace="default")``: live status; ``state`` is ``ready``,
  ``starting`` or ``stopped`` (router process gone).
- ``reattach(deployments=None)``: after a control-plane restart. Returns
  ``{"<ws>/<name>": status}`` for every run dir found; routers that died are restarted
  when their deployment dict is passed in ``deployments`` (the DB's view), otherwise
  reported ``stopped``.

Status dict: ``{"workspace", "name", "url", "state", "router_pid", "variants": [{"name",
"model", "version", "traffic", "shadow", "min_replicas", "max_replicas", "replicas":
{"desired", "ready", "total"}, "restarts", "requests", "inflight", "replica_list": [{"pid",
"port", "ready", "inflight", "draining"}]}]}``. ``url`` is the base for OIP V2 calls:
``POST {url}/v2/models/<model>/infer`` with ``Authorization: Bearer <token>``.

Files: ``<data_dir>/deployments/<ws>/<name>/`` holds ``deployment.json``, ``admin.json``
(the router's admin token), both mode 0600 (they hold tokens), ``router.json`` (pid, port) and replica logs.
Routers run in their own session, so they outlive the control plane.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tornado.httpclient
from traitlets import Dict, Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import BackendUnavailable, BadRequest, Conflict, NotFound
from .router import validate_deployment

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _all_ready(status: dict) -> bool:
    """Serving, and every variant (shadows too) has all its desired replicas ready."""
    return status.get("state") == "ready" and all(
        v["replicas"]["ready"] >= v["replicas"]["desired"] for v in status["variants"]
    )


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds tokens), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class LocalDeploymentBackend(LoggingConfigurable):
    """Runs deployments as local processes (router + model-server replicas)."""

    data_dir = Unicode(help="pai-lab data directory; run dirs go under deployments/.").tag(
        config=True
    )
    host = Unicode(
        "127.0.0.1", help="Interface routers listen on (what deployment URLs point at)."
    ).tag(config=True)
    start_timeout = Float(120.0, help="Seconds create() waits for replicas to be ready.").tag(
        config=True
    )
    health_interval = Float(1.0, help="Seconds between replica health probes.").tag(config=True)
    unhealthy_after = Int(
        3, help="Failed probes in a row before a running replica is restarted."
    ).tag(config=True)
    target_inflight = Float(4.0, help="Autoscaling target: in-flight requests per replica.").tag(
        config=True
    )
    autoscale_window = Float(4.0, help="Seconds of in-flight samples the autoscaler averages.").tag(
        config=True
    )
    scale_in_delay = Float(
        60.0, help="Seconds the load must stay low before a replica is removed."
    ).tag(config=True)
    server_args = Dict(
        help="Extra ModelServer options for replicas, e.g. {'max_batch_size': 64}."
    ).tag(config=True)

    def __init__(self, data_dir: str | os.PathLike | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if data_dir is not None:
            self.data_dir = str(data_dir)
        if not self.data_dir:
            raise ValueError("LocalDeploymentBackend needs a data_dir")
        self.root = Path(self.data_dir) / "deployments"

    # -- paths ---------------------------------------------------------------------
    def run_dir(self, name: str, workspace: str = "default") -> Path:
        for what, value in (("workspace", workspace), ("name", name)):
            if not isinstance(value, str) or not _SAFE.match(value):
                raise BadRequest(
                    f"deployment {what} {value!r} must be 1-63 letters, digits, '_', '.', '-'"
                )
        return self.root / workspace / name

    def _router_info(self, run_dir: Path) -> dict | None:
        try:
            info = json.loads((run_dir / "router.json").read_text())
        except (OSError, ValueError):
            return None
        return info if _pid_alive(int(info["pid"])) else None

    def _admin(self, run_dir: Path) -> str:
        return json.loads((run_dir / "admin.json").read_text())["admin_token"]

    def _settings(self) -> dict:
        args = [f"--ModelServer.{k}={v}" for k, v in self.server_args.items()]
        return {
            "host": self.host,
            "health_interval": self.health_interval,
            "unhealthy_after": self.unhealthy_after,
            "target_inflight": self.target_inflight,
            "autoscale_window": self.autoscale_window,
            "scale_in_delay": self.scale_in_delay,
            "server_args": args,
        }

    # -- talking to a router ---------------------------------------------------------
    async def _call(self, run_dir: Path, method: str, path: str, body: Any = None) -> dict:
        info = self._router_info(run_dir)
        if info is None:
            raise BackendUnavailable(f"router of {run_dir.name} is not running")
        resp = await tornado.httpclient.AsyncHTTPClient().fetch(
            f"http://{self.host}:{info['port']}{path}",
            method=method,
            body=json.dumps(body) if body is not None else None,
            headers={"Authorization": f"Bearer {self._admin(run_dir)}"},
            raise_error=False,
            request_timeout=30,
        )
        if resp.code == 400:
            raise BadRequest(json.loads(resp.body)["error"])
        if resp.code != 200:
            raise BackendUnavailable(f"router of {run_dir.name} answered {resp.code}")
        return json.loads(resp.body)

    def _spawn(self, run_dir: Path) -> None:
        (run_dir / "router.json").unlink(missing_ok=True)
        log = open(run_dir / "router.log", "ab")
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.Popen(
            [sys.executable, "-m", "pai_lab.serving.router", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the control plane
            env=env,
        )
        log.close()

    async def _wait(self, run_dir: Path, ready: bool = True) -> dict:
        deadline = time.monotonic() + self.start_timeout
        status = None
        while time.monotonic() < deadline:
            info = None
            if (run_dir / "router.json").exists():
                info = self._router_info(run_dir)
            if info is not None:
                try:
                    status = await self._call(run_dir, "GET", "/_pai/status")
                except (BackendUnavailable, OSError):
                    status = None
                if status is not None and (not ready or _all_ready(status)):
                    return status
            await asyncio.sleep(0.2)
        if status is not None:
            return status
        log = (
            (run_dir / "router.log").read_text()[-2000:]
            if (run_dir / "router.log").exists()
            else ""
        )
        raise BackendUnavailable(f"router did not start: {log.strip().splitlines()[-1:] or '?'}")

    # -- API --------------------------------------------------------------------------
    async def create(self, deployment: dict) -> dict:
        """Start a deployment; returns its status (``url`` included) once it serves."""
        dep = validate_deployment(deployment)
        run_dir = self.run_dir(dep["name"], dep["workspace"])
        if run_dir.exists() and self._router_info(run_dir) is not None:
            raise Conflict(f"deployment {dep['workspace']}/{dep['name']} already exists")
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o700)
        admin = run_dir / "admin.json"
        _write_private(admin, json.dumps({"admin_token": secrets.token_urlsafe(32)}))
        _write_private(
            run_dir / "deployment.json",
            json.dumps({"deployment": dep, "settings": self._settings()}, indent=1),
        )
        self._spawn(run_dir)
        return await self._wait(run_dir)

    async def update(self, deployment: dict) -> dict:
        """Change traffic, replicas or variants of a running deployment."""
        dep = validate_deployment(deployment)
        run_dir = self.run_dir(dep["name"], dep["workspace"])
        if not run_dir.exists():
            raise NotFound(f"deployment {dep['workspace']}/{dep['name']} not found")
        await self._call(run_dir, "PUT", "/_pai/deployment", dep)
        return await self._wait(run_dir)

    async def status(self, name: str, workspace: str = "default") -> dict:
        run_dir = self.run_dir(name, workspace)
        if not run_dir.exists():
            raise NotFound(f"deployment {workspace}/{name} not found")
        if self._router_info(run_dir) is None:
            dep = json.loads((run_dir / "deployment.json").read_text())["deployment"]
            return {
                "workspace": workspace,
                "name": name,
                "url": None,
                "state": "stopped",
                "router_pid": None,
                "variants": [
                    dict(v, replicas={"desired": 0, "ready": 0, "total": 0})
                    for v in dep["variants"]
                ],
            }
        return await self._call(run_dir, "GET", "/_pai/status")

    async def delete(self, name: str, workspace: str = "default") -> None:
        run_dir = self.run_dir(name, workspace)
        if not run_dir.exists():
            raise NotFound(f"deployment {workspace}/{name} not found")
        info = self._router_info(run_dir)
        if info is not None:
            pid = int(info["pid"])
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _pid_alive(pid):
                    break
                await asyncio.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, run_dir, True)

    async def reattach(self, deployments: list[dict] | None = None) -> dict[str, dict]:
        """Find running routers after a restart; restart dead ones the DB still wants."""
        wanted = {}
        for d in deployments or []:
            dep = validate_deployment(d)
            wanted[f"{dep['workspace']}/{dep['name']}"] = dep
        found: dict[str, dict] = {}
        if self.root.exists():
            for ws_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for run_dir in sorted(p for p in ws_dir.iterdir() if p.is_dir()):
                    key = f"{ws_dir.name}/{run_dir.name}"
                    if self._router_info(run_dir) is None and key in wanted:
                        self._spawn(run_dir)
                        found[key] = await self._wait(run_dir)
                    else:
                        found[key] = await self.status(run_dir.name, ws_dir.name)
        for key, dep in wanted.items():
            if key not in found:
                found[key] = await self.create(dep)
        return found
