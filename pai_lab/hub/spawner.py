"""Local-mode spawner: JupyterHub's local process spawner plus pai-lab profiles.

What it adds to ``LocalProcessSpawner``, and why:

* a profile form (CPU small / CPU large / GPU) built from :mod:`pai_lab.hub.profiles`, so a
  notebook server and a training job mean the same thing by "cpu-small";
* GPUs from the shared pool (:mod:`pai_lab.gpus`) as ``CUDA_VISIBLE_DEVICES``: two users
  (or a user and a training job) never share a GPU; a GPU profile is refused with a clear
  message when none is free; CPU profiles see no GPU;
* memory and CPU limits the OS gives without root tricks: a per-process data-size rlimit,
  CPU affinity and thread-count variables;
* per-profile idle shutdown inside the server (kernels culled, then the server exits), with
  ``PAI_LAB_IDLE_TIMEOUT`` in its environment so the lab can show it;
* a start that waits until the server listens *or* has died, so a server that crashes at
  start-up is reported with its exit code and the tail of its log instead of JupyterHub
  6.1's ``InvalidStateError: Exception is not set`` (see ``start``);
* by default no system accounts: every server runs as the hub's own user, in its own
  folder ``<data_dir>/users/<name>`` (local mode is for one machine and a trusted team;
  set ``switch_user = True`` to run servers as same-named system users instead).
"""

from __future__ import annotations

import asyncio
import html
import math
import os
import re
import resource
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, SpawnException, set_user_setuid
from traitlets import Bool, CaselessStrEnum, Unicode, default

from pai_lab.hub.profiles import Profile, Profiles

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_IUNITS = {"ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_QTY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]i?)?\s*[bB]?\s*$")


def parse_bytes(value: str | int | float | None) -> int | None:
    """``"2Gi"`` -> 2147483648, ``"500M"`` -> 500000000 (Kubernetes quantity style)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    m = _QTY_RE.match(str(value))
    if not m:
        raise ValueError(f"memory size {value!r} is not like '2Gi', '512Mi' or '1G'")
    num, unit = float(m.group(1)), (m.group(2) or "").lower()
    return int(num * (_IUNITS.get(unit) or _UNITS[unit]))


def format_duration(seconds: int) -> str:
    """3600 -> '60 min', 90 -> '90 s', 7200 -> '2 h' (for people)."""
    if seconds <= 0:
        return "never"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3 * 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:g} h"


def _safe_dirname(name: str) -> str:
    """A folder name for a hub user that can never escape the users/ folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]", "_", name).lstrip(".")
    return cleaned or "_"


