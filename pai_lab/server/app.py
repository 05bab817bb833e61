"""The jupyter_server extension: ``<base_url>pai/api/...`` in every user's server.

Three ways to find the control plane, in this order (first match wins):

1. ``c.PaiLabExtension.control_url`` or ``PAI_LAB_URL`` (token: ``control_token`` /
   ``PAI_LAB_TOKEN``, else ``JUPYTERHUB_API_TOKEN``);
2. under JupyterHub (``JUPYTERHUB_API_TOKEN`` set): the ``pai`` hub service, derived from
   the hub's URLs, with the server's own hub token;
3. otherwise **standalone**: the control plane runs inside this server process on a
   private loopback port with a random token, and stops with it.
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import os
import secrets
import socket
from urllib.parse import urlsplit, urlunsplit

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Integer, Unicode, default
from traitlets.config import Config

HUB = "hub"
REMOTE = "remote"
STANDALONE = "standalone"


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_service_url(env: dict | None = None, service: str = "pai") -> str | None:
    """The ``pai`` service URL as seen from a single-user server, from the hub's env.

    ``JUPYTERHUB_API_URL`` is ``<hub>/hub/api``; services live next to it at
    ``<hub>/services/<name>/``. (Where the hub API is only reachable internally, set
    ``PAI_LAB_URL`` in the spawner's environment instead.)
    """
    env = os.environ if env is None else env
    api = env.get("JUPYTERHUB_API_URL")
    if not api:
        return None
    parts = urlsplit(api)
    path = parts.path.rstrip("/")
    if path.endswith("/hub/api"):
        path = path[: -len("/hub/api")]
    elif path.endswith("/api"):
        path = path[: -len("/api")]
    path = f"{path}/services/{service}/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _control_config(config: Config) -> Config:
    """The part of the server's config meant for the embedded control plane.

    Only pai-lab's own sections pass (``c.PaiControl``, ``c.ArtifactStore``,
    ``c.Profiles``, ``c.*JobBackend``): jupyter_server's ``c.IdentityProvider.token``
    must not configure the control plane's identically named class.
    """
    keep = Config()
    for section, value in config.items():
        if (
            section.startswith("Pai")
            or section in ("ArtifactStore", "Profiles")
            or section.endswith("JobBackend")
        ):
            keep[section] = value
    return keep


class PaiLabExtension(ExtensionApp):
    """Serves ``/pai/api`` (a proxy to the control plane) and, standalone, hosts it."""

    name = "pai_lab"
    load_other_extensions = True

    control_url = Unicode(
        "",
        help="""URL of the pai-lab control plane (e.g. http://pai.example:8080/).
        Empty: use PAI_LAB_URL, else the JupyterHub 'pai' service, else run the
        control plane inside this server (standalone mode).""",
    ).tag(config=True)

    control_token = Unicode(
        "",
        help="""Token sent to the control plane as 'Authorization: token ...'. Empty: use
        PAI_LAB_TOKEN, else JUPYTERHUB_API_TOKEN (the server's own hub token).""",
    ).tag(config=True)

    hub_service_name = Unicode(
        "pai", help="Name of the control plane's JupyterHub service (URL /services/<name>/)."
    ).tag(config=True)

    standalone = Unicode(
        "auto",
        help="""'auto': host the control plane in-process when no control plane URL and no
        hub token are configured; 'always' or 'never' force the choice.""",
    ).tag(config=True)

    data_dir = Unicode(
        help="Standalone mode: data directory of the embedded control plane "
        "(database, artifact store, job run directories). Default: <jupyter data dir>/pai-lab."
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "pai-lab")

    standalone_user = Unicode(
        help="Standalone mode: the identity that owns jobs (admin of workspace 'default'). "
        "Default: the OS user running this server."
    ).tag(config=True)

    @default("standalone_user")
    def _default_standalone_user(self) -> str:
        try:
            return getpass.getuser()
        except Exception:
            return "user"

    default_workspace = Unicode(
        help="Workspace used when a request names none (default: PAI_LAB_WORKSPACE or 'default')."
    ).tag(config=True)

    @default("default_workspace")
    def _default_default_workspace(self) -> str:
        return os.environ.get("PAI_LAB_WORKSPACE") or "default"

    export_env = Bool(
        True,
        help="""Set PAI_LAB_URL / PAI_LAB_TOKEN in this server's environment so kernels and
        terminals it starts can use %pai and pai:// without configuration. Kernels run as
        the same user as this server, who already holds these credentials.""",
    ).tag(config=True)

    connect_timeout = Float(
        10.0, help="Seconds to wait for a connection to the control plane."
    ).tag(config=True)

    response_timeout = Float(
        300.0,
        help="Seconds to wait for the control plane's response headers (bodies then stream "
        "without a limit, so followed logs can stay open).",
    ).tag(config=True)

    max_upload_bytes = Integer(
        10 * 2**30,
        help="Largest request body streamed through /pai/api/v1 (uploads), in bytes; "
        "0 keeps jupyter_server's limit (ServerApp.max_body_size).",
    ).tag(config=True)

    startup_timeout = Float(
        60.0,
        help="Standalone mode: seconds a request waits for the embedded control plane to start.",
    ).tag(config=True)

    # ---------------------------------------------------------------- state
    mode: str = ""
    upstream_url: str = ""
    upstream_token: str = ""
    startup_error: str | None = None

    def initialize_settings(self) -> None:
        self._ready = asyncio.Event()
        self.control = None
        self._stopped = False
        env = os.environ
        url = self.control_url or env.get("PAI_LAB_URL", "")
        hub_token = env.get("JUPYTERHUB_API_TOKEN", "")
        forced = self.standalone.lower()
        if forced not in ("auto", "always", "never"):
            self.log.warning("PaiLabExtension.standalone=%r: expected auto|always|never", forced)
            forced = "auto"
        if forced == "always" or (forced == "auto" and not url and not hub_token):
            self.mode = STANDALONE
            self._port = _free_loopback_port()
            self.upstream_url = f"http://127.0.0.1:{self._port}/"
            self.upstream_token = secrets.token_urlsafe(32)
        elif url:
            # Under JupyterHub the spawner sets PAI_LAB_URL to the pai service's address.
            self.mode = HUB if hub_token else REMOTE
            self.upstream_url = url
            self.upstream_token = self.control_token or env.get("PAI_LAB_TOKEN") or hub_token
            self._ready.set()
        else:
            self.mode = HUB
            self.upstream_url = hub_service_url(service=self.hub_service_name) or ""
            self.upstream_token = self.control_token or hub_token
            if not self.upstream_url:
                self.startup_error = (
                    "JUPYTERHUB_API_TOKEN is set but JUPYTERHUB_API_URL is not: set PAI_LAB_URL "
                    "or c.PaiLabExtension.control_url"
                )
            self._ready.set()
        if not self.upstream_url.endswith("/"):
            self.upstream_url += "/"
        if self.export_env:
            self._export_env()
        self.log.info("pai-lab: %s mode, control plane at %s", self.mode, self.upstream_url)

    def _export_env(self) -> None:
        """Kernels get os.environ at start (jupyter_server's SessionManager copies it)."""
        os.environ["PAI_LAB_URL"] = self.upstream_url
        if self.upstream_token:
            os.environ["PAI_LAB_TOKEN"] = self.upstream_token
        os.environ.setdefault("PAI_LAB_WORKSPACE", self.default_workspace)
        if self.serverapp is not None:
            os.environ["PAI_LAB_JUPYTER_BASE_URL"] = self.serverapp.base_url

    def initialize_handlers(self) -> None:
        from .handlers import default_handlers

        self.handlers.extend(default_handlers)

    # -------------------------------------------------------------- lifecycle
    async def _start_jupyter_server_extension(self, serverapp) -> None:  # type: ignore[override]
        if self.mode == STANDALONE:
            await self._start_embedded()

    async def _start_embedded(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            # The first import (SQLAlchemy, the job backend...) takes seconds: not on the loop.
            mod = await loop.run_in_executor(None, importlib.import_module, "pai_lab.control.app")
            PaiControl = mod.PaiControl
            await loop.run_in_executor(
                None, lambda: os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            )
            self.control = PaiControl(
                config=_control_config(self.config),
                base_url="/",
                print_token=False,
                data_dir=self.data_dir,
                ip="127.0.0.1",
                port=self._port,
                token=self.upstream_token,
                admin_user=self.standalone_user,
            )
            await self.control.start()
            url = getattr(self.control, "url", None)
            if url and url.rstrip("/") != self.upstream_url.rstrip("/"):
                self.upstream_url = url if url.endswith("/") else url + "/"
                if self.export_env:
                    self._export_env()
            self.log.info(
                "pai-lab: embedded control plane at %s (data in %s)",
                self.upstream_url,
                self.data_dir,
            )
        except Exception as e:
            self.startup_error = f"the embedded pai-lab control plane failed to start: {e}"
            self.log.error("pai-lab: %s", self.startup_error, exc_info=True)
        finally:
            self._ready.set()

    async def wait_ready(self) -> None:
        """Block a request until the control plane is known (standalone: started)."""
        if not self._ready.is_set():
            await asyncio.wait_for(self._ready.wait(), self.startup_timeout)

    async def stop_extension(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.control is not None:
            self.log.info("pai-lab: stopping the embedded control plane")
            try:
                await self.control.stop()
            except Exception:
                self.log.warning("pai-lab: error stopping the control plane", exc_info=True)
            self.control = None

    # -------------------------------------------------------------- helpers
    def client(self, workspace: str | None = None):
        """A PaiClient speaking for this server (used from executor threads)."""
        from ..client import PaiClient

        return PaiClient(
            url=self.upstream_url,
            token=self.upstream_token or None,
            workspace=workspace or self.default_workspace,
        )
