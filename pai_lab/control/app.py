"""``PaiControl``: the control-plane application (``pai-lab control``).

It can run on its own (token auth, ``pai-lab control``), as a JupyterHub service (hub
identity, base URL from ``JUPYTERHUB_SERVICE_PREFIX``), or embedded in a jupyter_server
(standalone mode: ``await app.start()`` inside the server's event loop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application as WebApp
from traitlets import Bool, Integer, Type, Unicode, default
from traitlets.config import Application

from .. import __version__
from ..hub.profiles import Profiles
from ..jobs.base import JobRun
from ..storage import ArtifactStore
from .audit import AuditLog
from .auth import TokenIdentityProvider, load_or_create_admin_token
from .db import Database
from .deployments import DeploymentService
from .handlers import files, jobs, meta, workspaces
from .handlers.base import NotFoundHandler
from .identity import IdentityProvider
from .scheduler import Scheduler
from .workspaces import ROLES, Workspaces

JOB_BACKENDS = {
    "local": "pai_lab.jobs.local.LocalJobBackend",
    "kubernetes": "pai_lab.jobs.kubernetes.KubernetesJobBackend",
}


def _import(dotted: str):
    import importlib

    mod, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(mod), name)


class PaiControl(Application):
    name = "pai-lab-control"
    description = "The pai-lab control plane: workspaces, jobs, artifacts, models, deployments."
    version = __version__

    classes = [Profiles, ArtifactStore, TokenIdentityProvider, DeploymentService]

    aliases = {
        "ip": "PaiControl.ip",
        "port": "PaiControl.port",
        "data-dir": "PaiControl.data_dir",
        "db-url": "PaiControl.db_url",
        "token": "PaiControl.token",
        "base-url": "PaiControl.base_url",
        "public-url": "PaiControl.public_url",
        "job-backend": "PaiControl.job_backend",
        "store-url": "ArtifactStore.url",
        "config": "PaiControl.config_file",
        "log-level": "Application.log_level",
    }

    config_file = Unicode("", help="A Python config file to load (c.PaiControl...).").tag(
        config=True
    )
    ip = Unicode("127.0.0.1", help="Interface to listen on.").tag(config=True)
    port = Integer(8585, help="Port to listen on (0 picks a free one).").tag(config=True)
    data_dir = Unicode(
        help="Where the database, admin token, artifact store and job runs live."
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("PAI_LAB_DATA_DIR") or str(Path.home() / ".pai-lab")

    db_url = Unicode(
        "", help="SQLAlchemy URL of the database (default: sqlite file <data_dir>/pai-lab.sqlite)."
    ).tag(config=True)
    token = Unicode(
        "",
        help="Admin token. Default: generated at first start into <data_dir>/admin-token (0600).",
    ).tag(config=True)
    admin_user = Unicode("admin", help="The user name the admin token acts as.").tag(config=True)
    base_url = Unicode(help="URL prefix (under JupyterHub: /services/pai/).").tag(config=True)

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    public_url = Unicode(
        "",
        help="URL jobs and links use to reach this API (default: http://<ip>:<port><base_url>).",
    ).tag(config=True)
    job_backend = Unicode(
        "local", help="Job backend: 'local', 'kubernetes' or a dotted JobBackend class."
    ).tag(config=True)
    identity_provider_class = Type(
        TokenIdentityProvider,
        klass=IdentityProvider,
        help="How callers are identified (token auth; hub auth in JupyterHub mode).",
    ).tag(config=True)
    default_workspace_role = Unicode(
        "developer",
        help=f"Role new users get in workspace 'default' on first sight ({', '.join(ROLES)}), or '' for none.",
    ).tag(config=True)
    max_upload_bytes = Integer(
        10 * 2**30, help="Largest file accepted by a single upload, in bytes."
    ).tag(config=True)
    print_token = Bool(True, help="Print the admin token at start (off when embedded).").tag(
        config=True
    )

    # --- lifecycle --------------------------------------------------------------------
    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.ip}:{self.port}{self.base_url}"

    @property
    def api_url(self) -> str:
        return self.url.rstrip("/") + "/api/v1"

    async def start_async(self) -> None:
        """Open the database, attach to running jobs and listen; returns once serving."""
        loop = asyncio.get_running_loop()
        Path(self.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_data_dir()
        if not self.base_url.endswith("/"):
            self.base_url += "/"
        db_url = self.db_url or f"sqlite:///{Path(self.data_dir) / 'pai-lab.sqlite'}"
        self.db = Database(db_url)
        await loop.run_in_executor(None, self.db.upgrade)
        # Pay nbformat's import once, off the loop, not on the first submission.
        from ..jobs.spec import _nbformat

        loop.run_in_executor(None, _nbformat)
        self.admin_token = load_or_create_admin_token(self.data_dir, self.token)
        self.profiles = Profiles(parent=self)
        self.store = ArtifactStore(parent=self, data_dir=self.data_dir)
        self.audit = AuditLog(self.db, self.log)
        self.workspaces = Workspaces(self.db, self.default_workspace_role)
        await self.workspaces.ensure_default()
        if issubclass(self.identity_provider_class, TokenIdentityProvider):
            self.identity_provider = self.identity_provider_class(
                parent=self, admin_token=self.admin_token, db=self.db
            )
            self.identity_provider.admin_user = self.admin_user
        else:
            self.identity_provider = self.identity_provider_class(parent=self, db=self.db)

        sockets = bind_sockets(self.port, self.ip)
        self.port = sockets[0].getsockname()[1]
        backend_cls = _import(JOB_BACKENDS.get(self.job_backend, self.job_backend))

        def make_backend(report):
            return backend_cls(parent=self, store=self.store, report=report, data_dir=self.data_dir)

        self.scheduler = Scheduler(
            db=self.db,
            store=self.store,
            backend_factory=make_backend,
            profiles=self.profiles,
            audit=self.audit,
            log=self.log,
            api_url=self.api_url,
        )
        self.web_app = WebApp(self.handlers(), pai_control=self, compress_response=False)
        self.http_server = HTTPServer(
            self.web_app, max_body_size=self.max_upload_bytes, idle_connection_timeout=3600
        )
        self.http_server.add_sockets(sockets)
        await self.scheduler.reconcile()
        from .handlers import registry

        # Re-attach deployments now rather than on the first deployment API call.
        self._deployments_ready = asyncio.ensure_future(registry.on_start(self))
        self.log.info("pai-lab control plane %s listening on %s", __version__, self.url)

    def _lock_data_dir(self) -> None:
        """One control plane per data dir: two would run every queued job twice."""
        import fcntl

        path = Path(self.data_dir) / "control.lock"
        self._lock_file = open(path, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise OSError(
                f"another pai-lab control plane is already using the data dir {self.data_dir}"
            ) from None

    def handlers(self) -> list:
        api = self.base_url + "api/v1"
        ws = api + r"/workspaces/([^/]+)"
        routes = [
            (api + r"/health", meta.HealthHandler),
            (api + r"/openapi.json", meta.OpenAPIHandler),
            (api + r"/me", workspaces.MeHandler),
            (api + r"/profiles", workspaces.ProfilesHandler),
            (api + r"/users/([^/]+)/tokens", workspaces.UserTokensHandler),
            (api + r"/workspaces/?", workspaces.WorkspacesHandler),
            (ws + r"/?", workspaces.WorkspaceHandler),
            (ws + r"/members/?", workspaces.MembersHandler),
            (ws + r"/members/([^/]+)", workspaces.MemberHandler),
            (ws + r"/audit", workspaces.AuditHandler),
            (ws + r"/jobs/?", jobs.JobsHandler),
            (ws + r"/jobs/([^/]+)", jobs.JobHandler),
            (ws + r"/jobs/([^/]+)/logs", jobs.JobLogsHandler),
            (ws + r"/jobs/([^/]+)/cancel", jobs.JobCancelHandler),
            (ws + r"/files/?(.*)", files.FilesHandler),
        ]
        routes += self.extra_routes(api, ws)
        routes += self.identity_provider.extra_handlers(self.base_url)
        routes.append((self.base_url + r".*", NotFoundHandler))
        return routes

    def extra_routes(self, api: str, ws: str) -> list:
        """Routes of the model registry and deployments."""
        from .handlers import registry

        return registry.routes(api, ws)

    def kick(self) -> None:
        """Re-run the queue (after a quota change, say)."""
        asyncio.ensure_future(self.scheduler.dispatch())

    def profile_unavailable_reason(self, profile) -> str | None:
        probe = JobRun(
            id="",
            workspace="",
            owner="",
            attempt=1,
            spec={"resources": {"gpu": profile.gpu}, "workers": 1},
            profile=profile.to_dict(),
        )
        return self.scheduler.backend.unavailable_reason(probe)

    async def stop_async(self) -> None:
        """Stop serving; running jobs keep running (they are reattached at next start)."""
        if getattr(self, "http_server", None):
            self.http_server.stop()
        if getattr(self, "scheduler", None):
            await self.scheduler.shutdown()
        if getattr(self, "store", None):
            self.store.close()
        if getattr(self, "db", None):
            await asyncio.get_running_loop().run_in_executor(None, self.db.close)
        if getattr(self, "_lock_file", None):
            self._lock_file.close()

    # Embedding API used by the jupyter_server extension.
    async def start(self) -> None:  # type: ignore[override]
        await self.start_async()

    async def stop(self) -> None:
        await self.stop_async()

    def print_banner(self) -> None:
        print(f"pai-lab control plane {__version__}", flush=True)
        print(f"  URL:        {self.url}", flush=True)
        print(f"  data dir:   {self.data_dir}", flush=True)
        if self.print_token and isinstance(self.identity_provider, TokenIdentityProvider):
            print(
                f"  admin token: {self.admin_token}  (also in {Path(self.data_dir) / 'admin-token'})",
                flush=True,
            )
            print("  use it with:", flush=True)
            print(
                f"    export PAI_LAB_URL={self.url} PAI_LAB_TOKEN=$(cat {Path(self.data_dir) / 'admin-token'})",
                flush=True,
            )

    @classmethod
    def launch(cls, argv=None) -> int:
        """Run until SIGINT/SIGTERM (``pai-lab control``)."""
        app = cls.instance()
        app.initialize(argv)

        async def main() -> None:
            await app.start_async()
            app.print_banner()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            app.log.info("stopping control plane (running jobs keep running)")
            await app.stop_async()

        try:
            asyncio.run(main())
        except OSError as e:
            print(f"pai-lab control: cannot start: {e}", file=sys.stderr)
            return 1
        return 0


def main(argv=None) -> int:
    return PaiControl.launch(argv)