class LocalProfileSpawner(LocalProcessSpawner):
    """Local process spawner offering pai-lab profiles (see module docstring)."""

    data_dir = Unicode(
        help="pai-lab data dir: the GPU pool, users/<name> folders and server logs live here.",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("PAI_LAB_DATA_DIR") or str(Path("~/.pai-lab").expanduser())

    switch_user = Bool(
        False,
        help="""Run each server as the system user of the same name (JupyterHub's
        default local behaviour; the accounts must exist). False (default): run every
        server as the hub's own user in <data_dir>/users/<name>: simple, no accounts to
        manage, but users are not isolated from each other at the OS level, so use it on
        one machine for a trusted team (use Kubernetes mode otherwise).""",
    ).tag(config=True)

    memory_limit_method = CaselessStrEnum(
        ["rlimit_data", "rlimit_as", "none"],
        default_value="rlimit_data",
        help="""How a profile's mem_limit is applied locally: 'rlimit_data' (default;
        caps each process's private memory, RLIMIT_DATA), 'rlimit_as' (caps address
        space: stricter, breaks libraries that reserve big virtual ranges, e.g. CUDA),
        or 'none'. Limits are per process (server, each kernel), not per server.""",
    ).tag(config=True)

    control_url = Unicode(
        "",
        help="URL of the pai control plane as seen from user servers (sets PAI_LAB_URL).",
    ).tag(config=True)

    server_log_dir = Unicode(
        help="""Folder for one log file per server (<user>.log); its tail is shown to the
        user when a server dies at start-up. Empty: servers log to the hub's output.""",
    ).tag(config=True)

    @default("server_log_dir")
    def _default_server_log_dir(self) -> str:
        return str(Path(self.data_dir) / "logs" / "servers")

    jupyter_news = Bool(
        False,
        help="""Let JupyterLab fetch news from jupyter.org (it asks each new user). Off by
        default on a self-hosted platform: no calls home; users can switch it on in
        Settings > Notifications.""",
    ).tag(config=True)

    @default("options_form")
    def _default_options_form(self):
        return LocalProfileSpawner._render_options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # Validate {"profile": slug} before anything starts (a bad slug is a clear 400);
        # start() applies it.
        return lambda spawner, user_options: spawner._profile()

    # -- profiles ------------------------------------------------------------------
    @property
    def profiles(self) -> Profiles:
        return Profiles(config=self.config, parent=self)

    @property
    def pool(self):
        from pai_lab.gpus import GpuPool

        return GpuPool(self.data_dir)

    @property
    def gpu_owner(self) -> str:
        return f"server:{self.user.name}" + (f":{self.name}" if self.name else "")

    def _profile(self) -> Profile:
        slug = (self.user_options or {}).get("profile")
        try:
            return self.profiles.get(slug)
        except KeyError as e:
            raise _spawn_error(str(e.args[0]), reason="profile", status=400) from None
        except (ValueError, TypeError) as e:
            raise _spawn_error(
                f"profile configuration: {e}", reason="profile", status=500
            ) from None

    def _render_options_form(self) -> str:
        try:
            profiles = self.profiles.all()
            default_slug = self.profiles.get(None).slug
        except (KeyError, ValueError, TypeError) as e:
            return f'<p class="alert alert-danger">{html.escape(str(e))}</p>'
        gpus_total, gpus_free = self._gpu_counts()
        rows = []
        for p in profiles:
            checked = " checked" if p.slug == default_slug else ""
            idle = format_duration(p.idle_timeout)
            notes = [f"Stopped after {idle} idle."]
            if p.gpu:
                if gpus_total == 0:
                    notes.append("No GPU on this machine.")
                else:
                    notes.append(f"{gpus_free} of {gpus_total} GPUs free now.")
            rows.append(
                f"""<div class="form-check pai-profile mb-2">
  <input class="form-check-input" type="radio" name="profile" id="profile-{html.escape(p.slug)}"
         value="{html.escape(p.slug)}"{checked}>
  <label class="form-check-label" for="profile-{html.escape(p.slug)}">
    <strong>{html.escape(p.display_name)}</strong><br>
    <span class="text-muted">{html.escape(p.description)} {html.escape(" ".join(notes))}</span>
  </label>
</div>"""
            )
        return (
            '<div class="pai-profiles"><p>Choose the resources for your JupyterLab server. '
            "Idle servers stop themselves; training jobs you submit keep running.</p>"
            + "\n".join(rows)
            + "</div>"
        )

    def _gpu_counts(self) -> tuple[int, int]:
        try:
            pool = self.pool
            return len(pool.devices()), len(pool.free())
        except (OSError, ValueError) as e:
            self.log.warning("GPU pool unavailable: %s", e)
            return 0, 0

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Form -> user_options; refuses an unknown profile or a GPU profile with no GPU
        free right away, so the form comes back with the reason."""
        slug = (formdata.get("profile") or [""])[0]
        try:
            profile = self.profiles.get(slug or None)
        except KeyError as e:
            raise _spawn_error(str(e.args[0]), reason="profile", status=400) from None
        if profile.gpu:
            shortage = self.pool.describe_shortage(profile.gpu)
            if shortage:
                raise _no_gpu(profile, shortage)
        return {"profile": profile.slug}

    # -- environment and arguments --------------------------------------------------
    @property
    def user_dir(self) -> Path:
        return Path(self.data_dir).absolute() / "users" / _safe_dirname(self.user.name)

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.switch_user:
            return super().user_env(env)
        env["USER"] = self.user.name
        env["HOME"] = str(self.user_dir)
        env["SHELL"] = env.get("SHELL") or "/bin/bash"
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        profile = getattr(self, "_active_profile", None)
        if profile is None:
            return env
        env.update({str(k): str(v) for k, v in profile.env.items()})
        gpus = getattr(self, "_gpus", []) or []
        # An empty CUDA_VISIBLE_DEVICES hides every GPU from a CPU profile.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        env["PAI_LAB_PROFILE"] = profile.slug
        env["PAI_LAB_IDLE_TIMEOUT"] = str(profile.idle_timeout)
        env["PAI_LAB_IDLE_MESSAGE"] = (
            f"This server stops itself after {format_duration(profile.idle_timeout)} "
            "without activity; training jobs keep running."
        )
        threads = self._cpu_count(profile)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, str(threads))
        env["PAI_LAB_DATA_DIR"] = str(Path(self.data_dir).absolute())
        if self.control_url:
            env["PAI_LAB_URL"] = self.control_url
        if self.api_token:
            # The server token carries access:services!service=pai (see configure()).
            env["PAI_LAB_TOKEN"] = self.api_token
        return env

    def get_args(self) -> list[str]:
        args = list(super().get_args())
        profile = getattr(self, "_active_profile", None)
        if profile is not None and profile.idle_timeout > 0:
            t = int(profile.idle_timeout)
            every = max(1, min(60, t // 4))
            args += [
                f"--ServerApp.shutdown_no_activity_timeout={t}",
                f"--MappingKernelManager.cull_idle_timeout={t}",
                f"--MappingKernelManager.cull_interval={every}",
                "--MappingKernelManager.cull_connected=True",
                f"--TerminalManager.cull_inactive_timeout={t}",
                f"--TerminalManager.cull_interval={every}",
            ]
        return args

    def _cpu_count(self, profile: Profile) -> int:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if not profile.cpu_limit:
            return available
        return max(1, min(available, math.ceil(profile.cpu_limit)))

    def _cpu_set(self, profile: Profile) -> set[int] | None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        cpus = sorted(os.sched_getaffinity(0))
        n = self._cpu_count(profile)
        if n >= len(cpus):
            return None
        # Spread users over the cores: a stable offset per user.
        start = zlib.crc32(self.user.name.encode()) % len(cpus)
        return {cpus[(start + i) % len(cpus)] for i in range(n)}

    def make_preexec_fn(self, name: str):
        profile = getattr(self, "_active_profile", None)
        switch = set_user_setuid(name) if self.switch_user else None
        workdir = None if self.switch_user else str(self.user_dir)
        mem = parse_bytes(profile.mem_limit) if profile else None
        method = self.memory_limit_method
        cpus = self._cpu_set(profile) if profile else None

        def preexec() -> None:
            # Runs in the child between fork and exec: keep it to plain system calls.
            if cpus:
                os.sched_setaffinity(0, cpus)
            if mem and method != "none":
                which = resource.RLIMIT_DATA if method == "rlimit_data" else resource.RLIMIT_AS
                soft, hard = resource.getrlimit(which)
                cap = mem if hard == resource.RLIM_INFINITY else min(mem, hard)
                resource.setrlimit(which, (cap, cap))
            if switch is not None:
                switch()
            elif workdir:
                os.chdir(workdir)

        return preexec

    # -- lifecycle -----------------------------------------------------------------
    async def start(self):
        """Resolve the profile, take GPUs, start the server and wait until it listens.

        Waiting here is the workaround for JupyterHub 6.1.1: when a server dies after
        ``start()`` returned, ``spawn_single_user`` calls ``.exception()`` on a future
        that is not done and the user gets ``InvalidStateError: Exception is not set``.
        Raising from ``start()`` instead goes through JupyterHub's normal failure path,
        and the user sees our message (exit code and log tail).
        """
        self._start_t0 = time.monotonic()
        profile = self._profile()
        loop = asyncio.get_running_loop()
        gpus: list[int] = []
        if profile.gpu:
            got = await loop.run_in_executor(None, self.pool.acquire, self.gpu_owner, profile.gpu)
            if got is None:
                shortage = await loop.run_in_executor(
                    None, self.pool.describe_shortage, profile.gpu
                )
                raise _no_gpu(profile, shortage or "no GPU is free")
            gpus = got
        self._active_profile = profile
        self._gpus = gpus
        if profile.mem_limit:
            self.mem_limit = parse_bytes(profile.mem_limit)
        if profile.mem_guarantee:
            self.mem_guarantee = parse_bytes(profile.mem_guarantee)
        if profile.cpu_limit:
            self.cpu_limit = float(profile.cpu_limit)
        if profile.cpu_guarantee:
            self.cpu_guarantee = float(profile.cpu_guarantee)
        log_path = None
        configured_popen = dict(self.popen_kwargs)
        try:
            if not self.switch_user:
                self.user_dir.mkdir(parents=True, exist_ok=True)
                if not self.notebook_dir:
                    self.notebook_dir = str(self.user_dir)
                if not self.jupyter_news:
                    self._seed_lab_settings()
            if self.server_log_dir:
                log_dir = Path(self.server_log_dir)
                log_dir.mkdir(parents=True, exist_ok=True)
                log_path = (
                    log_dir
                    / f"{_safe_dirname(self.user.name)}{'-' + _safe_dirname(self.name) if self.name else ''}.log"
                )
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "ab", buffering=0) as logf:
                    logf.write(
                        f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting profile {profile.slug}"
                        f" gpus={gpus} ---\n".encode()
                    )
                    self.popen_kwargs = {
                        **configured_popen,
                        "stdout": logf,
                        "stderr": subprocess.STDOUT,
                    }
                    url = await super().start()
            else:
                url = await super().start()
        except BaseException:
            await loop.run_in_executor(None, self.pool.release, self.gpu_owner)
            raise
        finally:
            self.popen_kwargs = configured_popen
        self._log_path = log_path
        await self._wait_listening(log_path)
        return url

    def _seed_lab_settings(self) -> None:
        """A new user's lab starts without the 'fetch Jupyter news?' question (their own
        settings file, written once; later changes are theirs)."""
        path = (
            self.user_dir
            / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension"
            / "notification.jupyterlab-settings"
        )
        if path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"fetchNews": "false", "checkForUpdates": false}\n')
        except OSError as e:
            self.log.warning("could not write lab settings for %s: %s", self.user.name, e)

    async def _wait_listening(self, log_path: Path | None) -> None:
        """Return once the server accepts connections; raise if its process exits first."""
        # Stay inside JupyterHub's start_timeout for start(); after that its own http wait
        # (http_timeout) takes over.
        started = getattr(self, "_start_t0", time.monotonic())
        deadline = min(started + self.start_timeout - 2, time.monotonic() + self.http_timeout)
        delay = 0.05
        while time.monotonic() < deadline:
            status = self.proc.poll() if self.proc is not None else None
            if status is not None:
                tail = _tail(log_path)
                await self.stop(now=True)
                msg = f"Your server exited during start-up (exit code {status})."
                if tail:
                    msg += f" Last lines of its log:\n{tail}"
                elif log_path is None:
                    msg += " See the hub's log for details."
                raise _spawn_error(msg, reason="exited", status=500)
            try:
                _, writer = await asyncio.open_connection(self.ip or "127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.5)
                continue
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            return
        # Not listening yet but alive: let JupyterHub's own http wait take over.

    async def poll(self):
        status = await super().poll()
        if status is not None:
            await self._release_gpus()
        return status

    async def stop(self, now: bool = False):
        try:
            await super().stop(now=now)
        finally:
            await self._release_gpus()

    async def _release_gpus(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self.pool.release, self.gpu_owner
            )
        except (OSError, ValueError) as e:  # pragma: no cover - disk trouble
            self.log.warning("could not release GPUs of %s: %s", self.gpu_owner, e)


def _spawn_error(message: str, *, reason: str, status: int) -> SpawnException:
    exc = SpawnException(message, reason=reason, status_code=status)
    # format_exception() shows jupyterhub_message to the user (form, progress page).
    exc.jupyterhub_message = message
    return exc


def _no_gpu(profile: Profile, shortage: str) -> SpawnException:
    return _spawn_error(
        f"Cannot start '{profile.display_name}': {shortage}. "
        "Pick a CPU profile, or try again when a GPU is released "
        "(servers and training jobs share this machine's GPUs).",
        reason="gpu-unavailable",
        status=409,
    )


def _tail(path: Path | None, lines: int = 15, limit: int = 4000) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    marker = text.rfind("\n--- ")
    if marker >= 0:
        text = text[marker + 1 :].split("\n", 1)[-1]
    return "\n".join(text.strip().splitlines()[-lines:])
