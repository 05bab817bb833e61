"""JupyterHub integration: profiles, spawners, authenticator, idle culler, control plane.

``jupyterhub_config.py`` (repo root) calls :func:`configure`; ``pai-lab up`` starts a hub
with that same file. ``configure`` only *fills in* what the config has not set yet, so a
deployer can set any JupyterHub option before the call and keep it, or after it to
override ours.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from pai_lab.hub.settings import PaiHub

__all__ = ["configure", "PaiHub", "CONTROL_SERVICE", "CULLER_SERVICE"]

CONTROL_SERVICE = "pai"
CULLER_SERVICE = "idle-culler"

# Least scopes (from jupyterhub-idle-culler's README): list users, read their activity and
# servers, stop servers. Not admin:users (we never --cull-users).
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
# The control plane reads who users are and which groups they are in (admin flag,
# hub groups for /api/v1/me); it never changes the hub.
CONTROL_SCOPES = ["list:users", "read:users", "list:groups", "read:groups"]
ACCESS_PAI = f"access:services!service={CONTROL_SERVICE}"
# JupyterHub's default 'server' role (tokens of single-user servers), plus the control plane.
SERVER_SCOPES = ["users:activity!user", "access:servers!server", ACCESS_PAI]
USER_SCOPES = ["self", ACCESS_PAI]

OAUTH_AUTHENTICATORS = {
    "github": "github",
    "gitlab": "gitlab",
    "generic-oauth": "generic-oauth",
}


def _setdefault(section: Any, key: str, value: Any) -> None:
    if key not in section:
        section[key] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure(c: Any, mode: str | None = None) -> PaiHub:
    """Wire pai-lab into a JupyterHub config object ``c`` (from ``get_config()``).

    ``mode`` overrides ``c.PaiHub.mode`` / ``$PAI_LAB_MODE`` ('local' or 'kubernetes').
    Returns the resolved :class:`PaiHub` settings.
    """
    settings = PaiHub(config=c)
    if mode:
        settings.mode = mode
    data = settings.data_path()
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    # Processes the hub starts (services, authenticator defaults) find the data dir here.
    os.environ["PAI_LAB_DATA_DIR"] = str(data)

    hub = c.JupyterHub
    _setdefault(hub, "db_url", f"sqlite:///{data / 'jupyterhub.sqlite'}")
    _setdefault(hub, "cookie_secret_file", str(data / "jupyterhub_cookie_secret"))
    _setdefault(hub, "pid_file", str(data / "jupyterhub.pid"))
    _setdefault(c.ConfigurableHTTPProxy, "pid_file", str(data / "jupyterhub-proxy.pid"))
    _setdefault(c.Spawner, "default_url", "/lab")
    if os.geteuid() == 0:
        # jupyter_server refuses to run as root without it (local mode as root).
        args = list(c.Spawner.args) if "args" in c.Spawner else []
        if "--allow-root" not in args:
            c.Spawner.args = args + ["--allow-root"]

    from pai_lab.hub.profiles import Profiles

    profiles = Profiles(config=c)
    all_profiles = profiles.all()  # fail at start, with the field named, not at spawn
    _configure_authenticator(c, settings, data)
    _configure_announcements(c, all_profiles)

    control_url = _configure_services(c, settings, data, all_profiles)

    if settings.mode == "kubernetes":
        try:
            from pai_lab.hub.kubernetes import configure_kubernetes
        except ImportError as e:
            raise NotImplementedError(
                "PAI_LAB_MODE=kubernetes needs pai_lab/hub/kubernetes.py "
                f"(configure_kubernetes), which is not available: {e}"
            ) from e
        configure_kubernetes(c, profiles)
        _configure_control_roles(c)
    else:
        # The proxy's API on a free loopback port: two hubs on one machine never collide.
        _setdefault(c.ConfigurableHTTPProxy, "api_url", f"http://127.0.0.1:{_free_port()}")
        _setdefault(hub, "spawner_class", "pai_lab.hub.spawner.LocalProfileSpawner")
        # JupyterHub's 30 s for a server to answer is short for a small, busy machine
        # (seen: 40 s on 2 loaded cores); a server that dies is reported at once anyway.
        _setdefault(c.Spawner, "http_timeout", 120)
        _setdefault(c.LocalProfileSpawner, "data_dir", str(data))
        if control_url:
            _setdefault(c.LocalProfileSpawner, "control_url", control_url)
        _configure_control_roles(c)
    return settings


def _configure_authenticator(c: Any, settings: PaiHub, data: Path) -> None:
    hub = c.JupyterHub
    admins = set(c.Authenticator.admin_users) if "admin_users" in c.Authenticator else set()
    if settings.authenticator == "native":
        _setdefault(hub, "authenticator_class", "pai_lab.hub.auth.PaiNativeAuthenticator")
        if settings.admin_user:
            admins.add(settings.admin_user)
        _setdefault(c.PaiNativeAuthenticator, "first_admin", settings.admin_user)
        _setdefault(c.PaiNativeAuthenticator, "admin_password_file", str(data / "admin-password"))
        _setdefault(c.NativeAuthenticator, "open_signup", False)
    else:
        _setdefault(hub, "authenticator_class", OAUTH_AUTHENTICATORS[settings.authenticator])
    c.Authenticator.admin_users = admins


def _configure_announcements(c: Any, profiles: list) -> None:
    from pai_lab.hub.spawner import format_duration

    parts = [
        f"{p.display_name.split(' (')[0]}: {format_duration(p.idle_timeout)}" for p in profiles
    ]
    text = (
        "Idle servers are stopped automatically ("
        + ", ".join(parts)
        + " without activity). Training jobs keep running."
    )
    tv = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
    tv.setdefault("announcement_home", text)
    tv.setdefault("announcement_spawn", text)
    c.JupyterHub.template_vars = tv


def _configure_services(c: Any, settings: PaiHub, data: Path, profiles: list) -> str:
    """Idle culler and control plane as hub-managed services, with least-scope roles."""
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    names = {s.get("name") for s in services}
    role_names = {r.get("name") for r in roles}

    timeout = settings.idle_cull_timeout or max(
        [p.idle_timeout for p in profiles if p.idle_timeout > 0] or [3600]
    )
    every = settings.idle_cull_every or max(1, min(300, timeout // 10))
    if CULLER_SERVICE not in names:
        services.append(
            {
                "name": CULLER_SERVICE,
                "command": [
                    sys.executable,
                    "-m",
                    "jupyterhub_idle_culler",
                    f"--timeout={timeout}",
                    f"--cull-every={every}",
                ],
            }
        )
    if "pai-idle-culler" not in role_names:
        roles.append(
            {
                "name": "pai-idle-culler",
                "description": "Stop idle servers (least scopes for jupyterhub-idle-culler)",
                "scopes": CULLER_SCOPES,
                "services": [CULLER_SERVICE],
            }
        )

    control_url = ""
    # Kubernetes: the control plane is its own Deployment, registered as an external
    # service by configure_kubernetes(); locally the hub starts and stops it.
    managed = settings.mode == "local"
    if settings.control_plane and managed and CONTROL_SERVICE not in names:
        port = settings.control_port or _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "pai_lab.control",
            "--data-dir",
            str(data),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--PaiControl.identity_provider_class=pai_lab.control.hub_identity.HubIdentityProvider",
        ]
        command += [f"--{k}={v}" for k, v in settings.control_args.items()]
        env = {"PAI_LAB_DATA_DIR": str(data), "PAI_LAB_MODE": settings.mode}
        for key in ("PAI_LAB_GPUS", "PYTHONPATH"):
            if key in os.environ:
                env[key] = os.environ[key]
        services.append(
            {
                "name": CONTROL_SERVICE,
                "url": url,
                "command": command,
                "environment": env,
                "oauth_no_confirm": True,  # our own service: no "authorize access?" page
                # People reach it through the lab's PAI sidebar, not the hub's Services menu.
                "display": False,
                "info": {"description": "pai-lab control plane (jobs, models, deployments)"},
            }
        )
        control_url = f"{url}/services/{CONTROL_SERVICE}"
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    return control_url


def _configure_control_roles(c: Any) -> None:
    """Roles for the control plane, once a service named 'pai' exists (managed locally,
    external on Kubernetes): what it may read, and who may call it."""
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    if not any(s.get("name") == CONTROL_SERVICE for s in services):
        return
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    if not any(r.get("name") == "pai-control-plane" for r in roles):
        roles.append(
            {
                "name": "pai-control-plane",
                "description": "Read hub users and groups (identity for the control plane)",
                "scopes": CONTROL_SCOPES,
                "services": [CONTROL_SERVICE],
            }
        )
    # Browsers, CLI tokens and single-user servers may call the control plane.
    for name, scopes in (("user", USER_SCOPES), ("server", SERVER_SCOPES)):
        existing = next((r for r in roles if r.get("name") == name), None)
        if existing is None:
            roles.append({"name": name, "scopes": list(scopes)})
        else:
            existing["scopes"] = sorted(set(existing.get("scopes", [])) | set(scopes))
    c.JupyterHub.load_roles = roles
