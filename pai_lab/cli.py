"""``pai-lab``: the command line. Every command that talks to the control plane goes
through ``PaiClient``; errors are one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

from . import __version__
from .errors import BadRequest, PaiError

# Subcommand groups contributed by other components: module -> register(subparsers).
PLUGINS = [
    "pai_lab.hub.up",
    "pai_lab.serving.commands",
    "pai_lab.k8s.commands",
    "pai_lab.registry_commands",
]


def _client(args):
    from .client import PaiClient

    return PaiClient(url=args.url, token=args.token, workspace=args.workspace)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    print("  ".join(h.upper().ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _ago(ts: str | None) -> str:
    if not ts:
        return ""
    t = datetime.fromisoformat(ts.rstrip("Z"))
    secs = (datetime.utcnow() - t).total_seconds()
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{int(secs // n)}{unit} ago"
    return f"{int(secs)}s ago"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _kv(items: list[str], what: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BadRequest(f"--{what} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out


# ---- control -------------------------------------------------------------------------
def cmd_control(args, rest: list[str]) -> int:
    from .control.app import PaiControl

    return PaiControl.launch(rest)


# ---- me / profiles / workspaces ------------------------------------------------------
def cmd_me(args) -> int:
    me = _client(args).me()
    if args.json:
        _print_json(me)
    else:
        print(f"{me['name']}{' (admin)' if me.get('admin') else ''}")
        for w in me["workspaces"]:
            print(f"  {w['name']}: {w['role']}")
    return 0


def cmd_profiles(args) -> int:
    profiles = _client(args).profiles()
    if args.json:
        _print_json(profiles)
        return 0
    _table(
        [
            [
                p["slug"],
                p["display_name"],
                p["gpu"],
                "yes" if p["available"] else f"no: {p['unavailable_reason']}",
            ]
            for p in profiles
        ],
        ["profile", "name", "gpus", "available"],
    )
    return 0


def cmd_ws_list(args) -> int:
    wss = _client(args).workspaces()
    if args.json:
        _print_json(wss)
    else:
        _table(
            [[w["name"], w.get("role"), w["description"]] for w in wss],
            ["workspace", "role", "description"],
        )
    return 0


def cmd_ws_create(args) -> int:
    quotas = {k: int(v) for k, v in _kv(args.quota, "quota").items()} if args.quota else None
    ws = _client(args).create_workspace(args.name, args.description, quotas)
    _print_json(ws) if args.json else print(f"created workspace {ws['name']}")
    return 0


def cmd_ws_show(args) -> int:
    c = _client(args)
    ws = c.get_workspace(args.name)
    ws["members"] = c.members(args.name)
    if args.json:
        _print_json(ws)
        return 0
    print(f"{ws['name']}  (your role: {ws.get('role')})  {ws['description']}")
    print("quotas: " + ", ".join(f"{k}={v}" for k, v in ws["quotas"].items()))
    _table([[m["user"], m["role"]] for m in ws["members"]], ["member", "role"])
    return 0


def cmd_ws_add(args) -> int:
    m = _client(args).set_member(args.user, args.role, args.name)
    print(f"{m['user']} is now {m['role']} in {args.name or _client(args).workspace}")
    return 0


def cmd_ws_remove(args) -> int:
    _client(args).remove_member(args.user, args.name)
    print(f"removed {args.user}")
    return 0


def cmd_ws_quota(args) -> int:
    quotas = {k: int(v) for k, v in _kv(args.quota, "quota").items()}
    ws = _client(args).update_workspace(args.name, quotas=quotas)
    print("quotas: " + ", ".join(f"{k}={v}" for k, v in ws["quotas"].items()))
    return 0


def cmd_audit(args) -> int:
    out = _client(args).audit(limit=args.limit, action=args.action, outcome=args.outcome)
    if args.json:
        _print_json(out)
        return 0
    _table(
        [
            [
                e["time"],
                e["actor"],
                e["action"],
                e["object_id"],
                e["outcome"],
                json.dumps(e["detail"])[:60],
            ]
            for e in out["events"]
        ],
        ["time", "actor", "action", "object", "outcome", "detail"],
    )
    return 0


def cmd_token(args) -> int:
    print(_client(args).create_user_token(args.user, args.note))
    return 0


# ---- jobs ----------------------------------------------------------------------------
def _spec_from_args(args) -> dict:
    from .jobs.spec import parse_param

    spec: dict[str, Any] = {}
    if args.param:
        spec["parameters"] = dict(parse_param(p) for p in args.param)
    for field in ("name", "profile", "workers", "retries", "idempotency_key"):
        v = getattr(args, field)
        if v is not None:
            spec[field] = v
    if args.max_runtime is not None:
        spec["max_runtime"] = args.max_runtime
    if args.gpu is not None:
        spec["resources"] = {"gpu": args.gpu}
    if args.env:
        spec["env"] = _kv(args.env, "env")
    if args.output:
        spec["outputs"] = args.output
    if args.file:
        import base64
        from pathlib import Path

        base = Path(args.source).resolve().parent
        files = {}
        for f in args.file:
            p = (base / f).resolve()
            if not p.is_file():
                raise BadRequest(f"--file {f}: no such file next to {args.source}")
            files[os.path.relpath(p, base)] = base64.b64encode(p.read_bytes()).decode()
        spec["files"] = files
    return spec


def cmd_job_submit(args) -> int:
    c = _client(args)
    spec = _spec_from_args(args)
    if args.command_args and not args.command:
        raise BadRequest(
            f"unexpected arguments {args.command_args}; with --command, put the command line after --"
        )
    if args.command:
        job = c.submit_job({"source": {"command": [args.source, *args.command_args]}, **spec})
    else:
        job = c.submit_file(args.source, **spec)
    if args.json and not args.wait:
        _print_json(job)
        return 0
    print(
        f"submitted job {job['id']} ({job['name']}) to workspace {job['workspace']}: {job['state']}",
        file=sys.stderr if args.json else sys.stdout,
    )
    if not args.wait:
        print(f"  follow it with: pai-lab job logs {job['id']} --follow")
        return 0
    return _wait(c, job, args.json)


def _wait(c, job: dict, as_json: bool) -> int:
    from .jobs.spec import TERMINAL_STATES

    out = sys.stderr if as_json else sys.stdout
    last = None
    t0 = time.monotonic()
    while job["state"] in ("queued", "starting"):
        key = (job["state"], job.get("wait_reason"))
        if key != last:
            last = key
            reason = f" ({job['wait_reason']})" if job.get("wait_reason") else ""
            print(f"[{time.monotonic() - t0:5.1f}s] {job['state']}{reason}", file=out, flush=True)
        time.sleep(0.2)
        job = c.get_job(job["id"])
    if job["state"] not in TERMINAL_STATES:
        print(f"[{time.monotonic() - t0:5.1f}s] running; live logs:", file=out, flush=True)
    for chunk in c.iter_logs(job["id"], follow=True):
        out.write(chunk)
        out.flush()
    job = c.wait_job(job["id"])
    reason = f": {job['exit_reason']}" if job.get("exit_reason") else ""
    print(f"[{time.monotonic() - t0:5.1f}s] {job['state']}{reason}", file=out, flush=True)
    if job["state"] == "succeeded":
        print(f"  outputs: pai-lab files ls jobs/{job['id']}/outputs", file=out)
    if as_json:
        _print_json(job)
    return 0 if job["state"] == "succeeded" else 1


def cmd_job_list(args) -> int:
    c = _client(args)
    owner = args.owner
    if args.mine:
        owner = c.me()["name"]
    out = c.list_jobs(owner=owner, state=args.state, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(out)
        return 0
    _table(
        [
            [
                j["id"],
                j["name"],
                j["state"],
                j["owner"],
                j["spec"].get("profile"),
                _ago(j["created_at"]),
                _dur(j["duration"]),
            ]
            for j in out["jobs"]
        ],
        ["id", "name", "state", "owner", "profile", "created", "duration"],
    )
    if out["total"] > len(out["jobs"]) + args.offset:
        print(f"({len(out['jobs'])} of {out['total']}; use --offset/--limit for more)")
    return 0


def cmd_job_show(args) -> int:
    job = _client(args).get_job(args.id)
    if args.json:
        _print_json(job)
        return 0
    for k in (
        "id",
        "name",
        "workspace",
        "owner",
        "state",
        "attempt",
        "created_at",
        "started_at",
        "finished_at",
        "exit_reason",
        "wait_reason",
    ):
        if job.get(k) is not None:
            print(f"{k:12} {job[k]}")
    print(f"{'duration':12} {_dur(job['duration'])}")
    print(f"{'spec':12} {json.dumps(job['spec'])}")
    if job["metrics"]:
        print("metrics:")
        for m in job["metrics"]:
            step = f" (step {m['step']})" if m.get("step") is not None else ""
            print(f"  {m['name']} = {m['value']}{step}")
    print(f"outputs:     pai://jobs/{job['id']}/outputs/")
    return 0


def cmd_job_logs(args) -> int:
    for chunk in _client(args).iter_logs(args.id, follow=args.follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return 0


def cmd_job_cancel(args) -> int:
    job = _client(args).cancel_job(args.id)
    print(f"cancel requested for {job['id']} ({job['state']})")
    return 0


def cmd_job_wait(args) -> int:
    c = _client(args)
    return _wait(c, c.get_job(args.id), args.json)


# ---- files ---------------------------------------------------------------------------
def _pai_path(p: str) -> str | None:
    return p[len("pai://") :] if p.startswith("pai://") else None


def cmd_files_ls(args) -> int:
    path = _pai_path(args.path) if _pai_path(args.path) is not None else args.path
    entries = _client(args).list_files(path)
    if args.json:
        _print_json(entries)
        return 0
    _table(
        [
            [
                e["name"] + ("/" if e["type"] == "directory" else ""),
                "" if e["size"] is None else e["size"],
                e.get("modified") or "",
            ]
            for e in entries
        ],
        ["name", "size", "modified"],
    )
    return 0


def cmd_files_cp(args) -> int:
    c = _client(args)
    src, dst = _pai_path(args.src), _pai_path(args.dst)
    if (src is None) == (dst is None):
        raise BadRequest("files cp: exactly one of SRC and DST must be a pai:// path")
    if src is not None:
        local = args.dst
        if os.path.isdir(local):
            local = os.path.join(local, src.rstrip("/").rsplit("/", 1)[-1])
        n = c.download(src, local)
        print(f"downloaded pai://{src} -> {local} ({n} bytes)")
    else:
        if not os.path.isfile(args.src):
            raise BadRequest(f"{args.src}: no such file")
        if dst.endswith("/") or dst == "":
            dst = dst + os.path.basename(args.src)
        info = c.upload(dst, args.src)
        print(f"uploaded {args.src} -> pai://{dst} ({info['size']} bytes)")
    return 0


def cmd_files_rm(args) -> int:
    path = _pai_path(args.path) if _pai_path(args.path) is not None else args.path
    _client(args).delete_file(path, recursive=args.recursive)
    print(f"deleted pai://{path}")
    return 0


# ---- parser --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="control plane URL (env PAI_LAB_URL)")
    common.add_argument("--token", help="API token (env PAI_LAB_TOKEN)")
    common.add_argument(
        "-w", "--workspace", help="workspace (env PAI_LAB_WORKSPACE, default 'default')"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(
        prog="pai-lab", description="pai-lab: notebooks, training jobs, artifacts, models."
    )
    p.add_argument("--version", action="version", version=f"pai-lab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "control", help="run the control plane (REST API, jobs, storage)", add_help=False
    )
    c.set_defaults(func=None, passthrough=cmd_control)

    s = sub.add_parser("me", parents=[common], help="who am I, and my workspaces")
    s.set_defaults(func=cmd_me)
    s = sub.add_parser("profiles", parents=[common], help="CPU/GPU profiles on offer")
    s.set_defaults(func=cmd_profiles)

    ws = sub.add_parser("workspace", help="workspaces and members").add_subparsers(
        dest="sub", metavar="ACTION", required=True
    )
    s = ws.add_parser("list", parents=[common], help="my workspaces")
    s.set_defaults(func=cmd_ws_list)
    s = ws.add_parser("create", parents=[common], help="create a workspace (platform admins)")
    s.add_argument("name")
    s.add_argument("--description", default="")
    s.add_argument(
        "--quota",
        action="append",
        metavar="K=V",
        help="max_concurrent_jobs, max_queued_jobs, max_gpus",
    )
    s.set_defaults(func=cmd_ws_create)
    s = ws.add_parser("show", parents=[common], help="a workspace with its members and quotas")
    s.add_argument("name", nargs="?")
    s.set_defaults(func=cmd_ws_show)
    s = ws.add_parser("add-member", parents=[common], help="add a member or change a role")
    s.add_argument("user")
    s.add_argument("role", choices=["viewer", "developer", "operator", "admin"])
    s.add_argument("--name", help="workspace (default: --workspace)")
    s.set_defaults(func=cmd_ws_add)
    s = ws.add_parser("remove-member", parents=[common], help="remove a member")
    s.add_argument("user")
    s.add_argument("--name", help="workspace (default: --workspace)")
    s.set_defaults(func=cmd_ws_remove)
    s = ws.add_parser("quota", parents=[common], help="change quotas (workspace admins)")
    s.add_argument("quota", nargs="+", metavar="K=V")
    s.add_argument("--name", help="workspace (default: --workspace)")
    s.set_defaults(func=cmd_ws_quota)

    s = sub.add_parser(
        "audit", parents=[common], help="the workspace's audit log (operators, admins)"
    )
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--action")
    s.add_argument("--outcome", choices=["ok", "denied", "refused", "error"])
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser(
        "token", parents=[common], help="mint an API token for a user (platform admins)"
    )
    s.add_argument("user")
    s.add_argument("--note", default="")
    s.set_defaults(func=cmd_token)

    job = sub.add_parser("job", help="training jobs").add_subparsers(
        dest="sub", metavar="ACTION", required=True
    )
    s = job.add_parser(
        "submit", parents=[common], help="run a notebook, script or command as a job"
    )
    s.add_argument("source", help="notebook (.ipynb) or script (.py); with --command, the program")
    s.add_argument("command_args", nargs="*", help="arguments of --command (put them after --)")
    s.add_argument(
        "--command", action="store_true", help="SOURCE and what follows is a command line"
    )
    s.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="K=V",
        help="papermill parameter (JSON value or string)",
    )
    s.add_argument("--profile", help="profile (see `pai-lab profiles`)")
    s.add_argument("--gpu", type=int, help="GPUs per worker")
    s.add_argument("--workers", type=int, help="distributed workers (torch)")
    s.add_argument("--max-runtime", help="seconds or e.g. 30m, 2h")
    s.add_argument("--retries", type=int)
    s.add_argument("--env", action="append", metavar="K=V")
    s.add_argument(
        "-o", "--output", action="append", metavar="PATH", help="file to keep in jobs/<id>/outputs/"
    )
    s.add_argument(
        "-f", "--file", action="append", metavar="PATH", help="sibling file to ship with the job"
    )
    s.add_argument("--name")
    s.add_argument("--idempotency-key")
    s.add_argument(
        "--wait", action="store_true", help="show progress and live logs; exit 1 unless it succeeds"
    )
    s.set_defaults(func=cmd_job_submit)
    s = job.add_parser("list", parents=[common], help="jobs in the workspace, newest first")
    s.add_argument("--state")
    s.add_argument("--owner")
    s.add_argument("--mine", action="store_true")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--offset", type=int, default=0)
    s.set_defaults(func=cmd_job_list)
    for name, fn, hlp in (
        ("show", cmd_job_show, "a job's state, metrics and spec"),
        ("cancel", cmd_job_cancel, "cancel a job"),
        ("wait", cmd_job_wait, "wait for a job, with live logs"),
    ):
        s = job.add_parser(name, parents=[common], help=hlp)
        s.add_argument("id")
        s.set_defaults(func=fn)
    s = job.add_parser("logs", parents=[common], help="a job's log")
    s.add_argument("id")
    s.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    s.set_defaults(func=cmd_job_logs)

    files = sub.add_parser("files", help="workspace artifacts (pai://)").add_subparsers(
        dest="sub", metavar="ACTION", required=True
    )
    s = files.add_parser("ls", parents=[common], help="list a folder")
    s.add_argument("path", nargs="?", default="")
    s.set_defaults(func=cmd_files_ls)
    s = files.add_parser("cp", parents=[common], help="copy between pai:// and local files")
    s.add_argument("src")
    s.add_argument("dst")
    s.set_defaults(func=cmd_files_cp)
    s = files.add_parser("rm", parents=[common], help="delete a file (or a folder with -r)")
    s.add_argument("path")
    s.add_argument("-r", "--recursive", action="store_true")
    s.set_defaults(func=cmd_files_rm)

    for mod in PLUGINS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        m.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["control"]:
        return cmd_control(None, argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PaiError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
