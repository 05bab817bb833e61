"""Spawn-to-ready with pai-lab's hub config vs a bare JupyterHub, side by side.

Starts two real hubs (each with configurable-http-proxy) on free loopback ports:

* ``pai``:  ``pai_lab/hub/jupyterhub_config.py`` as ``pai-lab up`` runs it (profile spawner,
  native authenticator, idle culler, control-plane service when present), profile cpu-small;
* ``bare``: JupyterHub with the plain local process spawner (``SimpleLocalProcessSpawner``:
  the local process spawner without system accounts, as we run as root here).

Then starts N servers one after another, alternating hubs (pai user1, bare user1, pai
user2, ...) so both see the same machine load, and prints per-spawn times, medians, the
ratio pai/bare, stop times, RSS per single-user server and RSS of each hub process.

    python benchmarks/hub_spawn.py [--users 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.hub import descendants, proc_environ  # noqa: E402

PAI_CONFIG = REPO / "pai_lab" / "hub" / "jupyterhub_config.py"
BENCH_ROLE = ["admin:users", "admin:servers", "list:users", "read:users"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class BenchHub:
    def __init__(self, name: str, workdir: Path, pai: bool):
        self.name = name
        self.token = secrets.token_hex(16)
        self.port, self.hub_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True)
        extra = workdir / "bench_config.py"
        service = (
            # same generous timeouts on both: a loaded 2-core machine needs > 30 s at times
            "c.Spawner.http_timeout = 300\nc.Spawner.start_timeout = 300\n"
            f"c.JupyterHub.services = list(c.JupyterHub.services or []) + "
            f"[{{'name': 'bench', 'api_token': {self.token!r}}}]\n"
            f"c.JupyterHub.load_roles = list(c.JupyterHub.load_roles or []) + "
            f"[{{'name': 'bench', 'scopes': {BENCH_ROLE!r}, 'services': ['bench']}}]\n"
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        if pai:
            data = workdir / "data"
            extra.write_text(
                "c = get_config()  # noqa\n"
                f"c.PaiHub.data_dir = {str(data)!r}\n"
                "c.JupyterHub.services = []\nc.JupyterHub.load_roles = []\n" + service
            )
            env.update(PAI_LAB_HUB_EXTRA_CONFIG=str(extra), PAI_LAB_DATA_DIR=str(data))
            env["PAI_LAB_GPUS"] = ""
            cmd = [sys.executable, "-m", "jupyterhub", "-f", str(PAI_CONFIG)]
        else:
            extra.write_text(
                "c = get_config()  # noqa\n"
                "c.JupyterHub.services = []\nc.JupyterHub.load_roles = []\n"
                + service
                + "c.JupyterHub.spawner_class = 'simple'\n"
                f"c.SimpleLocalProcessSpawner.home_dir_template = {str(workdir / 'home')!r} + '/{{username}}'\n"
                "c.Spawner.default_url = '/lab'\n"
                "c.JupyterHub.authenticator_class = 'dummy'\n"
                f"c.JupyterHub.db_url = 'sqlite:///{workdir / 'hub.sqlite'}'\n"
                f"c.JupyterHub.cookie_secret_file = {str(workdir / 'cookie_secret')!r}\n"
                f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{free_port()}'\n"
                f"c.ConfigurableHTTPProxy.pid_file = {str(workdir / 'proxy.pid')!r}\n"
                + ("c.Spawner.args = ['--allow-root']\n" if os.geteuid() == 0 else "")
            )
            cmd = [sys.executable, "-m", "jupyterhub", "-f", str(extra)]
        cmd += [
            f"--JupyterHub.bind_url={self.url}",
            f"--JupyterHub.hub_bind_url=http://127.0.0.1:{self.hub_port}",
        ]
        self.log = open(workdir / "hub.log", "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.user_options = {"profile": "cpu-small"} if pai else None

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/hub/api{path}",
            headers={"Authorization": f"token {self.token}"},
            timeout=60,
            **kw,
        )

    def wait_up(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} hub exited; see its hub.log")
            try:
                if self.api("GET", "/users").status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} hub did not come up")

    def spawn(self, user: str) -> float:
        self.api("POST", "/users", json={"usernames": [user]})
        t0 = time.perf_counter()
        r = self.api("POST", f"/users/{user}/server", json=self.user_options or {})
        if r.status_code not in (201, 202):
            raise SystemExit(f"{self.name}: spawn failed {r.status_code} {r.text}")
        while True:
            model = self.api("GET", f"/users/{user}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return time.perf_counter() - t0
            if r.status_code == 201:
                return time.perf_counter() - t0
            if not server:
                raise SystemExit(f"{self.name}: {user}'s server failed to start; see hub.log")
            time.sleep(0.1)

    def server_rss_mb(self, user: str) -> float:
        for pid in descendants(self.proc.pid):
            try:
                env = proc_environ(pid)
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if env.get("JUPYTERHUB_USER") == user and b"jupyterhub-singleuser" in cmd:
                return rss_kb(pid) / 1024
        return float("nan")

    def stop_server(self, user: str) -> float:
        t0 = time.perf_counter()
        self.api("DELETE", f"/users/{user}/server")
        while self.api("GET", f"/users/{user}").json().get("servers", {}).get(""):
            time.sleep(0.05)
        return time.perf_counter() - t0

    def close(self) -> None:
        procs = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("configurable-http-proxy"):
        print("needs configurable-http-proxy: npm install -g configurable-http-proxy")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    hubs = {
        "pai": BenchHub("pai", tmp / "pai", True),
        "bare": BenchHub("bare", tmp / "bare", False),
    }
    try:
        for h in hubs.values():
            h.wait_up()
        time.sleep(3)  # let services (culler, control plane) settle
        spawn = {k: [] for k in hubs}
        rss = {k: [] for k in hubs}
        stop = {k: [] for k in hubs}
        for i in range(args.users):
            for name, h in hubs.items():
                user = f"user{i}"
                t = h.spawn(user)
                spawn[name].append(t)
                time.sleep(1)  # the server finishes its start-up work before we weigh it
                rss[name].append(h.server_rss_mb(user))
                stop[name].append(h.stop_server(user))
                print(
                    f"{name:5s} {user}: spawn-to-ready {t:6.2f} s  rss {rss[name][-1]:6.1f} MB  stop {stop[name][-1]:5.2f} s",
                    flush=True,
                )
        hub_rss = {k: rss_kb(h.proc.pid) / 1024 for k, h in hubs.items()}
        print()
        print(
            f"{'':6s}{'spawn median':>14s}{'stop median':>13s}{'server RSS':>12s}{'hub RSS':>10s}"
        )
        for k in hubs:
            print(
                f"{k:6s}{statistics.median(spawn[k]):12.2f} s{statistics.median(stop[k]):11.2f} s"
                f"{statistics.median(rss[k]):9.1f} MB{hub_rss[k]:7.1f} MB"
            )
        ratio = statistics.median(spawn["pai"]) / statistics.median(spawn["bare"])
        print(f"\nspawn-to-ready ratio pai/bare: {ratio:.2f}x (target <= 1.0x)")
        print(
            f"server RSS ratio pai/bare: {statistics.median(rss['pai']) / statistics.median(rss['bare']):.2f}x"
        )
        print(f"logs: {tmp}")
    finally:
        for h in hubs.values():
            h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
