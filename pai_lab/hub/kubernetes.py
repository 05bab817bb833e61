"""KubeSpawner from the shared profiles, for the hub in Kubernetes mode.

``configure_kubernetes(c, profiles, ...)`` is what ``pai_lab.hub.configure(c)`` calls in
Kubernetes mode (and what the Z2JH ``hub.extraConfig`` written by ``pai-lab k8s
z2jh-values`` calls directly). One profile definition gives both the notebook pods and
the training jobs their image, CPU/memory, ``nvidia.com/gpu`` limit, node selector and
tolerations, so "GPU" means the same node pool for a notebook and for a job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .profiles import Profile, Profiles, parse_profile

DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
HOME = "/home/jovyan"


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(value: str | int | float) -> int:
    """'2Gi' -> 2147483648. KubeSpawner's memory traits take bytes or K/M/G/T (decimal
    in Kubernetes, binary in JupyterHub!), so profiles' Kubernetes quantities are
    converted to exact bytes rather than passed through and misread."""
    if isinstance(value, (int, float)):
        return int(value)
    v = str(value).strip()
    for suffixes in (_BINARY, _DECIMAL):
        for suffix, mult in suffixes.items():
            if v.endswith(suffix):
                return int(float(v[: -len(suffix)]) * mult)
    return int(float(v))


def _as_profiles(profiles: Profiles | Iterable[Profile | dict]) -> list[Profile]:
    if isinstance(profiles, Profiles):
        return profiles.all()
    return [p if isinstance(p, Profile) else parse_profile(dict(p)) for p in profiles]


def profile_entry(
    p: Profile,
    *,
    gpu_resource: str = "nvidia.com/gpu",
    gpu_node_selector: dict | None = None,
    gpu_tolerations: list | None = None,
) -> dict[str, Any]:
    """One ``KubeSpawner.profile_list`` entry for a pai-lab profile."""
    override: dict[str, Any] = {"environment": {**p.env, "PAI_PROFILE": p.slug}}
    if p.image:
        override["image"] = p.image
    for key in ("cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit"):
        value = getattr(p, key)
        if value is not None:
            override[key] = memory_bytes(value) if key.startswith("mem_") else value
    if p.gpu:
        override["extra_resource_limits"] = {gpu_resource: str(p.gpu)}
        override["extra_resource_guarantees"] = {gpu_resource: str(p.gpu)}
        override["environment"]["PAI_GPUS"] = str(p.gpu)
    node_selector = dict(p.node_selector) or (
        dict(gpu_node_selector if gpu_node_selector is not None else DEFAULT_GPU_NODE_SELECTOR)
        if p.gpu
        else {}
    )
    tolerations = list(p.tolerations) or (
        list(gpu_tolerations if gpu_tolerations is not None else DEFAULT_GPU_TOLERATIONS)
        if p.gpu
        else []
    )
    if node_selector:
        override["node_selector"] = node_selector
    if tolerations:
        override["tolerations"] = tolerations
    return {
        "slug": p.slug,
        "display_name": p.display_name,
        "description": p.description,
        "default": bool(p.default),
        "kubespawner_override": override,
    }


def profile_list(profiles: Profiles | Iterable[Profile | dict], **kwargs: Any) -> list[dict]:
    """``KubeSpawner.profile_list`` for all profiles (exactly one marked default)."""
    entries = [profile_entry(p, **kwargs) for p in _as_profiles(profiles)]
    if entries and not any(e["default"] for e in entries):
        entries[0]["default"] = True
    seen = False
    for e in entries:  # KubeSpawner wants at most one default
        if e["default"] and seen:
            e["default"] = False
        seen = seen or e["default"]
    return entries


def configure_kubernetes(
    c: Any,
    profiles: Profiles | Iterable[Profile | dict],
    *,
    control_url: str | None = None,
    service_name: str = "pai",
    api_token: str | None = None,
    storage_capacity: str = "10Gi",
    storage_class: str | None = None,
    gpu_resource: str = "nvidia.com/gpu",
    gpu_node_selector: dict | None = None,
    gpu_tolerations: list | None = None,
    store_url: str = "",
    store_secret: str = "",
    image_pull_policy: str = "IfNotPresent",
    namespace: str | None = None,
) -> None:
    """Configure the hub (``c``) to spawn notebook pods with KubeSpawner.

    Sets ``profile_list`` (GPU limits, node selectors, tolerations, image per profile), a
    per-user PVC mounted as the home directory, the control plane's URL in every user
    pod, and registers the control plane (its own Deployment) as an external hub service
    at ``/services/<service_name>/``. ``store_url``/``store_secret`` are accepted for symmetry
    with the job backend but not used: notebook users reach the store through the control
    plane (``pai://``), never with the platform's credentials.

    ``control_url`` defaults to ``$PAI_LAB_CONTROL_URL``, else the URL of an already
    configured hub service named ``service_name`` (e.g. Z2JH's ``hub.services``); with
    none, no service is registered and user pods get no ``PAI_LAB_URL``.
    """
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    if not control_url:
        control_url = os.environ.get("PAI_LAB_CONTROL_URL") or next(
            (s.get("url") for s in services if s.get("name") == service_name and s.get("url")),
            None,
        )
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    ks = c.KubeSpawner
    ks.profile_list = profile_list(
        profiles,
        gpu_resource=gpu_resource,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
    )
    if namespace:
        ks.namespace = namespace
    ks.image_pull_policy = image_pull_policy
    # one PVC per user, mounted as the home directory; it outlives the pod
    ks.storage_pvc_ensure = True
    ks.pvc_name_template = "claim-{user_server}"
    ks.storage_capacity = storage_capacity
    ks.storage_access_modes = ["ReadWriteOnce"]
    if storage_class:
        ks.storage_class = storage_class
    ks.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
    ks.volume_mounts = [{"name": "home", "mountPath": HOME}]
    ks.uid = 1000
    ks.fs_gid = 100
    ks.extra_labels = {"app.kubernetes.io/part-of": "pai-lab"}
    # pai:// in notebooks goes through the control plane (REST mode, the user's own role),
    # never straight to the bucket: no store URL or credentials in user pods.
    env = {"PAI_LAB_SERVICE": service_name}
    if control_url:
        env["PAI_LAB_URL"] = control_url.rstrip("/") + f"/services/{service_name}"
    existing = dict(ks.environment) if "environment" in ks else {}
    ks.environment = {**existing, **env}
    _ = (store_url, store_secret)

    if not control_url:
        return
    entry: dict[str, Any] = {
        "name": service_name,
        "url": control_url,
        "oauth_no_confirm": True,
        "display": True,
    }
    if api_token:
        entry["api_token"] = api_token
    for existing in services:
        if existing.get("name") == service_name:  # e.g. Z2JH's hub.services: update it
            existing.update({k: v for k, v in entry.items() if k not in existing or k == "url"})
            break
    else:
        services.append(entry)
    c.JupyterHub.services = services
