"""The process inside a local job: ``python -m pai_lab.jobs.runner <run-dir>``.

It reads ``<run-dir>/job.json`` (written by the backend), fetches the job's input from
the artifact store into ``<run-dir>/work/``, runs it (a notebook through papermill in a
Jupyter kernel, a script with python, or a command as given), and leaves behind in the
run dir what the backend and the control plane need even if the control plane was down
the whole time: ``logs.txt`` (appended live), ``metrics.jsonl``, ``environment.json``,
``output.ipynb`` (also when a cell raised) and, written last, ``result.json``. Outputs,
logs, metrics and the environment are uploaded to ``jobs/<id>/`` in the store.

``--warm`` starts a *warm* runner: it pays papermill's imports and a kernel start before
any job exists, then waits for one run dir on stdin. That is what makes a short job cost
about as much as ``python train.py`` (see ``benchmarks/job_overhead.py``).

Only the standard library is imported at module level: the cold path is latency-critical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

RESULT = "result.json"
LOGS = "logs.txt"
METRICS = "metrics.jsonl"
ENVIRONMENT = "environment.json"
OUTPUT_NB = "output.ipynb"
KERNEL_PIDS = "kernel.pid"

#: seconds between SIGINT to a kernel (or SIGTERM to a script) and SIGKILL on cancel
STOP_GRACE = float(os.environ.get("PAI_RUNNER_STOP_GRACE", "5"))
#: seconds between periodic checkpoint uploads
CHECKPOINT_INTERVAL = float(os.environ.get("PAI_CHECKPOINT_INTERVAL", "60"))
#: seconds between GPU utilisation/memory samples (when the job has GPUs and nvidia-smi)
GPU_SAMPLE_INTERVAL = float(os.environ.get("PAI_GPU_SAMPLE_INTERVAL", "10"))


def nvidia_smi(args: list[str]) -> list[list[str]]:
    """Rows of ``nvidia-smi --format=csv,noheader,nounits`` output, or [] without it."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, *args, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def job_gpus() -> list[str]:
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)\b.*)$")


def _lean_imports() -> None:
    """Keep jsonschema from building the rfc3987 grammar (~1.5 s) when nbformat loads.

    nbformat validates notebooks with jsonschema but never needs the IRI format
    checker; jsonschema imports ``rfc3987_syntax`` only if it is importable.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to detect pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return int(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_running(pid: int | None) -> bool:
    """``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class LogSink:
    """Thread-safe appender to ``logs.txt`` (optionally prefixing every line)."""

    def __init__(self, path: Path, prefix: str = ""):
        self._f = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._lock = threading.Lock()
        self.prefix = prefix
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not text:
            return 0
        if self.prefix:
            out = []
            for piece in text.splitlines(keepends=True):
                if self._at_line_start:
                    out.append(self.prefix)
                out.append(piece)
                self._at_line_start = piece.endswith(("\n", "\r"))
            text = "".join(out)
        with self._lock:
            self._f.write(text)
            self._f.flush()
        return len(text)

    def line(self, msg: str) -> None:
        self.write(f"[pai-lab] {msg}\n")

    def flush(self) -> None:
        with self._lock:
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


# ----------------------------------------------------------------------------------
# Kernel execution (papermill) in a dedicated thread
# ----------------------------------------------------------------------------------


