"""The values file of ``pai-lab k8s render`` / ``z2jh-values``: schema, defaults, checks.

One table (``SCHEMA``) defines every option with its type, default and help text, so
the loader, the error messages and ``docs/kubernetes.md`` (checked by a test to mention
every key) cannot drift apart. Unknown keys are refused with a suggestion: a typo such
as ``storage.endpont`` silently ignored would render a platform that writes nowhere.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import BadRequest


@dataclass(frozen=True)
class Option:
    """One leaf of the values file."""

    type: type | tuple
    default: Any
    help: str
    choices: tuple = ()
    nullable: bool = False


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

SCHEMA: dict[str, Any] = {
    "namespace": Option(
        str, "pai-lab", "Namespace of the hub (the Z2JH release) and the control plane."
    ),
    "nameOverride": Option(
        str, "pai-lab", "Prefix of every object's name (control plane: <prefix>-control)."
    ),
    "kubernetesVersion": Option(
        str, "1.37.0", "Kubernetes version the manifests are written for and validated against."
    ),
    "images": {
        "hub": Option(
            str, "ghcr.io/pai-lab/hub:0.1.0", "Hub image (images/hub); also runs the control plane."
        ),
        "singleuserCpu": Option(
            str, "ghcr.io/pai-lab/singleuser-cpu:0.1.0", "Notebook and job image for CPU profiles."
        ),
        "singleuserGpu": Option(
            str, "ghcr.io/pai-lab/singleuser-gpu:0.1.0", "Notebook and job image for GPU profiles."
        ),
        "modelServer": Option(
            str, "ghcr.io/pai-lab/model-server:0.1.0", "Image of deployed model servers."
        ),
        "pullPolicy": Option(
            str,
            "IfNotPresent",
            "imagePullPolicy of every container.",
            ("Always", "IfNotPresent", "Never"),
        ),
        "pullSecrets": Option(list, [], "Names of existing image pull Secrets."),
    },
    "hub": {
        "publicUrl": Option(
            str,
            "https://pai.example.org",
            "URL people open in the browser (used for OAuth callbacks).",
        ),
        "serviceName": Option(
            str, "pai", "Name of the control plane as a hub service (/services/<name>/)."
        ),
        "adminUsers": Option(list, [], "Hub admins (admins in every workspace)."),
        "allowedUsers": Option(list, [], "If not empty, only these users may log in."),
    },
    "controlPlane": {
        "replicas": Option(int, 1, "Control plane replicas (1: it owns the job queue)."),
        "port": Option(int, 8090, "Port the control plane listens on."),
        "cpu": Option(str, "500m", "CPU request of the control plane."),
        "memory": Option(str, "512Mi", "Memory request and limit of the control plane."),
    },
    "database": {
        "secretName": Option(
            str,
            "pai-lab-db",
            "Existing Secret holding the control plane's SQLAlchemy URL (PostgreSQL).",
        ),
        "secretKey": Option(
            str, "url", "Key of that Secret, e.g. postgresql+psycopg2://user:pw@host/db."
        ),
        "podLabels": Option(
            dict,
            {},
            "Labels of in-cluster PostgreSQL pods; if set, a NetworkPolicy admits only the control plane to them.",
        ),
        "port": Option(int, 5432, "PostgreSQL port (for the NetworkPolicy)."),
    },
    "storage": {
        "url": Option(
            str,
            "s3://pai-lab",
            "Artifact store URL: s3://bucket[/prefix] (AWS S3, MinIO, Alibaba OSS).",
        ),
        "endpointUrl": Option(
            str,
            "",
            "S3 endpoint for MinIO/OSS (e.g. https://oss-cn-hangzhou.aliyuncs.com); empty for AWS.",
        ),
        "region": Option(str, "", "Region of the bucket (optional)."),
        "credentialsSecret": Option(
            str,
            "pai-lab-store",
            "Existing Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; mounted with envFrom into the control plane, jobs and model servers.",
        ),
    },
    "jobs": {
        "namespace": Option(
            str,
            "pai-jobs",
            "Namespace of training jobs; may contain {workspace} for one namespace per workspace.",
        ),
        "serviceAccount": Option(
            str, "pai-job", "ServiceAccount of job pods (gets no API permissions)."
        ),
        "ttlSecondsAfterFinished": Option(
            int, 86400, "Finished Jobs are garbage-collected after this."
        ),
        "deadlineGraceSeconds": Option(
            int,
            120,
            "Added to a job's max_runtime for activeDeadlineSeconds, so the runner's own timeout (which saves outputs) fires first.",
        ),
        "propagationPolicy": Option(
            str, "Foreground", "How cancel deletes a Job's pods.", ("Foreground", "Background")
        ),
    },
    "serving": {
        "backend": Option(
            str,
            "kserve",
            "kserve: KServe InferenceService (canary via canaryTrafficPercent); deployment: plain Deployment+Service+HPA.",
            ("kserve", "deployment"),
        ),
        "namespace": Option(str, "pai-serving", "Namespace of model servers."),
    },
    "singleuser": {
        "storageCapacity": Option(
            str, "10Gi", "Size of each user's home volume (one PVC per user)."
        ),
        "storageClass": Option(
            str, "", "StorageClass of home volumes; empty: the cluster default.", nullable=True
        ),
        "profiles": Option(
            list,
            [],
            "Profiles (see pai_lab/hub/profiles.py); empty: the built-in cpu-small, cpu-large, gpu.",
        ),
        "cullTimeout": Option(
            int, 3600, "Seconds of inactivity before a notebook server is stopped."
        ),
    },
    "auth": {
        "type": Option(
            str,
            "native",
            "native (NativeAuthenticator sign-up), github, or generic (any OAuth2/OIDC provider, e.g. Keycloak, Alibaba Cloud RAM).",
            ("native", "github", "generic"),
        ),
        "clientId": Option(str, "", "OAuth client id."),
        "clientSecretName": Option(
            str,
            "pai-lab-oauth",
            "Existing Secret with key client-secret (never put the secret in values).",
        ),
        "authorizeUrl": Option(str, "", "generic: the provider's authorize URL."),
        "tokenUrl": Option(str, "", "generic: the provider's token URL."),
        "userdataUrl": Option(str, "", "generic: the provider's userinfo URL."),
        "usernameClaim": Option(
            str, "preferred_username", "generic: claim used as the hub user name."
        ),
        "allowedOrganizations": Option(
            list, [], "github: only members of these organisations may log in."
        ),
    },
    "ingress": {
        "enabled": Option(
            bool, True, "Expose the hub through an Ingress (else a LoadBalancer proxy Service)."
        ),
        "host": Option(str, "pai.example.org", "Host name of the Ingress."),
        "className": Option(str, "nginx", "ingressClassName."),
        "tlsSecretName": Option(
            str, "pai-lab-tls", "Secret with the TLS certificate (made by cert-manager or by hand)."
        ),
        "clusterIssuer": Option(
            str,
            "",
            "cert-manager ClusterIssuer that issues the certificate (e.g. letsencrypt); empty: bring your own.",
        ),
    },
    "networkPolicy": {
        "enabled": Option(
            bool,
            True,
            "Render NetworkPolicies (needs a CNI that enforces them, e.g. Calico, Cilium).",
        ),
    },
    "gpu": {
        "resourceName": Option(
            str, "nvidia.com/gpu", "Extended resource the NVIDIA device plugin advertises."
        ),
        "nodeSelector": Option(
            dict,
            {"nvidia.com/gpu.present": "true"},
            "Node labels of the GPU node pool (for GPU profiles without their own).",
        ),
        "tolerations": Option(
            list,
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "Tolerations for the GPU pool's taint (for GPU profiles without their own).",
        ),
    },
    "workspaces": Option(
        list,
        [],
        "Optional ResourceQuotas, one per workspace namespace when jobs.namespace has {workspace}: items {name, cpu, memory, gpu, pods}. The control plane enforces its own quotas (max jobs, max GPUs) regardless.",
    ),
}


def iter_options(schema: dict | None = None, prefix: str = ""):
    """Yield ``(dotted_key, Option)`` for every leaf, in file order (used by docs tests)."""
    for key, value in (schema or SCHEMA).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Option):
            yield dotted, value
        else:
            yield from iter_options(value, dotted + ".")


def defaults(schema: dict | None = None) -> dict:
    """A fresh values dict with every default."""
    out: dict = {}
    for key, value in (schema or SCHEMA).items():
        out[key] = copy.deepcopy(value.default) if isinstance(value, Option) else defaults(value)
    return out


def _type_name(t: type | tuple) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "true/false",
        list: "a list",
        dict: "a mapping",
    }
    return (
        names.get(t, getattr(t, "__name__", str(t)))
        if not isinstance(t, tuple)
        else " or ".join(_type_name(x) for x in t)
    )


def _merge(schema: dict, given: Any, out: dict, prefix: str) -> None:
    if not isinstance(given, dict):
        raise BadRequest(f"values: {prefix.rstrip('.') or 'top level'} must be a mapping")
    for key, value in given.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1)
            extra = f" (did you mean {prefix}{hint[0]}?)" if hint else ""
            raise BadRequest(f"values: unknown key {dotted!r}{extra}")
        spec = schema[key]
        if isinstance(spec, Option):
            if value is None and spec.nullable:
                out[key] = None
                continue
            ok = isinstance(value, spec.type) and not (
                isinstance(value, bool) and spec.type is not bool
            )
            if not ok:
                raise BadRequest(
                    f"values: {dotted} must be {_type_name(spec.type)}, got {type(value).__name__} {value!r}"
                )
            if spec.choices and value not in spec.choices:
                raise BadRequest(
                    f"values: {dotted} must be one of {', '.join(spec.choices)}, got {value!r}"
                )
            out[key] = copy.deepcopy(value)
        else:
            _merge(spec, value, out[key], dotted + ".")


def check_values(values: dict) -> None:
    """Cross-field checks that types alone cannot express."""
    for key in ("namespace", "nameOverride"):
        if not _DNS_LABEL.match(values[key]):
            raise BadRequest(f"values: {key} {values[key]!r} is not a valid DNS label")
    for key in ("jobs", "serving"):
        ns = values[key]["namespace"]
        if not _DNS_LABEL.match(ns.replace("{workspace}", "ws")):
            raise BadRequest(f"values: {key}.namespace {ns!r} is not a valid DNS label")
    if not re.match(r"^(s3|oss|gs|gcs|abfs|file)://", values["storage"]["url"]):
        raise BadRequest(
            f"values: storage.url {values['storage']['url']!r} must be like s3://bucket/prefix"
        )
    if values["storage"]["url"].startswith("file://"):
        raise BadRequest(
            "values: storage.url file:// cannot be shared by pods; use s3:// (MinIO/OSS/S3)"
        )
    if not 1 <= values["controlPlane"]["port"] <= 65535:
        raise BadRequest("values: controlPlane.port must be 1-65535")
    if values["controlPlane"]["replicas"] < 0:
        raise BadRequest("values: controlPlane.replicas must not be negative")
    if values["auth"]["type"] == "generic":
        for k in ("clientId", "authorizeUrl", "tokenUrl", "userdataUrl"):
            if not values["auth"][k]:
                raise BadRequest(f"values: auth.{k} is required when auth.type is generic")
    if values["auth"]["type"] == "github" and not values["auth"]["clientId"]:
        raise BadRequest("values: auth.clientId is required when auth.type is github")
    for i, ws in enumerate(values["workspaces"]):
        if not isinstance(ws, dict) or not ws.get("name"):
            raise BadRequest(f"values: workspaces[{i}] needs a name")
        bad = set(ws) - {"name", "cpu", "memory", "gpu", "pods"}
        if bad:
            raise BadRequest(f"values: workspaces[{i}]: unknown key(s) {', '.join(sorted(bad))}")
    if values["workspaces"] and "{workspace}" not in values["jobs"]["namespace"]:
        raise BadRequest(
            "values: workspaces quotas need one namespace per workspace: set jobs.namespace to e.g. 'pai-{workspace}'"
        )
    from ..hub.profiles import parse_profile

    for i, p in enumerate(values["singleuser"]["profiles"]):
        try:
            parse_profile(dict(p))
        except (ValueError, TypeError) as e:
            raise BadRequest(f"values: singleuser.profiles[{i}]: {e}") from None


def values_from_yaml(text: str, where: str = "values") -> dict:
    """Defaults merged with the YAML ``text`` of a values file."""
    try:
        given = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise BadRequest(f"values: {where} is not valid YAML: {str(e).splitlines()[0]}") from None
    return _from_given(given)


def load_values(source: str | os.PathLike | dict | None = None) -> dict:
    """Defaults merged with a values file (path) or a dict; ``BadRequest`` on bad input."""
    if source is None:
        given: Any = {}
    elif isinstance(source, dict):
        given = source
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise BadRequest(f"values: cannot read {os.fspath(source)!r}: {e.strerror}") from None
        return values_from_yaml(text, where=os.fspath(source))
    return _from_given(given)


def _from_given(given: Any) -> dict:
    values = defaults()
    _merge(SCHEMA, given, values, "")
    check_values(values)
    return values


def effective_profiles(values: dict) -> list[dict]:
    """The profiles in force, with the image and GPU placement filled in from the values."""
    from ..hub.profiles import DEFAULT_PROFILES

    out = []
    for p in values["singleuser"]["profiles"] or DEFAULT_PROFILES:
        p = dict(p)
        gpu = int(p.get("gpu") or 0)
        default_image = values["images"]["singleuserGpu" if gpu else "singleuserCpu"]
        if not p.get("image") or p["image"].startswith("pai-lab/"):
            p["image"] = default_image
        if gpu:
            p.setdefault("node_selector", dict(values["gpu"]["nodeSelector"]))
            p.setdefault("tolerations", list(values["gpu"]["tolerations"]))
        out.append(p)
    return out
