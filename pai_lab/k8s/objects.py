"""Kubernetes objects for pai-lab, as plain functions returning plain dicts.

Plain functions (in the style of kubespawner's ``objects.py``) keep every manifest
testable without a cluster: each result is validated against the Kubernetes JSON schemas
in the tests, and ``render`` only strings them together. Nothing here talks to an API.
"""

from __future__ import annotations

from typing import Any

PART_OF = "pai-lab"
MANAGED_BY = "pai-lab"
LABEL_COMPONENT = "app.kubernetes.io/component"
# Pod labels set by Zero to JupyterHub, used to select hub, proxy and user pods.
Z2JH_HUB = {"app": "jupyterhub", "component": "hub"}
Z2JH_PROXY = {"app": "jupyterhub", "component": "proxy"}
Z2JH_SINGLEUSER = {"app": "jupyterhub", "component": "singleuser-server"}
# Z2JH's hub NetworkPolicy admits pods carrying this label (the control plane calls the hub API).
Z2JH_HUB_ACCESS = {"hub.jupyter.org/network-access-hub": "true"}


def labels(component: str, name: str = PART_OF, **extra: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io`` labels; ``name``+``component`` select pods."""
    out = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_COMPONENT: component,
    }
    out.update(extra)
    return out


def selector(component: str, name: str = PART_OF) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, LABEL_COMPONENT: component}


def meta(name: str, namespace: str | None, lbls: dict, annotations: dict | None = None) -> dict:
    m: dict[str, Any] = {"name": name, "labels": dict(lbls)}
    if namespace:
        m["namespace"] = namespace
    if annotations:
        m["annotations"] = dict(annotations)
    return m


def make_namespace(name: str, lbls: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(name, None, lbls or {})}


def make_service_account(name: str, namespace: str, lbls: dict, automount: bool = True) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(name, namespace, lbls),
        "automountServiceAccountToken": automount,
    }


def control_plane_rules(
    serving_backend: str, jobs: bool = True, serving: bool = True
) -> list[dict]:
    """Least privilege: Jobs, PyTorchJobs, pods (read), pod logs, InferenceServices.

    With the plain-Deployment serving backend, Deployments/Services/HPAs replace
    InferenceServices. No Secrets, no ConfigMaps, no exec: a compromised control plane
    cannot read credentials of the namespaces it schedules into.
    """
    write = ["get", "list", "watch", "create", "delete"]
    rules = []
    if jobs:
        rules += [
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": write},
            {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": write},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ]
    if serving:
        if serving_backend == "kserve":
            rules.append(
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices"],
                    "verbs": write + ["patch", "update"],
                }
            )
        else:
            rules += [
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "verbs": write + ["patch", "update"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["services"],
                    "verbs": write + ["patch", "update"],
                },
                {
                    "apiGroups": ["autoscaling"],
                    "resources": ["horizontalpodautoscalers"],
                    "verbs": write + ["patch", "update"],
                },
            ]
        if not jobs:
            rules += [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            ]
    return rules


def make_role(name: str, namespace: str, lbls: dict, rules: list[dict]) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(name, namespace, lbls),
        "rules": rules,
    }


def make_role_binding(
    name: str, namespace: str, lbls: dict, role: str, sa_name: str, sa_namespace: str
) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(name, namespace, lbls),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}],
    }


def make_config_map(name: str, namespace: str, lbls: dict, data: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(name, namespace, lbls),
        "data": data,
    }


def secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def restricted_security_context() -> dict:
    """The Pod Security Standard 'restricted' profile for a container."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def make_deployment(
    name: str,
    namespace: str,
    lbls: dict,
    match: dict,
    container: dict,
    *,
    replicas: int = 1,
    service_account: str | None = None,
    volumes: list | None = None,
    image_pull_secrets: list[str] | None = None,
    annotations: dict | None = None,
    strategy: str | None = None,
    pod_labels: dict | None = None,
) -> dict:
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100},
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    else:
        pod_spec["automountServiceAccountToken"] = False
    if volumes:
        pod_spec["volumes"] = volumes
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": dict(match)},
        "template": {
            "metadata": {
                "labels": {**lbls, **(pod_labels or {})},
                **({"annotations": annotations} if annotations else {}),
            },
            "spec": pod_spec,
        },
    }
    if strategy:
        spec["strategy"] = {"type": strategy}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, namespace, lbls),
        "spec": spec,
    }


def make_service(
    name: str, namespace: str, lbls: dict, match: dict, port: int, target: int | str
) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, namespace, lbls),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(match),
            "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


def make_hpa(
    name: str, namespace: str, lbls: dict, target: str, min_r: int, max_r: int, cpu: int = 70
) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(name, namespace, lbls),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": max(1, min_r),
            "maxReplicas": max(1, min_r, max_r),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": cpu},
                    },
                }
            ],
        },
    }


def make_network_policy(
    name: str,
    namespace: str,
    lbls: dict,
    pod_selector: dict,
    *,
    ingress: list | None = None,
    egress: list | None = None,
) -> dict:
    """``ingress``/``egress`` None: that direction is not restricted; []: deny all."""
    types = []
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": dict(pod_selector)} if pod_selector else {}
    }
    if ingress is not None:
        types.append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        types.append("Egress")
        spec["egress"] = egress
    spec["policyTypes"] = types
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(name, namespace, lbls),
        "spec": spec,
    }


def peer(pod_labels: dict | None = None, namespace: str | None = None) -> dict:
    """A NetworkPolicy peer: pods with labels, optionally in another namespace."""
    p: dict[str, Any] = {}
    if pod_labels is not None:
        p["podSelector"] = {"matchLabels": dict(pod_labels)}
    if namespace is not None:
        p["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return p


def make_resource_quota(name: str, namespace: str, lbls: dict, hard: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": meta(name, namespace, lbls),
        "spec": {"hard": dict(hard)},
    }
