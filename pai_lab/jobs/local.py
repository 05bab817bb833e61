"""Local job backend: each attempt is a runner process owned by the control plane.

Why processes of the control plane (and not of a notebook server): a job must keep
running when the notebook server that submitted it is culled. Every runner is started in
its own session (``start_new_session=True``), so it also survives a SIGKILL of the
control plane; after a restart ``reattach`` finds it again by pid (checked against its
start time, so a recycled pid is never mistaken for the job) or by the ``result.json``
it left behind.

Latency: a pool of *warm* runners (``python -m pai_lab.jobs.runner --warm``) has already
imported papermill and started a kernel; a notebook job takes one instead of paying
~3 s of imports and kernel start. Idle warm runners read their assignment from a pipe,
so they exit by themselves when the control plane goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, Unicode

from ..errors import BackendUnavailable
from ..gpus import GpuPool
from .base import JobBackend, JobRun
from .runner import KERNEL_PIDS, LOGS, METRICS, RESULT, proc_start_time

_PKG_PARENT = str(Path(__file__).resolve().parents[2])
FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out", "lost")


def _pid_alive(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` runs and (when known) started at ``start_time`` (no pid reuse)."""
    if not pid:
        return False
    st = proc_start_time(pid)
    if st is None:
        return False
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False  # a zombie is gone for our purposes
    return start_time is None or st == start_time


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def gpus_needed(run: JobRun) -> int:
    """GPUs per attempt: ``resources.gpu`` if given, else the profile's ``gpu``."""
    res = (run.spec or {}).get("resources") or {}
    if res.get("gpu") is not None:
        return int(res.get("gpu") or 0)
    return int((run.profile or {}).get("gpu") or 0)