class KernelWorker:
    """Owns one Jupyter kernel and executes one notebook on it, in its own thread.

    nbclient installs SIGTERM handlers when run on the main thread; running it here
    keeps the runner's main thread free to handle cancel/timeout and to interrupt or
    kill the kernel. A warm runner starts the kernel before a job is known.
    """

    def __init__(self, kernel_name: str, cwd: str, env: dict | None = None):
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.env = env
        self.km: Any = None
        self.kc: Any = None
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self._tasks: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="pai-kernel", daemon=True)
        self._thread.start()

    @property
    def kernel_pid(self) -> int | None:
        try:
            return self.km.provisioner.process.pid
        except AttributeError:
            return None

    def _main(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            from jupyter_client.manager import AsyncKernelManager

            km = AsyncKernelManager(kernel_name=self.kernel_name)
            env = dict(self.env if self.env is not None else os.environ)
            env.pop("JPY_PARENT_PID", None)
            run_sync(km.start_kernel)(cwd=self.cwd, env=env)
            self.km = km
            kc = km.client()
            kc.start_channels()
            run_sync(kc.wait_for_ready)(timeout=60)
            self.kc = kc
        except BaseException as e:  # noqa: BLE001 - reported to the job
            self.start_error = e
        finally:
            self.ready.set()
        while True:
            fn, box = self._tasks.get()
            if fn is None:
                break
            try:
                box["result"] = fn()
            except BaseException as e:  # noqa: BLE001
                box["error"] = e
            finally:
                box["done"].set()
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km is not None:
                run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:
            pass

    def submit(self, fn) -> dict:
        box: dict = {"done": threading.Event()}
        self._tasks.put((fn, box))
        return box

    def stop(self, wait: float = 5.0) -> None:
        self._tasks.put((None, None))
        self._thread.join(wait)
        self.kill()

    def signal_kernel(self, sig: int) -> None:
        pid = self.kernel_pid
        if pid:
            with contextlib.suppress(OSError):
                os.killpg(pid, sig)  # the kernel leads its own session

    def kill(self) -> None:
        self.signal_kernel(signal.SIGKILL)


_ENGINE_REGISTERED = False


def register_engine() -> None:
    """Register papermill engine ``pai``: a pre-started kernel, live logs, errors in logs."""
    global _ENGINE_REGISTERED
    if _ENGINE_REGISTERED:
        return
    _lean_imports()
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class PaiNotebookClient(PapermillNotebookClient):
        def __init__(self, nb_man, km=None, kc=None, setup_code=None, **kw):
            super().__init__(nb_man, km=km, **kw)
            self.kc = kc
            self.setup_code = setup_code

        def papermill_execute_cells(self):
            if self.setup_code:
                reply = self.wait_for_reply(
                    self.kc.execute(self.setup_code, silent=True, store_history=False)
                )
                content = (reply or {}).get("content", {})
                if content.get("status") != "ok":
                    raise RuntimeError(
                        "could not prepare the kernel: "
                        f"{content.get('ename')}: {content.get('evalue')}"
                    )
            super().papermill_execute_cells()

        def log_output_message(self, output):
            if output.output_type == "error" and self.stderr_file:
                tb = "\n".join(output.get("traceback") or [])
                text = _ANSI.sub("", tb) or f"{output.get('ename')}: {output.get('evalue')}"
                self.stderr_file.write(text.rstrip("\n") + "\n")
                self.stderr_file.flush()
                return
            super().log_output_message(output)

    class PaiEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            **kwargs,
        ):
            import logging

            kwargs.pop("input_path", None)
            client = PaiNotebookClient(
                nb_man,
                km=kwargs.pop("km", None),
                kc=kwargs.pop("kc", None),
                setup_code=kwargs.pop("setup_code", None),
                kernel_name=kernel_name,
                log=logging.getLogger("papermill"),
                log_output=False,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                startup_timeout=start_timeout,
                timeout=execution_timeout,
                shutdown_kernel="immediate",
                **kwargs,
            )
            return client.execute()

    papermill_engines.register("pai", PaiEngine)
    _ENGINE_REGISTERED = True


def resolve_kernel_name(nb_path: Path, default: str) -> str:
    """The notebook's kernel if it is installed here, else ``default``."""
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        name = ((nb.get("metadata") or {}).get("kernelspec") or {}).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    if not name or name == default:
        return default
    try:
        from jupyter_client.kernelspec import find_kernel_specs

        return name if name in find_kernel_specs() else default
    except Exception:
        return default


# ----------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------


