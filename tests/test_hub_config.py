"""configure(c) on a real traitlets Config: what a hub started with it will do.

(The hub itself, started with this config, is exercised in test_hub.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

import pai_lab.hub as hub
from pai_lab.hub.spawner import format_duration, parse_bytes
from pai_lab.hub.up import CONFIG_FILE, build_command


@pytest.fixture
def cfg(data_dir, monkeypatch):
    monkeypatch.setenv("PAI_LAB_DATA_DIR", str(data_dir))  # restored after the test
    monkeypatch.delenv("PAI_LAB_MODE", raising=False)
    monkeypatch.delenv("PAI_LAB_CONTROL_URL", raising=False)
    c = Config()
    c.PaiHub.data_dir = str(data_dir)
    return c


def _roles(c):
    return {r["name"]: r for r in c.JupyterHub.load_roles}


def _services(c):
    return {s["name"]: s for s in c.JupyterHub.services}


def test_local_defaults_are_safe_and_wired(cfg, data_dir):
    settings = hub.configure(cfg)
    assert settings.mode == "local"
    assert cfg.JupyterHub.spawner_class == "pai_lab.hub.spawner.LocalProfileSpawner"
    assert cfg.JupyterHub.authenticator_class == "pai_lab.hub.auth.PaiNativeAuthenticator"
    assert cfg.NativeAuthenticator.open_signup is False
    assert "admin" in cfg.Authenticator.admin_users
    assert cfg.PaiNativeAuthenticator.admin_password_file == str(data_dir / "admin-password")
    assert cfg.JupyterHub.db_url == f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    assert cfg.JupyterHub.cookie_secret_file == str(data_dir / "jupyterhub_cookie_secret")
    assert oct(data_dir.stat().st_mode & 0o777) == oct(0o700)
    if os.geteuid() == 0:
        assert "--allow-root" in cfg.Spawner.args

    services = _services(cfg)
    culler = services["idle-culler"]
    assert culler["command"][1:3] == ["-m", "jupyterhub_idle_culler"]
    assert "--timeout=3600" in culler["command"]  # the longest profile idle time
    pai = services["pai"]
    assert pai["url"].startswith("http://127.0.0.1:")
    assert pai["command"][1:3] == ["-m", "pai_lab.control"]
    assert (
        "--PaiControl.identity_provider_class=pai_lab.control.hub_identity.HubIdentityProvider"
        in pai["command"]
    )
    assert pai["oauth_no_confirm"] is True
    assert cfg.LocalProfileSpawner.control_url == pai["url"] + "/services/pai"

    roles = _roles(cfg)
    assert roles["pai-idle-culler"]["scopes"] == [
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
    ]
    assert roles["pai-idle-culler"]["services"] == ["idle-culler"]
    assert not any(s.startswith("admin") for s in roles["pai-control-plane"]["scopes"])
    assert "access:services!service=pai" in roles["user"]["scopes"]
    assert "self" in roles["user"]["scopes"]
    # the server role keeps JupyterHub's defaults and adds the control plane
    assert set(roles["server"]["scopes"]) == {
        "users:activity!user",
        "access:servers!server",
        "access:services!service=pai",
    }
    tv = cfg.JupyterHub.template_vars
    assert "GPU: 20 min" in tv["announcement_home"]


def test_settings_made_before_configure_win(cfg):
    cfg.JupyterHub.db_url = "postgresql://hub@db/hub"
    cfg.JupyterHub.authenticator_class = "github"
    cfg.PaiHub.idle_cull_timeout = 600
    cfg.PaiHub.control_plane = False
    cfg.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "read:groups"]}]
    hub.configure(cfg)
    assert cfg.JupyterHub.db_url == "postgresql://hub@db/hub"
    assert cfg.JupyterHub.authenticator_class == "github"
    assert "pai" not in _services(cfg)
    assert "--timeout=600" in _services(cfg)["idle-culler"]["command"]
    assert _roles(cfg)["user"]["scopes"] == ["self", "read:groups"]  # untouched: no pai


def test_oauth_choice_sets_the_authenticator(cfg):
    cfg.PaiHub.authenticator = "generic-oauth"
    hub.configure(cfg)
    assert cfg.JupyterHub.authenticator_class == "generic-oauth"
    assert "PaiNativeAuthenticator" not in cfg


def test_bad_profile_fails_at_configure_naming_the_field(cfg):
    cfg.Profiles.profiles = [{"slug": "x", "display_name": "X", "gpus": 1}]
    with pytest.raises(ValueError, match="gpus"):
        hub.configure(cfg)


def test_kubernetes_mode_uses_kubespawner_and_an_external_control_plane(cfg, monkeypatch):
    monkeypatch.setenv("PAI_LAB_CONTROL_URL", "http://pai-control.pai.svc:8585")
    hub.configure(cfg, mode="kubernetes")
    assert cfg.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    pai = _services(cfg)["pai"]
    assert pai["url"] == "http://pai-control.pai.svc:8585"
    assert "command" not in pai  # its own Deployment, not a process in the hub pod
    assert "idle-culler" in _services(cfg)
    assert "access:services!service=pai" in _roles(cfg)["server"]["scopes"]
    assert "LocalProfileSpawner" not in cfg


def test_env_picks_the_mode(cfg, monkeypatch):
    monkeypatch.setenv("PAI_LAB_MODE", "Kubernetes")
    assert hub.configure(cfg).mode == "kubernetes"
    monkeypatch.setenv("PAI_LAB_MODE", "swarm")
    with pytest.raises(Exception, match="swarm"):
        hub.configure(Config())


def test_quantities_and_durations():
    assert parse_bytes("2Gi") == 2 * 1024**3
    assert parse_bytes("512Mi") == 512 * 1024**2
    assert parse_bytes("1G") == 10**9
    assert parse_bytes(None) is None
    with pytest.raises(ValueError, match="2 gigs"):
        parse_bytes("2 gigs")
    assert format_duration(1200) == "20 min"
    assert format_duration(3600) == "60 min"
    assert format_duration(4 * 3600) == "4 h"
    assert format_duration(30) == "30 s"


def test_up_builds_the_jupyterhub_command(tmp_path):
    import argparse

    args = argparse.Namespace(ip="0.0.0.0", port=8123, data_dir=str(tmp_path / "d"), config=None)
    cmd, env = build_command(args)
    assert cmd[1:5] == ["-m", "jupyterhub", "-f", str(CONFIG_FILE)]
    assert "--JupyterHub.bind_url=http://0.0.0.0:8123" in cmd
    assert env["PAI_LAB_DATA_DIR"] == str(tmp_path / "d")
    assert Path(CONFIG_FILE).exists()


def test_up_without_the_proxy_says_how_to_get_it(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.hub.up", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "npm install -g configurable-http-proxy" in r.stderr
    assert "Traceback" not in r.stderr


def test_up_refuses_a_busy_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pai_lab.hub.up",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
        )
    assert r.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in r.stderr
