"""``pai-lab serve``: serve a model file directly, without the registry.

``cli.py`` calls :func:`register` with its subparsers; the subcommand's ``func(args)``
returns the process exit code. Example::

    pai-lab serve ./model.joblib --name iris --port 9000 [--token T] [--workers N]

No token unless ``--token`` is given (the server then needs ``Authorization: Bearer T``
on every route but the health probes). The server binds 127.0.0.1 unless ``--host``.
"""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    from traitlets.config import Config

    from .server import ModelServer

    c = Config()
    s = c.ModelServer
    s.model_path = args.model
    s.model_name = args.name
    s.model_version = args.model_version
    s.framework = args.framework or ""
    s.host = args.host
    s.port = args.port
    s.token = args.token or ""  # explicit: no token unless --token
    s.workers = args.workers
    s.max_batch_size = args.max_batch_size
    s.max_latency_ms = args.max_latency_ms
    s.device = args.device
    s.max_body_bytes = args.max_body_bytes
    if args.port_file:
        s.port_file = args.port_file
    app = ModelServer(config=c)
    app.initialize([])
    try:
        return app.start()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"pai-lab serve: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # port in use and the like
        print(f"pai-lab serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``pai-lab`` command line."""
    p = subparsers.add_parser(
        "serve",
        help="serve a model file over the Open Inference Protocol (V2)",
        description="Serve a scikit-learn (joblib/pickle) or TorchScript (.pt) model file "
        "over the Open Inference Protocol V2 REST API, with adaptive batching and "
        "Prometheus /metrics.",
    )
    p.add_argument("model", help="model file, or a directory holding exactly one")
    p.add_argument("--name", default="model", help="model name in URLs (default: model)")
    p.add_argument("--model-version", default="1", help="version string (default: 1)")
    p.add_argument("--framework", choices=["sklearn", "torch"], help="default: from suffix")
    p.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="TCP port (default: 9000)")
    p.add_argument("--token", help="require this bearer token (default: no auth)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument(
        "--max-batch-size", type=int, default=32, help="rows per predict call; 1 = no batching"
    )
    p.add_argument(
        "--max-latency-ms", type=float, default=2.0, help="most a request waits to be batched"
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger bodies get 400"
    )
    p.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda:0)")
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)
