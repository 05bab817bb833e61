"""``pai-lab model ...`` and ``pai-lab deploy ...``: the registry and deployments from a shell.

``cli.py`` calls :func:`register` with its subparsers; every subcommand's ``func(args)``
returns the exit code (errors print one line and exit 1 through ``cli.main``)::

    pai-lab model register iris --from-job ID --path outputs/model.joblib --framework sklearn
    pai-lab model list | show iris | versions iris
    pai-lab model gate iris "accuracy >= 0.9"          # operators
    pai-lab model promote iris 3 --alias production    # prints the gate verdict; exit 1 if refused
    pai-lab model alias-rm iris staging
    pai-lab model score iris@production --input pai://datasets/x.csv --output pai://scores/x.csv [--wait]
    pai-lab deploy create iris-svc --model iris@production --replicas 2
    pai-lab deploy traffic iris-svc --canary iris:4=10  # --canary none removes it
    pai-lab deploy scale iris-svc --replicas 3 [--min 1 --max 4]
    pai-lab deploy show iris-svc | list | delete iris-svc

``--json`` prints the API's answer instead of a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import BadRequest, GateFailed


def _common() -> argparse.ArgumentParser:
    """The same global options ``cli.py`` puts on its own subcommands."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--url", help="control plane URL (env PAI_LAB_URL)")
    c.add_argument("--token", help="API token (env PAI_LAB_TOKEN)")
    c.add_argument("-w", "--workspace", help="workspace (env PAI_LAB_WORKSPACE, default 'default')")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    return c


def _client(args):
    from .cli import _client as make

    return make(args)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    from .cli import _table as table

    table(rows, header)


def _metrics(m: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())


# ---- model ---------------------------------------------------------------------------------
def cmd_register(args) -> int:
    if bool(args.from_job) == bool(args.artifact):
        raise BadRequest("give --from-job ID (with --path) or --artifact PATH")
    tags = {}
    for t in args.tag or []:
        k, _, v = t.partition("=")
        tags[k] = v
    v = _client(args).register_model(
        args.name,
        from_job=args.from_job,
        path=args.path if args.from_job else None,
        artifact=args.artifact,
        framework=args.framework,
        tags=tags or None,
        description=args.description,
    )
    if args.json:
        _print_json(v)
    else:
        print(f"registered {v['model']} version {v['version']} ({v['framework']})")
        if v["metrics"]:
            print(f"  metrics: {_metrics(v['metrics'])}")
        print(f"  files:   pai://{v['path']}")
    return 0


def cmd_list(args) -> int:
    models = _client(args).list_models()
    if args.json:
        _print_json(models)
        return 0
    _table(
        [
            [
                m["name"],
                m["latest_version"],
                ", ".join(f"{a}->{n}" for a, n in sorted(m["aliases"].items())),
                m["gate"],
                m["description"],
            ]
            for m in models
        ],
        ["model", "latest", "aliases", "gate", "description"],
    )
    return 0


def cmd_show(args) -> int:
    m = _client(args).get_model(args.name)
    if args.json:
        _print_json(m)
        return 0
    print(f"{m['name']}  {m['description']}".rstrip())
    print(f"gate:    {m['gate'] or '(none)'}")
    print(
        "aliases: "
        + (", ".join(f"{a} -> {n}" for a, n in sorted(m["aliases"].items())) or "(none)")
    )
    _table(
        [
            [
                v["version"],
                v["framework"],
                ",".join(v["aliases"]),
                _metrics(v["metrics"]),
                v["source_job"] or v["lineage"].get("source"),
                v["created_by"],
                v["created_at"],
            ]
            for v in m["versions"]
        ],
        ["version", "framework", "aliases", "metrics", "source", "by", "created"],
    )
    return 0


def cmd_gate(args) -> int:
    m = _client(args).set_gate(args.name, args.gate)
    _print_json(m) if args.json else print(f"gate of {m['name']}: {m['gate'] or '(none)'}")
    return 0


