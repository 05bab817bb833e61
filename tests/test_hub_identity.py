"""The control plane with HubIdentityProvider when the hub is down: a real control-plane
process configured as the hub service 'pai', pointed at a hub API nobody listens on.

(With a running hub it is exercised end to end in test_hub.py.)
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import requests

from tests.support.common import free_port
from tests.support.hub import control_plane_available

pytestmark = pytest.mark.skipif(
    not control_plane_available(), reason="control plane not in the tree yet"
)


@pytest.fixture
def control_without_hub(data_dir, tmp_path):
    port, dead = free_port(), free_port()
    env = dict(
        os.environ,
        JUPYTERHUB_API_TOKEN="service-token-for-test",
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{dead}/hub/api",
        JUPYTERHUB_CLIENT_ID="service-pai",
        JUPYTERHUB_SERVICE_PREFIX="/services/pai/",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
        JUPYTERHUB_OAUTH_CALLBACK_URL="/services/pai/oauth_callback",
        JUPYTERHUB_OAUTH_ACCESS_SCOPES='["access:services!service=pai"]',
        JUPYTERHUB_BASE_URL="/",
        JUPYTERHUB_HOST="",
    )
    log = open(tmp_path / "control.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pai_lab.control",
            "--data-dir",
            str(data_dir),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--PaiControl.identity_provider_class=pai_lab.control.hub_identity.HubIdentityProvider",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/services/pai"
    deadline = time.monotonic() + 120  # hang guard only
    while True:
        assert proc.poll() is None, (tmp_path / "control.log").read_text()
        try:
            requests.get(f"{url}/api/v1/health", timeout=5)
            break
        except requests.RequestException:
            assert time.monotonic() < deadline, (tmp_path / "control.log").read_text()
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


def test_hub_down_is_503_not_401_and_own_tokens_still_work(control_without_hub, data_dir):
    url = control_without_hub
    r = requests.get(f"{url}/api/v1/me", headers={"Authorization": "token some-hub-token"})
    assert r.status_code == 503, r.text
    assert "cannot reach JupyterHub" in r.json()["error"]["message"]
    # No credentials at all: still a plain 401.
    r = requests.get(f"{url}/api/v1/me")
    assert r.status_code == 401, r.text
    # The control plane's own admin token does not depend on the hub.
    admin = (data_dir / "admin-token").read_text().strip()
    r = requests.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    assert r.json()["admin"] is True
    # The service cookie key is kept private, for cookies that survive restarts.
    secret = data_dir / "hub-service-cookie-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