class _WarmRunner:
    """One pre-started runner process waiting on its stdin for a run dir."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.ready = False

    def poll_ready(self) -> bool:
        if self.ready:
            return True
        if self.proc.poll() is not None or self.proc.stdout is None:
            return False
        r, _, _ = select.select([self.proc.stdout], [], [], 0)
        if r:
            line = self.proc.stdout.readline()
            self.ready = line.startswith(b"ready")
        return self.ready

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()  # EOF: the runner stops its kernel and exits


class _Attempt:
    """What the backend tracks for one running attempt."""

    def __init__(self, run: JobRun, run_dir: Path, pid: int, start_time: int | None, proc=None):
        self.job_id = run.id
        self.attempt = run.attempt
        self.run = run
        self.run_dir = run_dir
        self.pid = pid
        self.start_time = start_time
        self.proc: subprocess.Popen | None = proc
        self.started = time.time()
        self.cancel_at: float | None = None
        self.killed_for: str | None = None
        self.task: asyncio.Task | None = None
        self.done = asyncio.Event()

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _pid_alive(self.pid, self.start_time)

    def exit_description(self) -> str:
        rc = self.proc.returncode if self.proc is not None else None
        if rc is None:
            return "the runner process vanished without leaving a result"
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = str(-rc)
            return f"runner exited with signal {-rc} ({name}) before writing a result"
        return f"runner exited with code {rc} before writing a result (see runner.log)"


class LocalJobBackend(JobBackend):
    """Runs job attempts as local processes; see the module docstring."""

    cancel_grace = Float(
        10.0,
        help="""Seconds between SIGTERM (the runner interrupts the kernel and saves what
        exists) and SIGKILL of the job's process group on cancel or timeout.""",
    ).tag(config=True)

    warm_pool_size = Int(
        1,
        help="""Warm runners kept ready (papermill imported, kernel started) for notebook
        jobs. Each holds an idle kernel (~60 MB); 0 disables the pool.""",
    ).tag(config=True)

    python = Unicode(
        sys.executable,
        help="Python interpreter that runs jobs (must have pai-lab, papermill and ipykernel).",
    ).tag(config=True)

    kernel_name = Unicode(
        "python3",
        help="Kernel for notebooks whose own kernelspec is not installed here (and for the warm pool).",
    ).tag(config=True)

    timeout_slack = Float(
        30.0,
        help="""Seconds past max_runtime + cancel_grace after which the backend kills a job
        whose runner did not stop it by itself (the runner normally does, at max_runtime).""",
    ).tag(config=True)

    poll_interval = Float(
        0.05,
        help="Seconds between checks of a running attempt (result file, process exit).",
    ).tag(config=True)

    metrics_interval = Float(
        0.5,
        help="Seconds between live metric reports while a job runs.",
    ).tag(config=True)

    keep_work_files = Bool(
        True,
        help="""Keep an ended attempt's work files (work/, outputs/, checkpoints/, ranks/)
        under <data_dir>/runs/<job>/<attempt>/. Everything that matters is uploaded to the
        store; False saves disk. logs.txt, job.json and result.json are always kept.""",
    ).tag(config=True)

    def __init__(self, *, store: Any, report, data_dir: str, **kwargs):
        super().__init__(store=store, report=report, data_dir=str(data_dir), **kwargs)
        self.runs_dir = Path(self.data_dir) / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runs_dir, 0o700)
        self.gpu_pool = GpuPool(self.data_dir)
        self._active: dict[tuple[str, int], _Attempt] = {}
        self._warm: list[_WarmRunner] = []
        self._warm_lock = threading.Lock()
        self._starting: set[tuple[str, int]] = set()
        self._cancel_pending: set[tuple[str, int]] = set()
        self._closed = False
        self._release_stale_gpus()
        self._refill()

    def _release_stale_gpus(self) -> None:
        """GPUs held by job attempts whose runner is gone (ended while nobody watched)."""

        def stale(owner: str) -> bool:
            parts = owner.split(":")
            if len(parts) != 3 or parts[0] != "job":
                return False
            pid = _read_json(self.runs_dir / parts[1] / parts[2] / "pid") or {}
            return not _pid_alive(int(pid.get("pid") or 0), pid.get("start_time"))

        with contextlib.suppress(OSError, ValueError):
            if self.gpu_pool.owners():
                self.gpu_pool.release_where(stale)

    # -- environment ---------------------------------------------------------------
    def _base_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PKG_PARENT, env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        for k in list(env):
            if k.startswith(("PAI_JOB_", "JPY_")) or k in ("PAI_LAB_TOKEN",):
                env.pop(k)
        return env

    # -- warm pool -------------------------------------------------------------------
    def _refill(self) -> None:
        with self._warm_lock:
            self._refill_locked()

    def _refill_locked(self) -> None:
        if self._closed:
            return
        self._warm = [w for w in self._warm if w.alive()]
        warm_dir = self.runs_dir / ".warm"
        warm_dir.mkdir(exist_ok=True)
        while len(self._warm) < self.warm_pool_size:
            env = self._base_env()
            env["CUDA_VISIBLE_DEVICES"] = ""  # GPU jobs never take a warm runner
            with open(warm_dir / "warm.log", "ab") as log:
                proc = subprocess.Popen(
                    [
                        self.python,
                        "-m",
                        "pai_lab.jobs.runner",
                        "--warm",
                        self.kernel_name,
                        str(warm_dir),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=warm_dir,
                    env=env,
                    start_new_session=True,
                )
            self._warm.append(_WarmRunner(proc))

    def _take_warm(self) -> _WarmRunner | None:
        with self._warm_lock:
            self._warm = [w for w in self._warm if w.alive()]
            if not self._warm:
                return None
            ready = [w for w in self._warm if w.poll_ready()]
            w = (ready or self._warm)[0]
            self._warm.remove(w)
            return w

    # -- GPU accounting ------------------------------------------------------------
    @staticmethod
    def _gpu_owner(job_id: str, attempt: int) -> str:
        return f"job:{job_id}:{attempt}"

    def wait_reason(self, run: JobRun) -> str | None:
        n = gpus_needed(run)
        if n <= 0 or self.unavailable_reason(run):
            return None
        if self._gpu_owner(run.id, run.attempt) in self.gpu_pool.owners():
            return None
        return self.gpu_pool.describe_shortage(n)

    def unavailable_reason(self, run: JobRun) -> str | None:
        n = gpus_needed(run)
        if n <= 0:
            return None
        devices = self.gpu_pool.devices()
        if not devices:
            return (
                f"this job needs {n} GPU(s) but this machine has none "
                "(no NVIDIA GPU found by nvidia-smi; PAI_LAB_GPUS lists GPUs explicitly)"
            )
        if n > len(devices):
            return f"this job needs {n} GPUs but this machine has only {len(devices)}"
        return None

    # -- start -----------------------------------------------------------------------
    def run_dir(self, run: JobRun) -> Path:
        return self.runs_dir / run.id / str(run.attempt)

    async def start(self, run: JobRun) -> dict:
        """Write job.json and launch the runner; returns the backend_ref to persist.

        Raises ``BackendUnavailable`` when the GPUs it needs were taken meanwhile (the
        control plane checks ``wait_reason`` first, so this is a lost race).
        """
        loop = asyncio.get_running_loop()
        key = (run.id, run.attempt)
        self._starting.add(key)
        try:
            att, ref = await loop.run_in_executor(None, self._start_sync, run)
        finally:
            self._starting.discard(key)
        self._active[key] = att
        self._supervise(att, ref)
        if key in self._cancel_pending:  # cancelled while its process was being started
            self._cancel_pending.discard(key)
            att.cancel_at = time.time()
            self._kill(att, signal.SIGTERM)
        return ref

    def _start_sync(self, run: JobRun) -> tuple[_Attempt, dict]:
        run_dir = self.run_dir(run)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, mode=0o700)
        n = gpus_needed(run)
        gpus: list[int] = []
        owner = self._gpu_owner(run.id, run.attempt)
        if n > 0:
            got = self.gpu_pool.acquire(owner, n)
            if got is None:
                raise BackendUnavailable(self.gpu_pool.describe_shortage(n) or "no free GPU")
            gpus = got
        try:
            job = {
                "id": run.id,
                "workspace": run.workspace,
                "owner": run.owner,
                "attempt": run.attempt,
                "spec": run.spec,
                "profile": run.profile,
                "store": self.store.to_dict(),
                "env": dict(run.env or {}),
                "kernel_name": self.kernel_name,
                "gpus": gpus,
                "stop_grace": max(1.0, self.cancel_grace / 2),
            }
            fd = os.open(run_dir / "job.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(job, f)
            spec = run.spec or {}
            warm = None
            if (
                "notebook" in (spec.get("source") or {})
                and int(spec.get("workers") or 1) == 1
                and n == 0
            ):
                warm = self._take_warm()
            proc = None
            if warm is not None:
                try:
                    assert warm.proc.stdin is not None
                    warm.proc.stdin.write(f"run {run_dir}\n".encode())
                    warm.proc.stdin.close()
                    proc = warm.proc
                except OSError:
                    warm.stop()
                    proc = None
            if proc is None:
                env = self._base_env()
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
                with open(run_dir / "runner.log", "ab") as log:
                    proc = subprocess.Popen(
                        [self.python, "-m", "pai_lab.jobs.runner", str(run_dir)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        cwd=run_dir,
                        env=env,
                        start_new_session=True,
                    )
        except BaseException:
            if gpus:
                self.gpu_pool.release(owner)
            raise
        start_time = proc_start_time(proc.pid)
        ref = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "start_time": start_time,
            "run_dir": str(run_dir),
            "started_at": time.time(),
            "gpus": gpus,
            "warm": warm is not None and proc is warm.proc,
        }
        return _Attempt(run, run_dir, proc.pid, start_time, proc=proc), ref

    # -- supervision -----------------------------------------------------------------
    def _supervise(self, att: _Attempt, ref: dict | None, reattached: bool = False) -> None:
        att.task = asyncio.ensure_future(self._supervise_task(att, ref, reattached))

    async def _supervise_task(self, att: _Attempt, ref: dict | None, reattached: bool) -> None:
        loop = asyncio.get_running_loop()
        job_id, attempt = att.job_id, att.attempt
        try:
            await self.report(
                job_id, attempt, state="running", **({"backend_ref": ref} if ref else {})
            )
            max_rt = (att.run.spec or {}).get("max_runtime")
            started_at = float((att.run.backend_ref or {}).get("started_at") or att.started)
            if ref:
                started_at = float(ref.get("started_at") or started_at)
            metrics_path = att.run_dir / METRICS
            last_metrics_size = -1
            last_metrics_check = 0.0
            result: dict | None = None
            result_path = att.run_dir / RESULT

            def tick() -> tuple[dict | None, bool, int]:
                """File and process checks, off the event loop: (result, alive, metrics size)."""
                res = _read_json(result_path) if result_path.exists() else None
                alive = att.alive() if res is None else True
                if res is None and not alive:
                    res = _read_json(result_path)  # written just before the exit
                try:
                    size = metrics_path.stat().st_size
                except OSError:
                    size = -1
                return res, alive, size

            while True:
                result, alive, size = await loop.run_in_executor(None, tick)
                if result is not None and result.get("state"):
                    break
                if not alive:
                    break
                now = time.time()
                if now - last_metrics_check >= self.metrics_interval:
                    last_metrics_check = now
                    if size != last_metrics_size and size > 0:
                        last_metrics_size = size
                        from ..tracking import read_metrics_file

                        metrics = await loop.run_in_executor(
                            None, read_metrics_file, str(metrics_path)
                        )
                        await self.report(job_id, attempt, metrics=metrics)
                # backstop: the runner enforces max_runtime itself (it may be busy
                # importing when the deadline passes); if it has not ended well after
                # that, the backend kills the whole process group
                if (
                    max_rt
                    and att.killed_for is None
                    and now > started_at + max_rt + self.cancel_grace + self.timeout_slack
                ):
                    att.killed_for = "timed_out"
                    self._kill(att, signal.SIGKILL)
                if att.cancel_at is not None and att.killed_for is None:
                    if now > att.cancel_at + self.cancel_grace:
                        att.killed_for = "cancelled"
                        self._kill(att, signal.SIGKILL)
                await asyncio.sleep(self.poll_interval)
            fields: dict[str, Any]
            if result is not None and result.get("state") in FINAL_STATES:
                fields = {"state": result["state"], "exit_reason": result.get("exit_reason")}
                if result.get("metrics") is not None:
                    fields["metrics"] = result["metrics"]
                if result.get("environment"):
                    fields["environment"] = result["environment"]
            elif att.cancel_at is not None or att.killed_for == "cancelled":
                fields = {"state": "cancelled", "exit_reason": "cancelled"}
            elif att.killed_for == "timed_out":
                fields = {
                    "state": "timed_out",
                    "exit_reason": f"exceeded max_runtime of {max_rt} s",
                }
            elif reattached and att.proc is None:
                fields = {
                    "state": "lost",
                    "exit_reason": "the job's process ended without leaving a result",
                }
            else:
                # a process we own: give the kernel a moment to reap and read rc
                if att.proc is not None:
                    with contextlib.suppress(Exception):
                        await loop.run_in_executor(None, att.proc.wait, 5)
                fields = {"state": "failed", "exit_reason": att.exit_description()}
            if result is None:
                # the runner was killed before it could upload: keep the logs anyway
                await loop.run_in_executor(None, self._salvage, att)
                from ..tracking import read_metrics_file

                metrics = read_metrics_file(str(metrics_path))
                if metrics:
                    fields["metrics"] = metrics
            await self.report(job_id, attempt, **fields)
            await self._cleanup(att)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never let a supervisor die silently
            self.log.exception("supervising job %s attempt %s failed", job_id, attempt)
            with contextlib.suppress(Exception):
                await self.report(
                    job_id, attempt, state="failed", exit_reason=f"backend error: {e}"
                )
            with contextlib.suppress(Exception):
                await self._cleanup(att)
        finally:
            att.done.set()

    def _salvage(self, att: _Attempt) -> None:
        """Upload what a killed runner left (logs, partial notebook) to the store."""
        try:
            ws = self.store.workspace(att.run.workspace)
            for name, target in ((LOGS, "logs.txt"), ("output.ipynb", "output.ipynb")):
                path = att.run_dir / name
                if path.exists():
                    ws.put_file_sync(path, f"jobs/{att.job_id}/{target}")
        except Exception:  # noqa: BLE001 - best effort; the state report matters more
            self.log.warning("could not upload the logs of job %s", att.job_id, exc_info=True)

    async def _cleanup(self, att: _Attempt) -> None:
        """After the final report: reap the process, stray kernels, GPUs; refill the pool."""
        loop = asyncio.get_running_loop()
        deadline = time.time() + 5
        while att.alive() and time.time() < deadline:
            await asyncio.sleep(0.05)
        if att.alive():
            self._kill(att, signal.SIGKILL)
        self._kill_kernels(att.run_dir, signal.SIGKILL)
        if att.proc is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, att.proc.wait, 5)
            if att.proc.stdout is not None:  # a warm runner's "ready" pipe
                att.proc.stdout.close()
            if att.proc.returncode is not None:
                # just reaped by us, so the group id is still the job's: stop any stray
                # process the job left in its group (e.g. a child of a killed rank)
                _killpg(att.pid, signal.SIGKILL)
        self.gpu_pool.release(self._gpu_owner(att.job_id, att.attempt))
        if not self.keep_work_files:
            for name in ("work", "outputs", "checkpoints", "ranks"):
                await loop.run_in_executor(
                    None, partial(shutil.rmtree, att.run_dir / name, ignore_errors=True)
                )
        self._active.pop((att.job_id, att.attempt), None)
        self._refill()

    def _kill(self, att: _Attempt, sig: int) -> None:
        if att.alive():
            _killpg(att.pid, sig)
        if sig == signal.SIGKILL:
            self._kill_kernels(att.run_dir, sig)

    @staticmethod
    def _kill_kernels(run_dir: Path, sig: int) -> None:
        """Kernels lead their own session (jupyter_client): signal them by pid."""
        try:
            pids = (run_dir / KERNEL_PIDS).read_text().split()
        except OSError:
            return
        for p in pids:
            if p.isdigit() and int(p) > 1:
                _killpg(int(p), sig)

    # -- public API ------------------------------------------------------------------
    async def cancel(self, run: JobRun) -> None:
        """SIGTERM the attempt's process group now; SIGKILL after ``cancel_grace``.

        Returns once the signal is sent; the supervisor reports ``cancelled`` when the
        process is gone (the runner saves the notebook and logs first).
        """
        key = (run.id, run.attempt)
        if key in self._starting:
            self._cancel_pending.add(key)
            return
        att = self._active.get(key)
        if att is None:
            ref = run.backend_ref or {}
            pid, st = int(ref.get("pid") or 0), ref.get("start_time")
            if pid and _pid_alive(pid, st):
                att = _Attempt(run, Path(ref.get("run_dir") or self.run_dir(run)), pid, st)
                self._active[(run.id, run.attempt)] = att
                self._supervise(att, None, reattached=True)
            else:
                await self.report(run.id, run.attempt, state="cancelled", exit_reason="cancelled")
                self.gpu_pool.release(self._gpu_owner(run.id, run.attempt))
                return
        if att.cancel_at is None:
            att.cancel_at = time.time()
            self._kill(att, signal.SIGTERM)

    async def reattach(self, run: JobRun) -> None:
        """Follow an attempt started by an earlier control plane (see module docstring)."""
        if (run.id, run.attempt) in self._active:
            return
        ref = dict(run.backend_ref or {})
        run_dir = Path(ref.get("run_dir") or self.run_dir(run))
        if not ref.get("pid"):
            pid_file = _read_json(run_dir / "pid") or {}
            ref.setdefault("pid", pid_file.get("pid"))
            ref.setdefault("start_time", pid_file.get("start_time"))
        pid = int(ref.get("pid") or 0)
        start_time = ref.get("start_time")
        if ref.get("gpus"):
            # keep the reservation on record while the job still runs
            self.gpu_pool.acquire(self._gpu_owner(run.id, run.attempt), len(ref["gpus"]))
        att = _Attempt(run, run_dir, pid, start_time)
        if not (run_dir / RESULT).exists() and not _pid_alive(pid, start_time):
            await self.report(
                run.id,
                run.attempt,
                state="lost",
                exit_reason="the job's process vanished while the control plane was down",
            )
            self._kill_kernels(run_dir, signal.SIGKILL)
            self.gpu_pool.release(self._gpu_owner(run.id, run.attempt))
            return
        self._active[(run.id, run.attempt)] = att
        self._supervise(att, None, reattached=True)

    async def live_logs(self, run: JobRun, offset: int = 0) -> AsyncIterator[bytes] | None:
        """Bytes of the attempt's local ``logs.txt`` from ``offset`` up to its current end."""
        ref = run.backend_ref or {}
        path = Path(ref.get("run_dir") or self.run_dir(run)) / LOGS
        if not path.exists():
            return None

        def read(pos: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(pos)
                return f.read(1 << 16)

        async def gen() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            pos = max(0, int(offset))
            while True:
                chunk = await loop.run_in_executor(None, read, pos)
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk

        return gen()

    def is_active(self, run: JobRun) -> bool:
        """True while this backend supervises the attempt."""
        return (run.id, run.attempt) in self._active

    async def wait(self, run: JobRun, timeout: float | None = None) -> bool:
        """Wait until the attempt's final state is reported and its processes are gone."""
        att = self._active.get((run.id, run.attempt))
        if att is None:
            return True
        try:
            await asyncio.wait_for(att.done.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def shutdown(self) -> None:
        """Stop supervising and stop idle warm runners; running jobs keep running."""
        self._closed = True
        for att in list(self._active.values()):
            if att.task is not None:
                att.task.cancel()
        for att in list(self._active.values()):
            if att.task is not None:
                with contextlib.suppress(BaseException):
                    await att.task
        self._active.clear()
        warm, self._warm = self._warm, []
        for w in warm:
            w.stop()
        deadline = time.time() + 5
        for w in warm:
            while w.alive() and time.time() < deadline:
                await asyncio.sleep(0.05)
            if w.alive():
                _killpg(w.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, w.proc.wait, 2)
            if w.proc.stdout is not None:
                w.proc.stdout.close()
