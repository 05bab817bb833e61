"""The ``pai-lab k8s`` command group: ``render`` and ``z2jh-values``.

``register(subparsers)`` is called by ``pai_lab.cli``; every subcommand sets
``func(args) -> int`` and reports bad values as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import PaiError


def _render(args: argparse.Namespace) -> int:
    from .render import render

    try:
        text = render(args.values)
    except PaiError as e:
        print(f"pai-lab k8s render: {e.message}", file=sys.stderr)
        return 2
    if args.output and args.output != "-":
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _z2jh(args: argparse.Namespace) -> int:
    from .z2jh import render_z2jh

    try:
        text = render_z2jh(args.values)
    except PaiError as e:
        print(f"pai-lab k8s z2jh-values: {e.message}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    # Written to a file and its path printed, so `helm ... -f $(pai-lab k8s z2jh-values ...)` works.
    path = os.path.abspath(args.output)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``k8s render`` and ``k8s z2jh-values`` to the ``pai-lab`` parser."""
    k8s = subparsers.add_parser("k8s", help="Kubernetes mode: render manifests and Helm values")
    k8s.set_defaults(func=lambda args: (k8s.print_help(), 2)[1])
    sub = k8s.add_subparsers(dest="k8s_command", metavar="{render,z2jh-values}")

    r = sub.add_parser(
        "render",
        help="Print every pai-lab object (control plane, RBAC, namespaces, NetworkPolicies) as YAML",
    )
    r.add_argument("--values", "-f", default=None, help="values file (YAML); defaults if omitted")
    r.add_argument("--output", "-o", default="-", help="write to this file instead of stdout")
    r.set_defaults(func=_render)

    z = sub.add_parser(
        "z2jh-values",
        help="Write Zero to JupyterHub chart values and print the file's path (for helm -f)",
    )
    z.add_argument("--values", "-f", default=None, help="values file (YAML); defaults if omitted")
    z.add_argument(
        "--output", "-o", default="pai-lab-z2jh-values.yaml", help="file to write ('-': stdout)"
    )
    z.set_defaults(func=_z2jh)
    return k8s


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pai_lab.k8s.commands``) until ``pai-lab`` wires it in."""
    parser = argparse.ArgumentParser(prog="pai-lab")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
