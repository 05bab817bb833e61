"""A real ``jupyter server`` subprocess with the pai-lab extension, for tests.

Everything Jupyter reads or writes is isolated under a temporary folder (HOME, config,
data, runtime, IPython dirs); the extension is enabled through the repository's own
``jupyter-config/`` file, so the shipped enablement is what gets tested. Kernels the
server starts import ``pai_lab`` from this checkout (PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from .common import free_port

REPO = Path(__file__).resolve().parents[2]

# Variables that would make a test server talk to some other control plane or hub.
_LEAKY_PREFIXES = ("PAI_", "JUPYTERHUB_", "JPY_", "JUPYTER_")


_OTHER_EXTENSIONS = (
    "jupyterlab",
    "jupyter_lsp",
    "notebook_shim",
    "jupyter_server_terminals",
    "notebook",
)


@dataclass
class JupyterServer:
    """A running server: ``url`` ends with the base URL (``http://127.0.0.1:P/jp/``)."""

    url: str
    token: str
    root_dir: Path
    home: Path
    env: dict
    proc: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def pai_api(self) -> str:
        return self.url + "pai/api/"

    def headers(self, **more: str) -> dict:
        return {"Authorization": f"token {self.token}", **more}

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("headers", self.headers())
        kw.setdefault("timeout", 60)
        return requests.get(self.url + path, **kw)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("headers", self.headers())
        kw.setdefault("timeout", 60)
        return requests.request(method, self.url + path, **kw)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (jupyter_server's graceful path: extensions' stop hooks run), then KILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def isolated_env(base: Path, extra: dict | None = None) -> dict:
    """An environment with private Jupyter/IPython dirs and no stray PAI_/hub variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    home = base / "home"
    for d in ("home", "jupyter-config", "jupyter-data", "jupyter-runtime", "ipython"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(base / "jupyter-config"),
        JUPYTER_DATA_DIR=str(base / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(base / "jupyter-runtime"),
        JUPYTER_CONFIG_PATH=str(REPO / "jupyter-config"),
        JUPYTER_PLATFORM_DIRS="0",
        IPYTHONDIR=str(base / "ipython"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def start_jupyter_server(
    base: Path,
    *,
    env: dict | None = None,
    args: list[str] | None = None,
    base_url: str = "/jp/",
    token: str | None = None,
    extensions: dict[str, bool] | None = None,
    timeout: float = 90,
) -> JupyterServer:
    """Start ``python -m jupyter_server`` and wait until its API and ``/pai/api`` answer."""
    base.mkdir(parents=True, exist_ok=True)
    root = base / "root"
    root.mkdir(exist_ok=True)
    port = free_port()
    token = token or secrets.token_hex(16)
    full_env = isolated_env(base, env)
    log_path = base / "jupyter-server.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--ServerApp.base_url={base_url}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.reraise_server_extension_failures=True",
        # Only our extension (enabled by the repo's jupyter-config file): starts faster.
        "--ServerApp.jpserver_extensions="
        + repr({**{name: False for name in _OTHER_EXTENSIONS}, **(extensions or {})}),
        *(args or []),
    ]
    logf = open(log_path, "ab")  # a restart on the same folder keeps the earlier log
    proc = subprocess.Popen(
        cmd,
        env=full_env,
        stdout=logf,
        stderr=subprocess.STDOUT,
        cwd=str(root),
        start_new_session=True,
    )
    logf.close()
    server = JupyterServer(
        url=f"http://127.0.0.1:{port}{base_url}",
        token=token,
        root_dir=root,
        home=Path(full_env["HOME"]),
        env=full_env,
        proc=proc,
        log_path=log_path,
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"jupyter server exited with {proc.returncode}:\n{server.log()[-5000:]}"
            )
        try:
            r = server.get("pai/api/status", timeout=5)
            if r.status_code == 200 and r.json().get("ready"):
                break
            if r.status_code == 200 and r.json().get("error"):
                break  # tests about startup failures want the server anyway
        except (requests.ConnectionError, requests.Timeout, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"jupyter server not ready in {timeout}s:\n{server.log()[-5000:]}")
        time.sleep(0.2)
    return server


@pytest.fixture
def jupyter_server_factory(tmp_path):
    """``make(name, env=..., args=...)`` -> a started JupyterServer; all stopped at teardown."""
    started: list[JupyterServer] = []

    def make(name: str = "jp", **kw) -> JupyterServer:
        s = start_jupyter_server(tmp_path / name, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def standalone_server(tmp_path_factory):
    """One standalone server (embedded control plane) shared by a test module."""
    s = start_jupyter_server(tmp_path_factory.mktemp("standalone"))
    try:
        yield s
    finally:
        s.stop()


def write_notebook(
    path: Path, cells: list[str], *, tags: dict[int, list[str]] | None = None
) -> Path:
    """A minimal nbformat-4 notebook of code cells (tags by cell index)."""
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {
                "id": f"cell-{i}",
                "cell_type": "code",
                "metadata": {"tags": (tags or {}).get(i, [])},
                "execution_count": None,
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1))
    return path
