"""``%pai``: submit and watch training jobs, browse artifacts, from a notebook.

``%load_ext pai_lab`` registers one line magic, ``%pai <command> [options]``. Every
command is an ``argparse`` sub-parser backed by one function, and all of them share one
``PaiClient`` (configured by ``PAI_LAB_URL`` / ``PAI_LAB_TOKEN`` / ``PAI_LAB_WORKSPACE``,
which the pai-lab server extension sets for the kernels it starts).

Errors are one line and make the cell fail (no traceback: the error's
``_render_traceback_`` is what IPython shows).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import glob
import html
import json
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import PaiError
from .jobs.spec import TERMINAL_STATES, parse_param

MAX_LOG_CHARS = 6000  # what the live panel keeps of the log tail
LOG_TAIL_LINES = 15


class PaiMagicError(Exception):
    """A user-facing failure: one line, no traceback, and the cell fails."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mpai: {self}\x1b[0m"]


class _HelpShown(Exception):
    """argparse printed help (``--help``): stop quietly."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise PaiMagicError(f"{self.prog}: {message} (see %{self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        if message:
            print(message, end="")
        raise _HelpShown()


# ----------------------------------------------------------------------------- state
class _State:
    """The one client shared by every command (and the watcher threads' settings)."""

    def __init__(self) -> None:
        self._client = None
        self.me: dict | None = None
        self.deploy_tokens: dict[str, str] = {}  # from %pai deploy, for %pai predict

    @property
    def client(self):
        if self._client is None:
            from .client import PaiClient

            self._client = PaiClient()
        return self._client

    def new_client(self):
        """A separate client for a background thread (requests sessions aren't shared)."""
        from .client import PaiClient

        c = self.client
        return PaiClient(url=c.url, token=c.token, workspace=c.workspace)

    def whoami(self) -> dict:
        if self.me is None:
            self.me = self.client.me()
        return self.me


STATE = _State()


# ----------------------------------------------------------------------------- helpers
def _in_jupyter() -> bool:
    """True in a kernel with a rich frontend (ZMQ shell), where widgets/HTML render."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _widgets_available() -> bool:
    if not _in_jupyter() or os.environ.get("PAI_LAB_NO_WIDGETS"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _display(obj: Any) -> None:
    try:
        from IPython.display import display

        display(obj)
    except Exception:
        print(repr(obj))


def _parse_time(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        t = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def job_elapsed(job: dict, now: float | None = None) -> float | None:
    start = _parse_time(job.get("started_at")) or _parse_time(job.get("created_at"))
    if start is None:
        return None
    end = _parse_time(job.get("finished_at")) or (now or time.time())
    return end - start


def last_metrics(job: dict) -> dict[str, Any]:
    """Latest value of each metric (the job JSON lists every record)."""
    out: dict[str, Any] = {}
    for m in job.get("metrics") or []:
        if isinstance(m, dict) and "name" in m:
            out[m["name"]] = m.get("value")
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def output_link(job: dict) -> tuple[str, str]:
    """(href, label) of the job's executed notebook.

    Through this Jupyter server's ``/pai/api`` proxy when the kernel knows the server's
    base URL (the pai-lab extension exports it; JupyterHub sets its prefix), so the link
    works in the browser with the user's own login; otherwise the ``pai://`` URI.
    """
    rel = f"jobs/{job['id']}/output.ipynb"
    base = os.environ.get("PAI_LAB_JUPYTER_BASE_URL") or os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    uri = f"pai://{rel}"
    if base:
        ws = quote(job.get("workspace") or STATE.client.workspace, safe="")
        href = f"{base.rstrip('/')}/pai/api/v1/workspaces/{ws}/files/{quote(rel)}"
        return href, uri
    return uri, uri


class Table:
    """Rows shown as an HTML table in Jupyter and as aligned text elsewhere."""

    def __init__(self, columns: list[str], rows: list[list[Any]], empty: str = "(none)"):
        self.columns = columns
        self.rows = [["" if c is None else str(c) for c in r] for r in rows]
        self.empty = empty

    def __repr__(self) -> str:
        if not self.rows:
            return self.empty
        widths = [len(c) for c in self.columns]
        for r in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, r, strict=False)]
        line = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=False))
        out = [line.rstrip(), "  ".join("-" * w for w in widths)]
        for r in self.rows:
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        return "\n".join(out)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p><i>{html.escape(self.empty)}</i></p>"
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r)
            + "</tr>"
            for r in self.rows
        )
        return (
            f"<table class='pai-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


# ----------------------------------------------------------------------------- notebook path
def _kernel_id() -> str | None:
    try:
        from ipykernel.connect import get_connection_file

        name = os.path.basename(get_connection_file())
    except Exception:
        return None
    if name.startswith("kernel-") and name.endswith(".json"):
        return name[len("kernel-") : -len(".json")]
    return None


def _running_servers() -> list[dict]:
    """Jupyter servers of this user on this machine (their runtime files), newest first."""
    from jupyter_core.paths import jupyter_runtime_dir

    out = []
    for f in glob.glob(os.path.join(jupyter_runtime_dir(), "jpserver-*.json")):
        try:
            with open(f) as fh:
                info = json.load(fh)
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue
        out.append(info)
    return out


def _session_path_from_servers(kernel_id: str) -> Path | None:
    """Ask the server(s) that may own this kernel which notebook it belongs to."""
    import requests

    candidates: list[tuple[str, str, str | None]] = []
    hub_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if hub_url and os.environ.get("JUPYTERHUB_API_TOKEN"):
        candidates.append(
            (hub_url, os.environ["JUPYTERHUB_API_TOKEN"], os.environ.get("JUPYTERHUB_ROOT_DIR"))
        )
    for info in _running_servers():
        candidates.append((info.get("url", ""), info.get("token", ""), info.get("root_dir")))
    for url, token, root in candidates:
        if not url:
            continue
        try:
            r = requests.get(
                url.rstrip("/") + "/api/sessions",
                headers={"Authorization": f"token {token}"} if token else {},
                timeout=5,
            )
            if r.status_code != 200:
                continue
            sessions = r.json()
        except Exception:
            continue
        for s in sessions:
            if (s.get("kernel") or {}).get("id") == kernel_id and s.get("path"):
                rel = s["path"]
                base = Path(root) if root else Path.cwd()
                p = base / rel
                if p.exists():
                    return p
                alt = Path.cwd() / Path(rel).name
                if alt.exists():
                    return alt
    return None


def find_notebook_path() -> Path | None:
    """The saved notebook this kernel runs: ``JPY_SESSION_NAME``, then the sessions API."""
    name = os.environ.get("JPY_SESSION_NAME")
    if name and name.endswith(".ipynb"):
        p = Path(name)
        for cand in (p, Path.cwd() / p.name) if p.is_absolute() else (Path.cwd() / p.name, p):
            if cand.is_file():
                return cand.resolve()
    kid = _kernel_id()
    if kid:
        p = _session_path_from_servers(kid)
        if p is not None:
            return p.resolve()
    return None


def unsaved_cells(nb_path: Path, executed: list[str]) -> int:
    """How many cells run in this kernel are not in the saved file (unsaved edits)."""
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    saved = set()
    for c in nb.get("cells", []):
        src = c.get("source", "")
        if isinstance(src, list):
            src = "".join(src)
        saved.add(src.strip())
    return sum(1 for src in executed if src.strip() and src.strip() not in saved)


def _executed_cells() -> list[str]:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return list(ip.history_manager.input_hist_raw[1:]) if ip is not None else []
    except Exception:
        return []


def collect_files(nb_dir: Path, rels: list[str], limit_bytes: int = 64 * 2**20) -> dict[str, str]:
    """Sibling files (relative to the notebook's folder) as ``{rel: base64}``; no escapes."""
    root = nb_dir.resolve()
    out: dict[str, str] = {}
    total = 0
    for rel in rels:
        if not rel or rel.startswith(("/", "\\")) or ".." in rel.replace("\\", "/").split("/"):
            raise PaiMagicError(f"--file {rel!r}: must be a path inside the notebook's folder")
        p = (nb_dir / rel).resolve()
        if p != root and root not in p.parents:
            raise PaiMagicError(f"--file {rel!r}: resolves outside the notebook's folder")
        if not p.exists():
            raise PaiMagicError(f"--file {rel!r}: no such file next to the notebook")
        files = [p] if p.is_file() else [f for f in sorted(p.rglob("*")) if f.is_file()]
        for f in files:
            r = f.resolve()
            if root not in r.parents:
                raise PaiMagicError(f"--file {rel!r}: {f} resolves outside the notebook's folder")
            data = r.read_bytes()
            total += len(data)
            if total > limit_bytes:
                raise PaiMagicError(f"--file: more than {limit_bytes // 2**20} MiB in total")
            out[r.relative_to(root).as_posix()] = base64.b64encode(data).decode()
    return out


# ----------------------------------------------------------------------------- watching a job
class JobWatcher:
    """Follows a job from background threads: state/metrics polling and the live log.

    ``render(job, log_tail, final)`` is called on every change (from a watcher thread);
    ``join()`` waits for the end. A cell using ``--wait`` joins; without ``--wait`` the
    panel keeps updating while the user runs other cells.
    """

    def __init__(self, job: dict, render: Callable[[dict, str, bool], None], poll: float = 1.0):
        self.job = job
        self.render = render
        self.poll = poll
        self.log = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.done = threading.Event()
        self.error: str | None = None
        self._log_thread = threading.Thread(target=self._follow_logs, daemon=True, name="pai-logs")
        self._thread = threading.Thread(target=self._watch, daemon=True, name="pai-watch")

    def start(self) -> JobWatcher:
        self._log_thread.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (interruptibly) for the job to end; True when it did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def _emit(self, final: bool = False) -> None:
        with self._lock:
            log = self.log
        try:
            self.render(self.job, log, final)
        except Exception:  # a closed frontend must not kill the watcher
            pass

    def _follow_logs(self) -> None:
        client = STATE.new_client()
        try:
            for chunk in client.iter_logs(
                self.job["id"], follow=True, workspace=self.job.get("workspace")
            ):
                with self._lock:
                    self.log = (self.log + chunk)[-MAX_LOG_CHARS:]
                self._emit()
                if self._stop.is_set():
                    break
        except Exception as e:  # logs are best effort; state polling decides the end
            self.error = self.error or f"log stream: {e}"

    def _watch(self) -> None:
        client = STATE.new_client()
        delay = 0.2
        try:
            while not self._stop.is_set():
                try:
                    job = client.get_job(self.job["id"], workspace=self.job.get("workspace"))
                except PaiError as e:
                    self.error = str(e)
                    time.sleep(min(self.poll, 2.0))
                    continue
                self.job = job
                if job["state"] in TERMINAL_STATES:
                    self._log_thread.join(10)
                    break
                self._emit()
                self._stop.wait(delay)
                delay = min(self.poll, delay * 1.5)
        finally:
            self._emit(final=True)
            self.done.set()


class JobPanel:
    """The ipywidgets panel: title, state and elapsed, metrics, last log lines, link."""

    STATE_COLORS = {
        "succeeded": "#2e7d32",
        "failed": "#c62828",
        "timed_out": "#c62828",
        "lost": "#c62828",
        "cancelled": "#757575",
        "running": "#1565c0",
    }

    def __init__(self, job: dict):
        import ipywidgets as w

        self.title = w.HTML()
        self.status = w.HTML()
        self.metrics = w.HTML()
        self.logs = w.HTML()
        self.link = w.HTML()
        self.box = w.VBox(
            [self.title, self.status, self.metrics, self.logs, self.link],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.box.add_class("pai-job-panel")
        self.update(job, "", False)

    def update(self, job: dict, log: str, final: bool) -> None:
        state = job.get("state", "?")
        color = self.STATE_COLORS.get(state, "#ef6c00")
        self.title.value = (
            f"<b>pai job</b> <code>{html.escape(job['id'])}</code> "
            f"{html.escape(job.get('name') or '')} &middot; workspace "
            f"<code>{html.escape(job.get('workspace') or '')}</code>"
        )
        extra = job.get("wait_reason") or job.get("exit_reason") or ""
        self.status.value = (
            f"state: <b style='color:{color}' class='pai-state'>{html.escape(state)}</b>"
            f" &middot; elapsed {_fmt_duration(job_elapsed(job))}"
            + (f" &middot; attempt {job['attempt']}" if (job.get("attempt") or 1) > 1 else "")
            + (f" &middot; {html.escape(str(extra))}" if extra else "")
        )
        metrics = last_metrics(job)
        self.metrics.value = (
            "metrics: "
            + ", ".join(
                f"{html.escape(k)}=<b>{html.escape(_fmt_value(v))}</b>" for k, v in metrics.items()
            )
            if metrics
            else ""
        )
        tail = "\n".join(log.splitlines()[-LOG_TAIL_LINES:])
        self.logs.value = (
            "<pre style='max-height:16em;overflow:auto;font-size:85%;margin:0'>"
            + html.escape(tail)
            + "</pre>"
            if tail
            else ""
        )
        if final:
            href, label = output_link(job)
            self.link.value = (
                f"output notebook: <a href='{html.escape(href)}' target='_blank'>{html.escape(label)}</a>"
                if state == "succeeded" or state == "failed"
                else ""
            )


def _summary(job: dict) -> str:
    """The final one-line result of a watched job (printed in every frontend)."""
    state = job["state"]
    line = f"job {job['id']} {state} after {_fmt_duration(job_elapsed(job))}"
    metrics = last_metrics(job)
    if metrics:
        line += " · " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in metrics.items())
    if job.get("exit_reason") and state != "succeeded":
        line += f" · {job['exit_reason']}"
    if state in ("succeeded", "failed"):
        href, label = output_link(job)
        line += f" · output notebook: {href if href != label else label}"
    return line


class _TextProgress:
    """Plain-text progress for terminals: state changes and new log text as lines."""

    def __init__(self) -> None:
        self.last_state: str | None = None
        self.printed = 0

    def __call__(self, job: dict, log: str, final: bool) -> None:
        if job["state"] != self.last_state:
            self.last_state = job["state"]
            print(
                f"[{_fmt_duration(job_elapsed(job)) or '0s'}] {job['id']}: {job['state']}",
                flush=True,
            )


# ----------------------------------------------------------------------------- commands
def _ensure(client_call: Callable[[], Any]) -> Any:
    try:
        return client_call()
    except PaiError as e:
        raise PaiMagicError(e.message) from None


def cmd_train(args: argparse.Namespace) -> Any:
    job_id = os.environ.get("PAI_JOB_ID")
    if job_id:
        print(f"pai: already running as job {job_id}; continuing without submitting")
        return None
    if args.notebook:
        nb_path = Path(args.notebook).expanduser()
        if not nb_path.is_file():
            raise PaiMagicError(f"--notebook {args.notebook!r}: no such file")
        nb_path = nb_path.resolve()
    else:
        nb_path = find_notebook_path()
        if nb_path is None:
            raise PaiMagicError(
                "cannot tell which notebook this kernel runs (no JPY_SESSION_NAME and no "
                "Jupyter server session for this kernel); pass --notebook PATH"
            )
    if nb_path.suffix != ".ipynb":
        raise PaiMagicError(f"{nb_path.name} is not a notebook (.ipynb)")
    fields: dict[str, Any] = {}
    if args.name:
        fields["name"] = args.name
    if args.profile:
        fields["profile"] = args.profile
    resources: dict[str, Any] = {}
    if args.gpu is not None:
        resources["gpu"] = args.gpu
    if args.cpu is not None:
        resources["cpu"] = args.cpu
    if args.memory:
        resources["memory"] = args.memory
    if resources:
        fields["resources"] = resources
    if args.workers is not None:
        fields["workers"] = args.workers
    if args.retries is not None:
        fields["retries"] = args.retries
    if args.max_runtime:
        fields["max_runtime"] = args.max_runtime
    params: dict[str, Any] = {}
    for p in args.param or []:
        k, v = _ensure(lambda p=p: parse_param(p))
        params[k] = v
    if params:
        fields["parameters"] = params
    env: dict[str, str] = {}
    for e in args.env or []:
        if "=" not in e:
            raise PaiMagicError(f"--env {e!r}: expected NAME=VALUE")
        k, v = e.split("=", 1)
        env[k.strip()] = v
    if env:
        fields["env"] = env
    if args.output:
        fields["outputs"] = list(args.output)
    if args.file:
        fields["files"] = collect_files(nb_path.parent, list(args.file))

    n_unsaved = unsaved_cells(nb_path, _executed_cells())
    saved_at = _dt.datetime.fromtimestamp(nb_path.stat().st_mtime).strftime("%H:%M:%S")
    if n_unsaved:
        print(
            f"pai: warning: {n_unsaved} cell(s) run in this kernel are not in the saved "
            f"{nb_path.name} (unsaved edits?). The job runs the saved version (saved {saved_at}); "
            "save the notebook first to include them."
        )
    client = STATE.client
    ws = args.workspace or client.workspace
    job = _ensure(lambda: client.submit_file(nb_path, workspace=ws, **fields))
    href, label = output_link(job)
    msg = f"submitted {nb_path.name} (saved {saved_at}) as job {job['id']} in workspace {job.get('workspace', ws)}"
    use_widgets = _widgets_available() and not args.no_widgets
    if not args.wait:
        print(msg)
        print(f"  follow it: %pai logs {job['id']} --follow · output (when done): {label}")
        if use_widgets:
            panel = JobPanel(job)
            _display(panel.box)
            JobWatcher(job, panel.update).start()
        return None

    print(msg)
    if use_widgets:
        panel = JobPanel(job)
        _display(panel.box)
        render: Callable[[dict, str, bool], None] = panel.update
    else:
        render = _TextProgress()
    watcher = JobWatcher(job, render).start()
    try:
        watcher.join()
    except KeyboardInterrupt:
        watcher.stop()
        print(
            f"pai: stopped watching; job {job['id']} keeps running (%pai cancel {job['id']} to stop it)"
        )
        return None
    final = watcher.job
    print(_summary(final))
    if final["state"] != "succeeded":
        raise PaiMagicError(
            f"job {final['id']} {final['state']}"
            + (f": {final['exit_reason']}" if final.get("exit_reason") else "")
            + f" (logs: %pai logs {final['id']})"
        )
    return None


def cmd_jobs(args: argparse.Namespace) -> Any:
    client = STATE.client
    owner = None
    if not args.all:
        owner = _ensure(STATE.whoami).get("name")
    res = _ensure(
        lambda: client.list_jobs(
            workspace=args.workspace, owner=owner, state=args.state, limit=args.limit
        )
    )
    rows = []
    for j in res.get("jobs", []):
        metrics = ", ".join(f"{k}={_fmt_value(v)}" for k, v in last_metrics(j).items())
        rows.append(
            [
                j["id"],
                j.get("name"),
                j.get("state"),
                j.get("owner"),
                (j.get("created_at") or "")[:19].replace("T", " "),
                _fmt_duration(job_elapsed(j)),
                metrics,
            ]
        )
    ws = args.workspace or client.workspace
    who = "all owners" if args.all else f"owner {owner}"
    table = Table(
        ["id", "name", "state", "owner", "created", "elapsed", "metrics"],
        rows,
        empty=f"no jobs in workspace {ws} ({who})",
    )
    _display(table)
    return None


def cmd_logs(args: argparse.Namespace) -> Any:
    client = STATE.client
    try:
        for chunk in client.iter_logs(args.job_id, follow=args.follow, workspace=args.workspace):
            print(chunk, end="", flush=True)
    except PaiError as e:
        raise PaiMagicError(e.message) from None
    except KeyboardInterrupt:
        print("\n(pai: stopped following)")
    return None


def cmd_cancel(args: argparse.Namespace) -> Any:
    client = STATE.client
    job = _ensure(lambda: client.cancel_job(args.job_id, workspace=args.workspace))
    # Cancelling is asynchronous (the process gets SIGTERM, then SIGKILL): report the
    # outcome when it comes quickly, else say it is under way.
    deadline = time.monotonic() + args.timeout
    while job["state"] not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.25)
        job = _ensure(lambda: client.get_job(args.job_id, workspace=args.workspace))
    if job["state"] in TERMINAL_STATES:
        print(f"job {job['id']}: {job['state']}")
    else:
        print(f"job {job['id']}: cancel requested, still {job['state']}")
    return None


def _pai_path(p: str) -> str | None:
    """``pai://a/b`` -> ``a/b``; None for a local path."""
    if p.startswith("pai://"):
        return p[len("pai://") :].lstrip("/")
    return None


def cmd_ls(args: argparse.Namespace) -> Any:
    path = _pai_path(args.path) if _pai_path(args.path) is not None else args.path
    entries = _ensure(lambda: STATE.client.list_files(path.strip("/"), workspace=args.workspace))
    rows = [
        [
            e["name"] + ("/" if e.get("type") == "directory" else ""),
            "" if e.get("type") == "directory" else e.get("size"),
            (e.get("modified") or "")[:19].replace("T", " "),
        ]
        for e in entries
    ]
    _display(Table(["name", "size", "modified"], rows, empty=f"(empty: pai://{path.strip('/')})"))
    return None


def cmd_cp(args: argparse.Namespace) -> Any:
    client = STATE.client
    src_remote, dst_remote = _pai_path(args.src), _pai_path(args.dst)
    if (src_remote is None) == (dst_remote is None):
        raise PaiMagicError("cp: exactly one of SRC and DST must be a pai:// path")
    if dst_remote is not None:  # upload
        local = Path(args.src).expanduser()
        if not local.is_file():
            raise PaiMagicError(f"cp: {args.src}: no such local file")
        target = dst_remote
        if not target or target.endswith("/"):
            target = target + local.name
        res = _ensure(lambda: client.upload(target, str(local), workspace=args.workspace))
        size = (res or {}).get("size", local.stat().st_size)
        print(f"uploaded {local} -> pai://{target} ({size} bytes)")
        return None
    assert src_remote is not None
    if not src_remote or src_remote.endswith("/"):
        raise PaiMagicError("cp: SRC must name a file in the workspace")
    local = Path(args.dst).expanduser()
    if args.dst.endswith("/") or local.is_dir():
        local = local / src_remote.rsplit("/", 1)[-1]
    if not local.parent.exists():
        raise PaiMagicError(f"cp: {local.parent}: no such local folder")
    n = _ensure(lambda: client.download(src_remote, local, workspace=args.workspace))
    print(f"downloaded pai://{src_remote} -> {local} ({n} bytes)")
    return None


def cmd_workspace(args: argparse.Namespace) -> Any:
    client = STATE.client
    if not args.name:
        me = _ensure(STATE.whoami)
        rows = [
            [("* " if w["name"] == client.workspace else "  ") + w["name"], w.get("role", "")]
            for w in me.get("workspaces", [])
        ]
        print(f"current workspace: {client.workspace} (user {me.get('name')})")
        _display(Table(["workspace", "role"], rows, empty="(no workspaces)"))
        return None
    _ensure(lambda: client.get_workspace(args.name))
    client.workspace = args.name
    os.environ["PAI_LAB_WORKSPACE"] = args.name  # pai:// in this kernel follows
    print(f"workspace: {args.name}")
    return None


def cmd_register(args: argparse.Namespace) -> Any:
    """Register a model version from a job's output (or any workspace file)."""
    client = STATE.client
    if bool(args.from_job) == bool(args.artifact):
        raise PaiMagicError("register: give --from-job JOB_ID --path PATH, or --artifact PATH")
    kwargs: dict[str, Any] = {"framework": args.framework, "workspace": args.workspace}
    if args.from_job:
        kwargs.update(from_job=args.from_job, path=args.path)
    else:
        kwargs["artifact"] = _pai_path(args.artifact) or args.artifact
    if args.description:
        kwargs["description"] = args.description
    v = _ensure(lambda: client.register_model(args.name, **kwargs))
    metrics = ", ".join(f"{k}={_fmt_value(x)}" for k, x in (v.get("metrics") or {}).items())
    print(
        f"registered {args.name} version {v['version']} ({v.get('framework')})"
        + (f": {metrics}" if metrics else "")
    )
    return None


def cmd_deploy(args: argparse.Namespace) -> Any:
    """Deploy a model version to an HTTP endpoint (Open Inference Protocol V2)."""
    client = STATE.client
    d = _ensure(
        lambda: client.create_deployment(
            args.name, args.model, replicas=args.replicas, workspace=args.workspace
        )
    )
    if d.get("token"):
        STATE.deploy_tokens[args.name] = d["token"]
    print(f"deployment {d['name']}: {d.get('state')} at {d.get('url')}")
    if d.get("token"):
        print(f"token (shown once; kept in this kernel for %pai predict): {d['token']}")
    return None


def cmd_predict(args: argparse.Namespace) -> Any:
    """Send rows to a deployment and show the predictions."""
    client = STATE.client
    if args.data is not None:
        try:
            rows = json.loads(args.data)
        except ValueError as e:
            raise PaiMagicError(f"predict: --data is not JSON ({e})") from None
    elif args.var is not None:
        from IPython import get_ipython

        ip = get_ipython()
        if ip is None or args.var not in ip.user_ns:
            raise PaiMagicError(f"predict: no variable {args.var!r} in this notebook")
        rows = ip.user_ns[args.var]
    else:
        raise PaiMagicError("predict: give --data '[[...], ...]' or --var NAME")
    token = args.token or STATE.deploy_tokens.get(args.deployment)
    if not token:
        raise PaiMagicError(
            f"predict: no token for {args.deployment!r} in this kernel; pass --token (it was "
            "shown when the deployment was created)"
        )
    d = _ensure(lambda: client.get_deployment(args.deployment, workspace=args.workspace))
    variants = d.get("variants") or [{}]
    model = args.model or variants[0].get("model") or args.deployment
    res = _ensure(lambda: client.predict(d["url"], rows, token=token, model=model))
    for out in res.get("outputs", []):
        print(f"{out['name']} {out.get('shape')}: {out.get('data')}")
    return None


def cmd_help(args: argparse.Namespace) -> Any:
    print(build_parser().format_help())
    return None


def build_parser() -> _Parser:
    parser = _Parser(
        prog="pai",
        description="pai-lab from a notebook: submit this notebook as a training job, watch "
        "jobs, browse the workspace's artifacts. '%pai COMMAND --help' explains a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  %pai train --profile gpu --param C=0.5 --max-runtime 1h --wait\n"
        "  %pai jobs\n"
        "  %pai logs JOB_ID --follow\n"
        "  %pai cp model.joblib pai://models/scratch/model.joblib\n"
        "  %pai workspace team-a\n"
        "  %pai register iris --from-job JOB_ID --path outputs/model.joblib\n"
        "  %pai deploy iris-svc --model iris@production\n"
        "  %pai predict iris-svc --data '[[5.1, 3.5, 1.4, 0.2]]'",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, fn: Callable, help_text: str, ws: bool = True) -> _Parser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        if ws:
            p.add_argument("--workspace", "-w", help="workspace (default: the current one)")
        return p

    p = add(
        "train",
        cmd_train,
        "Submit THIS notebook, as last saved, as a job (inside a job: do nothing).",
    )
    p.add_argument("--profile", help="resource profile, e.g. cpu-small, gpu (see the hub's list)")
    p.add_argument("--gpu", type=int, metavar="N", help="number of GPUs")
    p.add_argument("--cpu", type=float, metavar="N", help="CPU cores")
    p.add_argument("--memory", metavar="SIZE", help="memory, e.g. 4Gi")
    p.add_argument("--workers", type=int, metavar="N", help="distributed workers (torch)")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        metavar="NAME=VALUE",
        help="papermill parameter (repeatable); VALUE is JSON if it parses, else a string",
    )
    p.add_argument(
        "--max-runtime", metavar="DURATION", help="e.g. 90s, 30m, 2h; then the job is timed_out"
    )
    p.add_argument("--retries", type=int, metavar="N", help="retries after a failure")
    p.add_argument(
        "--output",
        "-o",
        action="append",
        metavar="PATH",
        help="file the job writes to keep (repeatable), uploaded to jobs/<id>/outputs/",
    )
    p.add_argument(
        "--file",
        "-f",
        action="append",
        metavar="PATH",
        help="file or folder next to the notebook to send along (repeatable)",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="NAME=VALUE",
        help="environment variable for the job (repeatable)",
    )
    p.add_argument("--name", help="job name (default: the notebook's name)")
    p.add_argument(
        "--notebook", metavar="PATH", help="submit this notebook instead of the current one"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="block until the job ends, with live status, logs and metrics",
    )
    p.add_argument("--no-widgets", action="store_true", help="text progress even in Jupyter")

    p = add("jobs", cmd_jobs, "List recent jobs (yours; --all for everyone's).")
    p.add_argument("--all", "-a", action="store_true", help="jobs of all owners")
    p.add_argument("--state", help="only jobs in this state (queued, running, succeeded, ...)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")

    p = add("logs", cmd_logs, "Print a job's log (--follow: until it ends).")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    p = add("cancel", cmd_cancel, "Cancel a job.")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the job to stop (default 15)",
    )

    p = add("ls", cmd_ls, "List a folder of the workspace's artifact store.")
    p.add_argument(
        "path",
        nargs="?",
        default="",
        metavar="PATH",
        help="e.g. jobs/<id>/outputs (pai:// optional)",
    )

    p = add("cp", cmd_cp, "Copy a file between here and the workspace: one side is pai://PATH.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")

    p = add("workspace", cmd_workspace, "Show workspaces, or switch the current one.", ws=False)
    p.add_argument("name", nargs="?", metavar="NAME")

    p = add("register", cmd_register, "Register a model version (from a job's output).")
    p.add_argument("name", metavar="NAME", help="model name, e.g. iris")
    p.add_argument("--from-job", metavar="JOB_ID", help="job whose output holds the model")
    p.add_argument(
        "--path",
        default="outputs/model.joblib",
        help="path inside jobs/<id>/ (default outputs/model.joblib)",
    )
    p.add_argument("--artifact", metavar="PATH", help="or: a workspace file (pai:// optional)")
    p.add_argument("--framework", choices=["sklearn", "torch"], help="default: from the file name")
    p.add_argument("--description", help="free text")

    p = add("deploy", cmd_deploy, "Deploy a model to an HTTP endpoint (V2 inference).")
    p.add_argument("name", metavar="NAME", help="deployment name, e.g. iris-svc")
    p.add_argument("--model", required=True, help="NAME@ALIAS, NAME:VERSION or NAME")
    p.add_argument("--replicas", type=int, default=1, help="model-server replicas (default 1)")

    p = add("predict", cmd_predict, "Send rows to a deployment and print the predictions.")
    p.add_argument("deployment", metavar="DEPLOYMENT")
    p.add_argument("--data", metavar="JSON", help="rows as JSON, e.g. '[[5.1, 3.5, 1.4, 0.2]]'")
    p.add_argument("--var", metavar="NAME", help="a 2-D array/list variable of this notebook")
    p.add_argument("--model", help="model name at the endpoint (default: the deployment's)")
    p.add_argument("--token", help="the deployment's token (default: from %%pai deploy)")

    add("help", cmd_help, "Show this help.", ws=False)
    return parser


def run_line(line: str) -> Any:
    """Run one ``%pai`` line (also the programmatic entry point for tests and the CLI)."""
    try:
        argv = shlex.split(line)
    except ValueError as e:
        raise PaiMagicError(f"cannot parse the command line: {e}") from None
    parser = build_parser()
    if not argv:
        print(parser.format_help())
        return None
    try:
        args = parser.parse_args(argv)
    except _HelpShown:
        return None
    if not getattr(args, "func", None):
        print(parser.format_help())
        return None
    try:
        return args.func(args)
    except PaiError as e:  # anything a command didn't translate itself
        raise PaiMagicError(e.message) from None


def pai(line: str) -> Any:
    """%pai COMMAND [options] — pai-lab from a notebook (%pai help for the commands)."""
    return run_line(line)


def load_ipython_extension(ipython) -> None:
    """``%load_ext pai_lab``: register the ``%pai`` line magic."""
    ipython.register_magic_function(pai, magic_kind="line", magic_name="pai")


def unload_ipython_extension(ipython) -> None:
    with contextlib.suppress(KeyError):
        del ipython.magics_manager.magics["line"]["pai"]
