"""``pai-lab up``: start JupyterHub in local mode with everything wired.

Runs ``jupyterhub -f <pai_lab/hub/jupyterhub_config.py>`` (which calls
``pai_lab.hub.configure``) in place of this process, so signals (Ctrl-C) reach JupyterHub
directly and it shuts its proxy, services and servers down cleanly. It installs nothing:
when configurable-http-proxy is missing it says how to get it and exits 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

CONFIG_FILE = Path(__file__).with_name("jupyterhub_config.py")
PROXY_HELP = (
    "pai-lab up needs configurable-http-proxy (JupyterHub's proxy, a Node.js program) on PATH.\n"
    "Install it with:  npm install -g configurable-http-proxy\n"
    "(Node.js from your package manager, e.g. `apt-get install nodejs npm`, or conda:\n"
    " `conda install -c conda-forge configurable-http-proxy`.)"
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``up`` subcommand to the ``pai-lab`` CLI."""
    p = subparsers.add_parser(
        "up",
        help="start the hub on this machine (JupyterHub + profiles + culler + control plane)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("PAI_LAB_DATA_DIR") or "~/.pai-lab",
        help="hub database, accounts, user folders, artifacts (default ~/.pai-lab)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="extra JupyterHub config file applied before pai-lab's (optional)",
    )
    p.set_defaults(func=lambda args: up(args))
    return p


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The jupyterhub command line and environment ``up`` runs (separate for tests)."""
    data_dir = Path(args.data_dir).expanduser().absolute()
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    env = dict(os.environ)
    env["PAI_LAB_DATA_DIR"] = str(data_dir)
    env.setdefault("PAI_LAB_MODE", "local")
    if getattr(args, "config", None):
        env["PAI_LAB_HUB_EXTRA_CONFIG"] = str(Path(args.config).expanduser().absolute())
    cmd = [
        sys.executable,
        "-m",
        "jupyterhub",
        "-f",
        str(CONFIG_FILE),
        f"--JupyterHub.bind_url=http://{host}:{args.port}",
        # The hub's internal API on a free loopback port: two hubs never collide on 8081.
        f"--JupyterHub.hub_bind_url=http://127.0.0.1:{_free_port()}",
    ]
    return cmd, env


def up(args: argparse.Namespace) -> int:
    """Check prerequisites, print how to log in, then become JupyterHub."""
    if not shutil.which("configurable-http-proxy"):
        print(PROXY_HELP, file=sys.stderr)
        return 1
    if not _port_free(args.ip, args.port):
        print(
            f"pai-lab up: {args.ip}:{args.port} is already in use; pick another with --port.",
            file=sys.stderr,
        )
        return 1
    cmd, env = build_command(args)
    data_dir = Path(env["PAI_LAB_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    shown = "127.0.0.1" if args.ip in ("0.0.0.0", "::", "") else args.ip
    pw = data_dir / "admin-password"
    print(f"pai-lab: starting JupyterHub at http://{shown}:{args.port}/  (data in {data_dir})")
    if pw.exists():
        print(f"pai-lab: log in as 'admin'; the password is in {pw}")
    else:
        print(
            "pai-lab: log in as 'admin'; on this first start the password is printed below "
            f"and kept in {pw} until you change it."
        )
    print("pai-lab: new users sign up at /hub/signup and an admin approves them at /hub/authorize")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pai-lab")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["up", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
