"""A real control plane in a subprocess (``python -m pai_lab.control``) on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from pai_lab.client import PaiClient

from .common import free_port


@dataclass
class ControlPlane:
    data_dir: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "control.log"

    def start(self, timeout: float = 60) -> ControlPlane:
        env = {**os.environ, **self.env}
        env.pop("PAI_LAB_URL", None)
        env.pop("PAI_LAB_TOKEN", None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pai_lab.control",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                f"--data-dir={self.data_dir}",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "api/v1/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"control plane did not start:\n{self.log_path.read_text()[-3000:]}")

    def client(self, token: str | None = None, workspace: str | None = None) -> PaiClient:
        return PaiClient(self.url, token=token or self.token, workspace=workspace)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (jobs, in their own sessions, survive)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cli_env(self, token: str | None = None) -> dict:
        return {**os.environ, "PAI_LAB_URL": self.url, "PAI_LAB_TOKEN": token or self.token}


def _reap_jobs(data_dir: Path) -> None:
    """Kill job process groups a test left behind (they outlive the control plane by design)."""
    for pid_file in data_dir.glob("runs/*/*/pid"):
        try:
            pid = int(pid_file.read_text().strip())
            os.killpg(pid, signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            pass


@pytest.fixture
def control_factory(tmp_path):
    started: list[ControlPlane] = []

    def make(
        data_dir: Path | None = None, args: list[str] | None = None, env: dict | None = None
    ) -> ControlPlane:
        d = data_dir or (tmp_path / f"cp{len(started)}")
        d.mkdir(parents=True, exist_ok=True)
        cp = ControlPlane(d, free_port(), list(args or []), dict(env or {}))
        started.append(cp)
        return cp.start()

    yield make
    for cp in started:
        cp.stop()
        _reap_jobs(cp.data_dir)


@pytest.fixture
def control(control_factory) -> ControlPlane:
    return control_factory()


@pytest.fixture(scope="module")
def shared_control(tmp_path_factory):
    """One control plane for a whole module of read-mostly tests (saves start-up time)."""
    d = tmp_path_factory.mktemp("shared-cp")
    cp = ControlPlane(d, free_port()).start()
    yield cp
    cp.stop()
    _reap_jobs(d)