def cmd_promote(args) -> int:
    try:
        m = _client(args).set_alias(args.name, args.alias, args.version)
    except GateFailed as e:
        verdict = getattr(e, "gate", None)
        if args.json:
            _print_json({"error": e.message, "gate": verdict})
        else:
            print(f"refused: {e.message}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(m)
    else:
        print(f"{args.name}@{args.alias} -> version {m['aliases'][args.alias]}")
        print(f"  {m['gate_result']['summary']}")
    return 0


def cmd_alias_rm(args) -> int:
    _client(args).delete_alias(args.name, args.alias)
    print(f"removed {args.name}@{args.alias}")
    return 0


def cmd_score(args) -> int:
    c = _client(args)
    job = c.score(
        args.model,
        args.input,
        args.output,
        proba=args.proba,
        columns=args.columns.split(",") if args.columns else None,
        **({"profile": args.profile} if args.profile else {}),
    )
    if not args.wait:
        _print_json(job) if args.json else print(f"submitted scoring job {job['id']}")
        return 0
    job = c.wait_job(job["id"])
    if args.json:
        _print_json(job)
    else:
        print(
            f"scoring job {job['id']} {job['state']}"
            + (f": {job['exit_reason']}" if job["exit_reason"] else "")
        )
    return 0 if job["state"] == "succeeded" else 1


# ---- deploy --------------------------------------------------------------------------------
def _show_deployment(d: dict, token: str | None = None) -> None:
    print(f"{d['name']}  state={d['state']}{'  (production)' if d['production'] else ''}")
    print(f"  url:      {d['url'] or '(not serving)'}")
    if token:
        print(f"  token:    {token}   <- shown once; store it now")
    else:
        print(f"  token:    {d['token_hint'] or '?'} (hint; the token was shown at creation)")
    h = d["health"]
    print(
        f"  health:   {h['state']}, {h['ready_replicas']}/{h['replicas']} replicas ready"
        + (f" ({h['error']})" if h.get("error") else "")
    )
    print("  traffic:  " + ", ".join(f"{n}={t:g}%" for n, t in d["traffic"].items()))
    _table(
        [
            [
                v["name"],
                f"{v['model']}:{v['version']}",
                v["ref"],
                "shadow" if v["shadow"] else f"{v['traffic']:g}%",
                f"{v['ready_replicas'] if v['ready_replicas'] is not None else '?'}/{v['replicas']}",
                f"{v['min_replicas']}-{v['max_replicas']}",
                v["requests"],
            ]
            for v in d["variants"]
        ],
        ["variant", "model", "from", "traffic", "ready", "min-max", "requests"],
    )
    if d["url"]:
        model = d["variants"][0]["model"]
        print(
            f'  try:      curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" '
            f"-d @req.json {d['url'].rstrip('/')}/v2/models/{model}/infer"
        )


def cmd_deploy_create(args) -> int:
    d = _client(args).create_deployment(
        args.name,
        args.model,
        args.replicas,
        min_replicas=args.min,
        max_replicas=args.max,
    )
    if args.json:
        _print_json(d)
    else:
        _show_deployment(d, token=d.get("token"))
    return 0


def _parse_canary(text: str) -> tuple[str | None, float]:
    if text.lower() in ("none", "off", "0"):
        return None, 0
    ref, sep, pct = text.rpartition("=")
    if not sep or not ref:
        raise BadRequest(f"--canary {text!r}: expected MODEL:VERSION=PERCENT, e.g. iris:4=10")
    try:
        value = float(pct)
    except ValueError:
        raise BadRequest(f"--canary {text!r}: {pct!r} is not a percentage") from None
    return ref, int(value) if value.is_integer() else value


def cmd_deploy_traffic(args) -> int:
    c = _client(args)
    if args.canary is not None:
        ref, pct = _parse_canary(args.canary)
        d = c.set_canary(args.name, ref, pct)
    elif args.variant:
        variants = []
        for item in args.variant:
            shadow = item.endswith(":shadow") or item.endswith(" shadow")
            item = item.rsplit(":shadow", 1)[0].rsplit(" shadow", 1)[0] if shadow else item
            ref, pct = _parse_canary(item) if "=" in item else (item, None)
            v: dict[str, Any] = {"model": ref, "shadow": shadow}
            if pct is not None:
                v["traffic"] = pct
            variants.append(v)
        d = c.update_deployment(args.name, variants=variants)
    else:
        raise BadRequest("give --canary MODEL:VERSION=PERCENT or --variant ... (repeatable)")
    _print_json(d) if args.json else _show_deployment(d)
    return 0


def cmd_deploy_scale(args) -> int:
    patch = {
        k: v
        for k, v in (
            ("replicas", args.replicas),
            ("min_replicas", args.min),
            ("max_replicas", args.max),
        )
        if v is not None
    }
    if args.model:
        patch["model"] = args.model
    if not patch:
        raise BadRequest("give --replicas, --min, --max or --model")
    d = _client(args).update_deployment(args.name, **patch)
    _print_json(d) if args.json else _show_deployment(d)
    return 0


def cmd_deploy_show(args) -> int:
    d = _client(args).get_deployment(args.name)
    _print_json(d) if args.json else _show_deployment(d)
    return 0


def cmd_deploy_list(args) -> int:
    deps = _client(args).list_deployments()
    if args.json:
        _print_json(deps)
        return 0
    _table(
        [
            [
                d["name"],
                d["state"],
                d["model"],
                ", ".join(f"{n}={t:g}%" for n, t in d["traffic"].items()),
                f"{d['health']['ready_replicas']}/{d['health']['replicas']}",
                d["url"],
            ]
            for d in deps
        ],
        ["deployment", "state", "model", "traffic", "ready", "url"],
    )
    return 0


def cmd_deploy_delete(args) -> int:
    _client(args).delete_deployment(args.name)
    print(f"deleted deployment {args.name}")
    return 0


# ---- parser --------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` and ``deploy`` to the ``pai-lab`` command line."""
    common = _common()
    model = subparsers.add_parser(
        "model", help="model registry: versions, aliases, gates"
    ).add_subparsers(dest="model_command", metavar="COMMAND")
    s = model.add_parser("register", parents=[common], help="register a new version of a model")
    s.add_argument("name")
    s.add_argument("--from-job", help="job whose output to register")
    s.add_argument(
        "--path",
        default="outputs/model.joblib",
        help="file in the job folder (default: outputs/model.joblib)",
    )
    s.add_argument("--artifact", help="or: a workspace file/folder (pai://... or a path)")
    s.add_argument(
        "--framework", choices=["sklearn", "torch"], help="default: from the file suffix"
    )
    s.add_argument("--description")
    s.add_argument("--tag", action="append", metavar="KEY=VALUE")
    s.set_defaults(func=cmd_register)

    s = model.add_parser("list", parents=[common], help="models in the workspace")
    s.set_defaults(func=cmd_list)
    for name in ("show", "versions"):
        s = model.add_parser(name, parents=[common], help="a model: gate, aliases, versions")
        s.add_argument("name")
        s.set_defaults(func=cmd_show)

    s = model.add_parser("gate", parents=[common], help="set the evaluation gate ('' clears it)")
    s.add_argument("name")
    s.add_argument("gate", help='e.g. "accuracy >= 0.9 and latency_p99_ms < 20"')
    s.set_defaults(func=cmd_gate)

    s = model.add_parser("promote", parents=[common], help="move an alias to a version (gated)")
    s.add_argument("name")
    s.add_argument("version")
    s.add_argument("--alias", default="production", help="default: production")
    s.set_defaults(func=cmd_promote)

    s = model.add_parser("alias-rm", parents=[common], help="remove an alias")
    s.add_argument("name")
    s.add_argument("alias")
    s.set_defaults(func=cmd_alias_rm)

    s = model.add_parser(
        "score", parents=[common], help="batch-score a CSV with a model (as a job)"
    )
    s.add_argument("model", help="iris@production, iris:3 or iris (latest)")
    s.add_argument("--input", required=True, help="CSV in the workspace (pai://datasets/x.csv)")
    s.add_argument("--output", required=True, help="CSV to write (pai://scores/x.csv)")
    s.add_argument("--proba", action="store_true", help="add class-probability columns")
    s.add_argument("--columns", help="comma-separated feature columns (default: numeric ones)")
    s.add_argument("--profile", help="job profile")
    s.add_argument("--wait", action="store_true", help="wait for the job; exit 1 if it fails")
    s.set_defaults(func=cmd_score)

    dep = subparsers.add_parser(
        "deploy", help="model endpoints (Open Inference Protocol V2)"
    ).add_subparsers(dest="deploy_command", metavar="COMMAND")
    s = dep.add_parser("create", parents=[common], help="deploy a model version")
    s.add_argument("name")
    s.add_argument("--model", required=True, help="iris@production, iris:3 or iris (latest)")
    s.add_argument("--replicas", type=int)
    s.add_argument("--min", type=int, help="autoscaling minimum replicas")
    s.add_argument("--max", type=int, help="autoscaling maximum replicas")
    s.set_defaults(func=cmd_deploy_create)

    s = dep.add_parser("traffic", parents=[common], help="canary or full traffic split")
    s.add_argument("name")
    s.add_argument("--canary", help="MODEL:VERSION=PERCENT (e.g. iris:4=10), or 'none'")
    s.add_argument(
        "--variant",
        action="append",
        help="MODEL:VERSION=PERCENT, repeatable; append ':shadow' to mirror only",
    )
    s.set_defaults(func=cmd_deploy_traffic)

    s = dep.add_parser("scale", parents=[common], help="replica counts, or re-point the main model")
    s.add_argument("name")
    s.add_argument("--replicas", type=int)
    s.add_argument("--min", type=int)
    s.add_argument("--max", type=int)
    s.add_argument("--model", help="re-resolve the main variant (e.g. iris@production)")
    s.set_defaults(func=cmd_deploy_scale)

    for name, fn, hlp in (
        ("show", cmd_deploy_show, "URL, token hint, replicas, traffic, health"),
        ("delete", cmd_deploy_delete, "stop and remove a deployment"),
    ):
        s = dep.add_parser(name, parents=[common], help=hlp)
        s.add_argument("name")
        s.set_defaults(func=fn)
    s = dep.add_parser("list", parents=[common], help="deployments in the workspace")
    s.set_defaults(func=cmd_deploy_list)