class Runner:
    """Runs one attempt described by ``<run_dir>/job.json``; see the module docstring."""

    def __init__(
        self, run_dir: str | os.PathLike, warm: KernelWorker | None = None, rank: int | None = None
    ):
        self.run_dir = Path(run_dir).resolve()
        self.job = json.loads((self.run_dir / "job.json").read_text())
        self.spec = self.job.get("spec") or {}
        # rank_mode: one rank of a local distributed job, started by the launcher runner
        # (on Kubernetes every pod is a full runner and job.json carries rank/world_size)
        self.rank_mode = rank is not None
        if self.rank_mode:
            self.rank, self.world = int(rank), int(self.spec.get("workers") or 1)
        else:
            self.rank = int(self.job.get("rank", 0))
            self.world = int(self.job.get("world_size", 1))
        self.launcher = (
            not self.rank_mode and "rank" not in self.job and int(self.spec.get("workers") or 1) > 1
        )
        self.rank_dir = (
            self.run_dir / "ranks" / str(self.rank)
            if self.rank_mode and self.rank > 0
            else self.run_dir
        )
        self.warm = warm
        self.work = self.rank_dir / "work"
        self.output_dir = self.rank_dir / "outputs"
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.launcher:
            self.world = int(self.spec.get("workers") or 1)
        self.logs = LogSink(
            self.run_dir / LOGS,
            prefix=f"[rank {self.rank}] " if self.world > 1 and not self.launcher else "",
        )
        self.stop_state: str | None = None  # "cancelled" | "timed_out"
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._finished = threading.Event()
        self.started = time.time()
        self.env_info: dict = {}
        self.timings: dict[str, float] = {}
        self._env_thread: threading.Thread | None = None
        self._ws = None
        # the backend SIGKILLs after its grace period: stop the code in half of it
        self.stop_grace = float(self.job.get("stop_grace") or STOP_GRACE)

    # -- helpers ---------------------------------------------------------------------
    @property
    def ws(self):
        if self._ws is None:
            _lean_imports()
            from pai_lab.storage import ArtifactStore

            store = ArtifactStore.from_dict(self.job["store"])
            self._ws = store.workspace(self.job["workspace"])
        return self._ws

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job['id']}"

    def job_env(self) -> dict:
        env = {
            "PAI_JOB_ID": str(self.job["id"]),
            "PAI_WORKSPACE": str(self.job["workspace"]),
            "PAI_LAB_WORKSPACE": str(self.job["workspace"]),  # PaiClient() in a job
            "PAI_ATTEMPT": str(self.job.get("attempt", 1)),
            "PAI_OUTPUT_DIR": str(self.output_dir),
            "PAI_METRICS_FILE": str(
                self.run_dir / (METRICS if self.rank == 0 else f"metrics.rank{self.rank}.jsonl")
            ),
            "PAI_CHECKPOINT_DIR": str(self.ckpt_dir),
            "PYTHONUNBUFFERED": "1",
        }
        if self.rank_mode:
            env.update(
                {
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(self.job.get("master_port")),
                    "WORLD_SIZE": str(self.world),
                    "RANK": str(self.rank),
                    "LOCAL_RANK": str(self.rank),
                    "LOCAL_WORLD_SIZE": str(self.world),
                    "GROUP_RANK": "0",
                }
            )
        env.update({k: str(v) for k, v in (self.job.get("env") or {}).items()})
        env.update({k: str(v) for k, v in (self.spec.get("env") or {}).items()})
        return env

    def request_stop(self, state: str, reason: str) -> None:
        if self.stop_state is None:
            self.stop_state, self.stop_reason = state, reason
        self._stop.set()

    def _write_json(self, name: str, data: Any, mode: int = 0o644) -> None:
        tmp = self.run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.chmod(tmp, mode)
        os.replace(tmp, self.run_dir / name)

    # -- phases ----------------------------------------------------------------------
    def fetch_inputs(self) -> Path | None:
        """Input files from the store into work/; returns the notebook/script path."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        source = self.spec.get("source") or {}
        target = None
        if "notebook" in source or "script" in source:
            kind = "notebook" if "notebook" in source else "script"
            name = os.path.basename(source[kind].replace("\\", "/"))
            if name in ("", ".", ".."):
                name = "input.ipynb" if kind == "notebook" else "input.py"
            if kind == "notebook" and not name.endswith(".ipynb"):
                name += ".ipynb"
            target = self.work / name
            self.ws.get_file_sync(
                f"{self.prefix}/input.{'ipynb' if kind == 'notebook' else 'py'}", target
            )
        if self.ws.exists_sync(f"{self.prefix}/files"):
            self.ws.get_dir_sync(f"{self.prefix}/files", self.work)
        if self.ws.exists_sync(f"{self.prefix}/checkpoints"):
            self.ws.get_dir_sync(f"{self.prefix}/checkpoints", self.ckpt_dir)
            self.logs.line("restored checkpoints of the previous attempt")
        return target

    def capture_environment(self, source_path: Path | None) -> None:
        def work():
            from importlib import metadata

            pkgs = {}
            for d in metadata.distributions():
                name = d.metadata.get("Name") if d.metadata else None
                if name:
                    pkgs[name] = d.version
            info = {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "executable": sys.executable,
                "platform": platform.platform(),
                "hostname": socket.gethostname(),
                "packages": dict(sorted(pkgs.items(), key=lambda kv: kv[0].lower())),
                "gpus": job_gpus(),
                "image": os.environ.get("PAI_IMAGE", ""),
                "workers": self.world,
            }
            if source_path is not None and source_path.exists():
                sha = hashlib.sha256(source_path.read_bytes()).hexdigest()
                key = "notebook_sha256" if source_path.suffix == ".ipynb" else "script_sha256"
                info[key] = sha
            if job_gpus():
                rows = nvidia_smi(
                    ["--query-gpu=index,name,memory.total", "-i", ",".join(job_gpus())]
                )
                info["gpu_devices"] = [
                    {"index": r[0], "name": r[1], "memory_total_mib": _num(r[2])}
                    for r in rows
                    if len(r) >= 3
                ]
            with contextlib.suppress(Exception):
                from pai_lab import __version__

                info["pai_lab"] = __version__
            self.env_info = info
            if self.rank == 0:
                self._write_json(ENVIRONMENT, info)

        self._env_thread = threading.Thread(target=work, name="pai-env", daemon=True)
        self._env_thread.start()

    def _wait(self, is_done, on_stop) -> None:
        """Poll until ``is_done()``; enforce max_runtime; on stop call ``on_stop(force)``."""
        max_runtime = self.spec.get("max_runtime")
        deadline = self.started + max_runtime if max_runtime else None
        stopping_since: float | None = None
        last_signal = 0.0
        killed = False
        last_ckpt = time.monotonic()
        while not is_done():
            if deadline and time.time() > deadline and not self._stop.is_set():
                self.request_stop("timed_out", f"exceeded max_runtime of {max_runtime} s")
            if self._stop.is_set():
                now = time.monotonic()
                if stopping_since is None:
                    stopping_since = last_signal = now
                    self.logs.line(f"stopping: {self.stop_reason}")
                    on_stop(False)
                elif now - stopping_since > self.stop_grace:
                    if not killed:
                        on_stop(True)
                        killed = True
                elif now - last_signal > 0.5:
                    # an interrupt that lands between two cells interrupts nothing: repeat
                    last_signal = now
                    on_stop(False)
            if time.monotonic() - last_ckpt > CHECKPOINT_INTERVAL:
                last_ckpt = time.monotonic()
                self.upload_checkpoints(quiet=True)
            self._stop.wait(0.05) if not self._stop.is_set() else time.sleep(0.05)

    def run_notebook(self, nb_path: Path) -> tuple[str, str | None]:
        _lean_imports()
        register_engine()
        import papermill as pm

        kernel_name = resolve_kernel_name(nb_path, self.job.get("kernel_name") or "python3")
        env = self.job_env()
        worker = self.warm
        if worker is not None and worker.ready.is_set() and not pid_running(worker.kernel_pid):
            self.logs.line("the pre-started kernel had died; starting a new one")
            worker.stop(0.5)
            worker = None
        if worker is not None and worker.kernel_name != kernel_name:
            worker.stop(0.5)
            worker = None
        if worker is None:
            worker = KernelWorker(kernel_name, str(self.work), env={**os.environ, **env})
        self.worker = worker
        max_runtime = self.spec.get("max_runtime")
        while not worker.ready.wait(0.05):
            if max_runtime and time.time() > self.started + max_runtime:
                self.request_stop("timed_out", f"exceeded max_runtime of {max_runtime} s")
            if self._stop.is_set():
                worker.kill()
                return self.stop_state, self.stop_reason
        self.timings["kernel_ready"] = time.time()
        if worker.start_error is not None:
            e = worker.start_error
            return "failed", f"kernel {kernel_name!r} did not start: {type(e).__name__}: {e}"
        with open(self.run_dir / KERNEL_PIDS, "a") as f:  # the backend's last-resort kill list
            f.write(f"{worker.kernel_pid}\n")
        setup = (
            "import os as _o, sys as _s\n"
            f"_o.chdir({str(self.work)!r})\n"
            f"_o.environ.update({env!r})\n"
            f"_s.path.insert(0, {str(self.work)!r})\n"
            "del _o, _s\n"
        )
        output = self.rank_dir / OUTPUT_NB

        def execute():
            return pm.execute_notebook(
                str(nb_path),
                str(output),
                parameters=self.spec.get("parameters") or {},
                engine_name="pai",
                kernel_name=kernel_name,
                progress_bar=False,
                log_output=False,
                stdout_file=self.logs,
                stderr_file=self.logs,
                km=worker.km,
                kc=worker.kc,
                setup_code=setup,
            )

        box = worker.submit(execute)
        self.timings["executing"] = time.time()

        def on_stop(force: bool) -> None:
            worker.signal_kernel(signal.SIGKILL if force else signal.SIGINT)

        self._wait(box["done"].is_set, on_stop)
        err = box.get("error")
        if self.stop_state:
            return self.stop_state, self.stop_reason
        if err is None:
            return "succeeded", None
        from papermill.exceptions import PapermillExecutionError

        if isinstance(err, PapermillExecutionError):
            return "failed", f"{err.ename}: {err.evalue}"
        name = type(err).__name__
        if name == "DeadKernelError":
            return "failed", "the kernel died (out of memory, or the process was killed)"
        self.logs.write("".join(traceback.format_exception(err)))
        return "failed", f"{name}: {err}"

    def run_process(self, argv: list[str]) -> tuple[str, str | None]:
        env = {**os.environ, **self.job_env()}
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError:
            return "failed", f"command not found: {argv[0]}"
        except OSError as e:
            return "failed", f"could not start {argv[0]}: {e.strerror or e}"
        tail: list[str] = []
        saw_traceback = [False]

        def pump():
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                self.logs.write(line)
                if line.startswith("Traceback (most recent call last)"):
                    saw_traceback[0] = True
                if line.strip():
                    tail.append(line.rstrip("\n"))
                    del tail[:-50]

        reader = threading.Thread(target=pump, name="pai-pump", daemon=True)
        reader.start()

        def on_stop(force: bool) -> None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGKILL if force else signal.SIGTERM)

        self._wait(lambda: proc.poll() is not None, on_stop)
        reader.join(5)
        if self.stop_state:
            return self.stop_state, self.stop_reason
        rc = proc.returncode
        if rc == 0:
            return "succeeded", None
        if saw_traceback[0]:
            for line in reversed(tail):
                m = _EXC_LINE.match(line)
                if m:
                    return "failed", m.group(1)
        if rc < 0:
            with contextlib.suppress(ValueError):
                return "failed", f"killed by signal {signal.Signals(-rc).name}"
        return "failed", f"exited with code {rc}"

    def sample_gpus(self) -> None:
        """Record GPU utilisation and memory as job metrics while the job runs."""
        gpus = job_gpus()
        if self.rank != 0 or not gpus or not shutil.which("nvidia-smi"):
            return
        path = self.run_dir / METRICS

        def loop() -> None:
            step = 0
            while not self._finished.wait(GPU_SAMPLE_INTERVAL if step else 0.2):
                rows = nvidia_smi(
                    ["--query-gpu=index,utilization.gpu,memory.used", "-i", ",".join(gpus)]
                )
                now = time.time()
                with open(path, "a", encoding="utf-8") as f:
                    for r in rows:
                        if len(r) < 3:
                            continue
                        for name, val in (("utilization", r[1]), ("memory_used_mib", r[2])):
                            v = _num(val)
                            if v is not None:
                                rec = {
                                    "name": f"gpu{r[0]}_{name}",
                                    "value": v,
                                    "step": step,
                                    "time": now,
                                }
                                f.write(json.dumps(rec) + "\n")
                step += 1

        threading.Thread(target=loop, name="pai-gpu-metrics", daemon=True).start()

    def upload_checkpoints(self, quiet: bool = False) -> None:
        if self.rank != 0 or not self.ckpt_dir.is_dir() or not any(self.ckpt_dir.iterdir()):
            return
        try:
            self.ws.put_dir_sync(self.ckpt_dir, f"{self.prefix}/checkpoints")
        except Exception as e:
            if not quiet:
                self.logs.line(f"could not upload checkpoints: {e}")

    def finish(self, state: str, reason: str | None, source_path: Path | None) -> dict:
        """Save and upload everything, then write result.json (last)."""
        problems: list[str] = []
        self._finished.set()
        self.timings["executed"] = time.time()
        if self._env_thread is not None:
            self._env_thread.join(30)
        metrics = []
        if self.rank == 0:
            from pai_lab.tracking import read_metrics_file

            metrics = read_metrics_file(str(self.run_dir / METRICS))
            self._write_json("metrics.json", metrics)
        uploads: list[tuple[Path, str]] = []
        if self.rank == 0:
            out_nb = self.run_dir / OUTPUT_NB
            if source_path is not None and source_path.suffix == ".ipynb" and not out_nb.exists():
                with contextlib.suppress(OSError):
                    shutil.copyfile(source_path, out_nb)
            if out_nb.exists():
                uploads.append((out_nb, f"{self.prefix}/output.ipynb"))
            uploads.append((self.run_dir / "metrics.json", f"{self.prefix}/metrics.json"))
            if (self.run_dir / ENVIRONMENT).exists():
                uploads.append((self.run_dir / ENVIRONMENT, f"{self.prefix}/environment.json"))
            for rel in self.spec.get("outputs") or []:
                p = self.work / rel
                if p.is_file():
                    uploads.append((p, f"{self.prefix}/outputs/{rel}"))
                elif p.is_dir():
                    uploads.append((p, f"{self.prefix}/outputs/{rel}/"))
                elif state == "succeeded":
                    problems.append(f"declared output {rel!r} was not produced")
            if self.output_dir.is_dir() and any(self.output_dir.iterdir()):
                uploads.append((self.output_dir, f"{self.prefix}/outputs/"))
        try:
            for local, target in uploads:
                if target.endswith("/"):
                    self.ws.put_dir_sync(local, target.rstrip("/"))
                else:
                    self.ws.put_file_sync(local, target)
        except Exception as e:
            problems.append(f"could not upload outputs: {e}")
        self.upload_checkpoints()
        if problems and state == "succeeded":
            state, reason = "failed", "; ".join(problems)
        for p in problems:
            self.logs.line(p)
        self.logs.line(f"attempt {state}" + (f": {reason}" if reason else ""))
        if self.rank == 0:
            with contextlib.suppress(Exception):
                self.ws.put_file_sync(self.run_dir / LOGS, f"{self.prefix}/logs.txt")
        result = {
            "state": state,
            "exit_reason": reason,
            "started": self.started,
            "finished": time.time(),
            "metrics": metrics,
            "environment": self.env_info,
            "rank": self.rank,
            "timings": {k: round(v - self.started, 3) for k, v in self.timings.items()},
        }
        self._write_json(RESULT, result)
        return result

    def run(self) -> dict:
        """Run the attempt; never raises (a failure becomes result.json)."""
        if not self.rank_mode:
            self._write_json(
                "pid", {"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}
            )
        source_path = None
        try:
            self.logs.line(
                f"job {self.job['id']} attempt {self.job.get('attempt', 1)} "
                f"on {socket.gethostname()}"
                + (f" (rank {self.rank} of {self.world})" if self.world > 1 else "")
            )
            source = self.spec.get("source") or {}
            if self.rank_mode:
                return self.run_rank()
            source_path = self.fetch_inputs()
            self.timings["fetched"] = time.time()
            self.capture_environment(source_path)
            self.sample_gpus()
            if self._stop.is_set():
                state, reason = self.stop_state, self.stop_reason
            elif self.launcher:
                state, reason = self.run_distributed(source_path)
            elif "notebook" in source:
                state, reason = self.run_notebook(source_path)
            elif "script" in source:
                state, reason = self.run_process([sys.executable, "-u", str(source_path)])
            else:
                state, reason = self.run_process(list(source["command"]))
        except Exception as e:  # noqa: BLE001 - the job must end with a result
            self.logs.write(traceback.format_exc())
            state, reason = "failed", f"{type(e).__name__}: {e}"
        try:
            return self.finish(state, reason, source_path)
        except Exception as e:  # noqa: BLE001
            self.logs.write(traceback.format_exc())
            result = {"state": "failed", "exit_reason": f"runner error: {type(e).__name__}: {e}"}
            self._write_json(RESULT, result)
            return result

    # -- local distributed execution --------------------------------------------------
    def rank_source(self) -> Path | None:
        source = self.spec.get("source") or {}
        for kind in ("notebook", "script"):
            if kind in source:
                name = os.path.basename(source[kind].replace("\\", "/"))
                if name in ("", ".", ".."):
                    name = "input.ipynb" if kind == "notebook" else "input.py"
                if kind == "notebook" and not name.endswith(".ipynb"):
                    name += ".ipynb"
                return self.work / name
        return None

    def run_rank(self) -> dict:
        """One rank: run the already fetched input; leave result.rank<N>.json."""
        source = self.spec.get("source") or {}
        path = self.rank_source()
        try:
            if "notebook" in source:
                state, reason = self.run_notebook(path)
            elif "script" in source:
                state, reason = self.run_process([sys.executable, "-u", str(path)])
            else:
                state, reason = self.run_process(list(source["command"]))
        except Exception as e:  # noqa: BLE001
            self.logs.write(traceback.format_exc())
            state, reason = "failed", f"{type(e).__name__}: {e}"
        result = {"state": state, "exit_reason": reason, "rank": self.rank}
        self._write_json(f"result.rank{self.rank}.json", result)
        return result

    def run_distributed(self, source_path: Path | None) -> tuple[str, str | None]:
        """``workers`` ranks on this machine, torchrun-style env; rank 0 owns outputs.

        Every rank runs the same input in its own copy of the work dir (rank 0's is the
        job's), with its log lines prefixed ``[rank N]``; the first rank to fail fails the
        job with its own error and the others are stopped.
        """
        world = int(self.spec.get("workers") or 1)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.job["master_port"] = sock.getsockname()[1]
        self._write_json("job.json", self.job, mode=0o600)
        for r in range(1, world):
            target = self.run_dir / "ranks" / str(r) / "work"
            shutil.copytree(self.work, target, dirs_exist_ok=True)
        self.logs.line(
            f"starting {world} ranks (MASTER_ADDR=127.0.0.1 MASTER_PORT={self.job['master_port']})"
        )
        procs: dict[int, subprocess.Popen] = {}
        with open(self.run_dir / "runner.log", "ab") as log:
            for r in range(world):
                procs[r] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "pai_lab.jobs.runner",
                        "--rank",
                        str(r),
                        str(self.run_dir),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.run_dir,
                )
        failure: list[tuple[int, str]] = []

        def rank_result(r: int) -> dict | None:
            try:
                return json.loads((self.run_dir / f"result.rank{r}.json").read_text())
            except (OSError, ValueError):
                return None

        def check() -> bool:
            if failure:
                return all(p.poll() is not None for p in procs.values())
            for r, p in procs.items():
                if p.poll() is None:
                    continue
                res = rank_result(r) or {}
                if res.get("state") != "succeeded":
                    reason = res.get("exit_reason") or _describe_exit(p.returncode)
                    failure.append((r, reason))
                    self.logs.line(f"rank {r} failed: {reason}; stopping the other ranks")
                    for q in procs.values():
                        with contextlib.suppress(OSError):
                            q.send_signal(signal.SIGTERM)
                    return False
            return all(p.poll() is not None for p in procs.values())

        def on_stop(force: bool) -> None:
            for p in procs.values():
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGKILL if force else signal.SIGTERM)

        self._wait(check, on_stop)
        if self.stop_state:
            return self.stop_state, self.stop_reason
        if failure:
            r, reason = failure[0]
            return "failed", f"rank {r}: {reason}"
        return "succeeded", None


def _num(text: str) -> float | int | None:
    try:
        f = float(text)
    except (TypeError, ValueError):
        return None  # e.g. "[N/A]"
    return int(f) if f.is_integer() else f


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"runner exited with code {rc} without a result"


def _install_stop_handler(get_runner) -> None:
    def handler(signum, frame):
        r = get_runner()
        if r is not None:
            r.request_stop("cancelled", "cancelled")
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the job is over, every file is closed


def run_cold(run_dir: str, rank: int | None = None) -> int:
    holder: list[Runner] = []
    _install_stop_handler(lambda: holder[0] if holder else None)
    runner = Runner(run_dir, rank=rank)
    holder.append(runner)
    runner.run()
    worker = getattr(runner, "worker", None)
    if worker is not None:
        worker.kill()
    return 0


def run_warm(kernel_name: str, cwd: str) -> int:
    """Pre-import, pre-start a kernel, then wait for ``run <run-dir>`` on stdin.

    EOF on stdin (the backend went away or is shutting the pool down) before an
    assignment stops the kernel and exits: idle warm runners never outlive their backend.
    """
    holder: list[Runner] = []
    _install_stop_handler(lambda: holder[0] if holder else None)
    _lean_imports()
    register_engine()
    import papermill  # noqa: F401  - warm the import path

    import pai_lab.storage  # noqa: F401
    import pai_lab.tracking  # noqa: F401

    os.makedirs(cwd, exist_ok=True)
    worker: KernelWorker | None = KernelWorker(kernel_name, cwd)
    try:
        worker.ready.wait(90)
        status = "ready" if worker.start_error is None else f"cold {worker.start_error}"
        if worker.start_error is not None:
            # still take the job: it runs cold and reports why its kernel won't start
            worker.stop(0)
            worker = None
        with contextlib.suppress(OSError):  # the backend may have stopped listening
            print(status, flush=True)
        line = sys.stdin.readline()
    except BaseException:
        if worker is not None:
            worker.kill()
        raise
    if not line.startswith("run "):
        if worker is not None:
            worker.stop(2)
        return 0
    run_dir = line[4:].strip()
    # From here on this process belongs to the job: detach from the backend's pipes
    # so the job survives the control plane.
    fd = os.open(os.path.join(run_dir, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    runner = Runner(run_dir, warm=worker)
    holder.append(runner)
    runner.run()
    used = getattr(runner, "worker", worker)
    if used is not None:
        used.kill()
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rank"] and len(argv) == 3 and argv[1].isdigit():
        _exit(run_cold(argv[2], rank=int(argv[1])))
    if argv[:1] == ["--warm"]:
        kernel = argv[1] if len(argv) > 1 else "python3"
        cwd = argv[2] if len(argv) > 2 else os.getcwd()
        _exit(run_warm(kernel, cwd))
    if len(argv) != 1:
        print(
            "usage: python -m pai_lab.jobs.runner <run-dir>  |  --warm [kernel] [cwd]",
            file=sys.stderr,
        )
        _exit(2)
    _exit(run_cold(argv[0]))


if __name__ == "__main__":
    main()
