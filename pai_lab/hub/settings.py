"""The few hub settings a deployer changes, as one traitlets class (``c.PaiHub.*``).

``configure(c)`` reads them from the same config object JupyterHub loads, so a deployer
sets ``c.PaiHub.mode = "kubernetes"`` (or ``PAI_LAB_MODE``) in ``jupyterhub_config.py``
before calling ``configure(c)`` and can still override any plain JupyterHub setting after.
"""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Bool, CaselessStrEnum, Dict, Integer, Unicode, default
from traitlets.config import Configurable

MODES = ("local", "kubernetes")
AUTHENTICATORS = ("native", "github", "gitlab", "generic-oauth")


class PaiHub(Configurable):
    """pai-lab's hub-level settings (everything else is plain JupyterHub config)."""

    mode = CaselessStrEnum(
        MODES,
        help="""Where user servers run: 'local' (processes on this machine, the default)
        or 'kubernetes' (KubeSpawner pods). Default: $PAI_LAB_MODE, else 'local'.""",
    ).tag(config=True)

    @default("mode")
    def _default_mode(self) -> str:
        return (os.environ.get("PAI_LAB_MODE") or "local").strip().lower()

    data_dir = Unicode(
        help="""Directory for the hub database, cookie secret, admin password, user
        folders (local mode), logs and the control plane's data. Default:
        $PAI_LAB_DATA_DIR, else ~/.pai-lab.""",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("PAI_LAB_DATA_DIR") or str(Path("~/.pai-lab").expanduser())

    authenticator = CaselessStrEnum(
        AUTHENTICATORS,
        default_value="native",
        help="""How people log in: 'native' (local accounts with hashed passwords and
        admin approval; an 'admin' account is created on first start), or an OAuth
        provider ('github', 'gitlab', 'generic-oauth'; configure the matching
        oauthenticator class, see docs/hub.md).""",
    ).tag(config=True)

    admin_user = Unicode(
        "admin",
        help="Name of the first admin account (native authenticator creates it with a generated password).",
    ).tag(config=True)

    idle_cull_timeout = Integer(
        0,
        help="""Seconds of inactivity after which the idle culler stops any server
        (0: the longest per-profile idle_timeout). Per-profile timeouts are enforced
        earlier by each server itself.""",
    ).tag(config=True)

    idle_cull_every = Integer(
        0,
        help="How often (seconds) the culler checks (0: a tenth of the timeout, between 1 and 300).",
    ).tag(config=True)

    control_plane = Bool(
        True,
        help="Run the pai control plane as the hub-managed service 'pai' at /services/pai/.",
    ).tag(config=True)

    control_port = Integer(
        0,
        help="Loopback port of the control plane service (0: pick a free one at start).",
    ).tag(config=True)

    control_args = Dict(
        help="""Extra '--Class.trait=value' settings for the control plane process,
        as {"PaiControl.job_backend": "local"}.""",
    ).tag(config=True)

    def data_path(self, *parts: str) -> Path:
        """A path under the data dir (created on demand by callers)."""
        return Path(self.data_dir).expanduser().absolute().joinpath(*parts)
