"""KubeSpawner configured by pai_lab.hub.kubernetes: its own get_pod_manifest, offline.

The recipe (FIELD-NOTES "Kubernetes without a cluster"): a fake kubeconfig pointing at
a closed port, ``KubeSpawner(_mock=True)``, a mock user, ``load_user_options()`` for the
profile, then ``get_pod_manifest()``; the serialised pod must validate strictly.
"""

from __future__ import annotations

from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from pai_lab.hub.kubernetes import configure_kubernetes, memory_bytes, profile_list
from pai_lab.hub.profiles import Profiles

CONTROL = "http://pai-lab-control.pai-lab.svc.cluster.local:8090"


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "fake", "user": {"token": "x"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "fake", "namespace": "pai-lab"},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # kubernetes_asyncio reads $KUBECONFIG once, at import (maybe by an earlier test)
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return path


def hub_config(**kwargs) -> Config:
    c = Config()
    c.JupyterHub.services = [{"name": "pai", "url": "http://old:1"}]  # as Z2JH would set it
    configure_kubernetes(c, Profiles(), control_url=CONTROL, storage_class="fast-ssd", **kwargs)
    return c


async def pod_for(c: Config, slug: str) -> dict:
    from kubernetes_asyncio.client import ApiClient
    from kubespawner import KubeSpawner

    user = SimpleNamespace(
        name="alice",
        id=7,
        url="/user/alice/",
        escaped_name="alice",
        server=SimpleNamespace(base_url="/user/alice/"),
        spawners={},
    )
    hub = SimpleNamespace(
        public_host="",
        url="http://hub:8081/hub/",
        base_url="/hub/",
        api_url="http://hub:8081/hub/api",
    )
    spawner = KubeSpawner(config=c, _mock=True, user=user, hub=hub)
    spawner.user_options = {"profile": slug}
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    return ApiClient().sanitize_for_serialization(pod), spawner


@pytest.mark.parametrize("slug", [p.slug for p in Profiles().all()])
async def test_every_profile_gives_a_valid_pod(kubeconfig, slug):
    profile = Profiles().get(slug)
    pod, spawner = await pod_for(hub_config(), slug)
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    c = pod["spec"]["containers"][0]
    assert c["image"] == profile.image
    limits = c["resources"]["limits"]
    assert (
        int(limits["memory"])
        == memory_bytes(profile.mem_limit)
        == int(profile.mem_limit[:-2]) * 2**30
    )
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PAI_LAB_URL"] == CONTROL + "/services/pai" and env["PAI_PROFILE"] == slug
    # the per-user PVC is the home directory
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["home"]["persistentVolumeClaim"]["claimName"] == spawner.pvc_name == "claim-alice"
    assert {"name": "home", "mountPath": "/home/jovyan"} in [
        {k: m[k] for k in ("name", "mountPath")} for m in c["volumeMounts"]
    ]
    if profile.gpu:
        assert limits["nvidia.com/gpu"] == str(profile.gpu)
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    else:
        assert "nvidia.com/gpu" not in limits
        assert not pod["spec"].get("nodeSelector")


async def test_pvc_manifest_uses_capacity_and_class(kubeconfig):
    _, spawner = await pod_for(hub_config(storage_capacity="20Gi"), "cpu-small")
    from kubernetes_asyncio.client import ApiClient

    pvc = ApiClient().sanitize_for_serialization(spawner.get_pvc_manifest())
    kubernetes_validate.validate(pvc, "1.37.0", strict=True)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvc["spec"]["storageClassName"] == "fast-ssd"


def test_control_plane_is_an_external_hub_service():
    c = hub_config(api_token="t0k")
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    (svc,) = c.JupyterHub.services
    assert svc["name"] == "pai" and svc["url"] == CONTROL and "command" not in svc
    assert svc["oauth_no_confirm"] is True
    c2 = Config()
    configure_kubernetes(c2, Profiles(), control_url=CONTROL, api_token="t0k")
    assert c2.JupyterHub.services == [
        {
            "name": "pai",
            "url": CONTROL,
            "oauth_no_confirm": True,
            "display": True,
            "api_token": "t0k",
        }
    ]


def test_profile_list_has_exactly_one_default_and_custom_gpu_placement():
    profiles = [
        {"slug": "a", "display_name": "A", "default": True},
        {"slug": "b", "display_name": "B", "default": True, "gpu": 2},
    ]
    entries = profile_list(profiles, gpu_resource="amd.com/gpu", gpu_node_selector={"pool": "gpu"})
    assert [e["default"] for e in entries] == [True, False]
    b = entries[1]["kubespawner_override"]
    assert b["extra_resource_limits"] == {"amd.com/gpu": "2"}
    assert b["node_selector"] == {"pool": "gpu"}


def test_called_by_hub_configure_without_a_url(monkeypatch):
    """``pai_lab.hub.configure(c)`` calls ``configure_kubernetes(c, profiles)``."""
    monkeypatch.delenv("PAI_LAB_CONTROL_URL", raising=False)
    c = Config()
    configure_kubernetes(c, Profiles())
    assert c.KubeSpawner.profile_list and "PAI_LAB_URL" not in c.KubeSpawner.environment
    assert "services" not in c.JupyterHub
    monkeypatch.setenv("PAI_LAB_CONTROL_URL", CONTROL)
    c = Config()
    configure_kubernetes(c, Profiles())
    assert c.JupyterHub.services[0]["url"] == CONTROL
    assert c.KubeSpawner.environment["PAI_LAB_URL"] == CONTROL + "/services/pai"
    # no store access for user pods: pai:// goes through the control plane
    assert not any(k.startswith("PAI_STORE") for k in c.KubeSpawner.environment)
