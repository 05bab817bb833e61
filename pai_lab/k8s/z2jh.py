"""``pai-lab k8s z2jh-values``: values for the Zero to JupyterHub Helm chart.

The chart stays the installer of the hub, proxy, user scheduler and culler; these values
swap in our hub image (pai-lab installed) and make the hub load our configuration:
KubeSpawner from the shared profiles (``pai_lab.hub.kubernetes.configure_kubernetes``) and
the control plane as an external hub service, plus the egress rule that lets user pods
reach the control plane through Z2JH's own NetworkPolicies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import PaiError
from . import objects as o
from .render import control_url
from .values import effective_profiles, load_values


def split_image(image: str) -> dict[str, str]:
    """``registry/name:tag`` -> ``{"name": ..., "tag": ...}`` as the chart wants it."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return {"name": image, "tag": "latest"}
    return {"name": name, "tag": tag}


def hub_extra_config(values: dict) -> str:
    """Python run by the hub after the chart's config: hand over to pai-lab."""
    sc = values["singleuser"]
    return "\n".join(
        [
            "from pai_lab.hub.kubernetes import configure_kubernetes",
            "from pai_lab.hub.profiles import Profiles",
            "",
            "configure_kubernetes(",
            "    c,",
            "    Profiles(config=c),",
            f"    control_url={control_url(values)!r},",
            f"    service_name={values['hub']['serviceName']!r},",
            f"    storage_capacity={sc['storageCapacity']!r},",
            f"    storage_class={sc['storageClass']!r},",
            f"    gpu_resource={values['gpu']['resourceName']!r},",
            f"    store_url={values['storage']['url']!r},",
            f"    store_secret={values['storage']['credentialsSecret']!r},",
            f"    image_pull_policy={values['images']['pullPolicy']!r},",
            ")",
            "",
        ]
    )


def auth_config(values: dict) -> tuple[dict, list, str]:
    """(hub.config entries, hub.extraEnv items, extra config code) for the chosen login."""
    a = values["auth"]
    conf: dict[str, Any] = {"Authenticator": {}}
    if values["hub"]["adminUsers"]:
        conf["Authenticator"]["admin_users"] = list(values["hub"]["adminUsers"])
    if values["hub"]["allowedUsers"]:
        conf["Authenticator"]["allowed_users"] = list(values["hub"]["allowedUsers"])
    env: list = []
    code = ""
    if a["type"] == "native":
        conf["JupyterHub"] = {"authenticator_class": "nativeauthenticator.NativeAuthenticator"}
        return conf, env, code
    callback = values["hub"]["publicUrl"].rstrip("/") + "/hub/oauth_callback"
    cls = "GitHubOAuthenticator" if a["type"] == "github" else "GenericOAuthenticator"
    conf["JupyterHub"] = {
        "authenticator_class": "github" if a["type"] == "github" else "generic-oauth"
    }
    section: dict[str, Any] = {"client_id": a["clientId"], "oauth_callback_url": callback}
    if a["type"] == "github":
        if a["allowedOrganizations"]:
            section["allowed_organizations"] = list(a["allowedOrganizations"])
    else:
        section.update(
            authorize_url=a["authorizeUrl"],
            token_url=a["tokenUrl"],
            userdata_url=a["userdataUrl"],
            username_claim=a["usernameClaim"],
            scope=["openid", "profile", "email"],
        )
    if not values["hub"]["allowedUsers"] and not a["allowedOrganizations"]:
        conf["Authenticator"]["allow_all"] = True  # whoever the provider vouches for
    conf[cls] = section
    # The client secret stays in a Secret; the hub reads it from the environment.
    env.append(o.secret_env("OAUTH_CLIENT_SECRET", a["clientSecretName"], "client-secret"))
    code = f"import os\nc.{cls}.client_secret = os.environ['OAUTH_CLIENT_SECRET']\n"
    return conf, env, code


def z2jh_values(values: dict) -> dict:
    """The chart values as a dict."""
    svc = values["hub"]["serviceName"]
    conf, env, auth_code = auth_config(values)
    conf["Profiles"] = {"profiles": effective_profiles(values)}
    sc = values["singleuser"]
    ing = values["ingress"]
    out: dict[str, Any] = {
        "hub": {
            "image": split_image(values["images"]["hub"]),
            "config": conf,
            "services": {
                svc: {"url": control_url(values), "display": True, "oauth_no_confirm": True}
            },
            "loadRoles": {
                # every user may use the control plane (it checks workspace roles itself)
                "user": {"scopes": ["self", f"access:services!service={svc}"]},
                # user servers call the control plane with their own token
                "server": {
                    "scopes": [
                        "users:activity!user",
                        "access:servers!user",
                        f"access:services!service={svc}",
                    ]
                },
                f"{svc}-service": {
                    "services": [svc],
                    "scopes": ["read:users", "list:users", "read:groups", "list:groups"],
                },
            },
            "extraConfig": {"10-pai-lab-auth": auth_code, "20-pai-lab": hub_extra_config(values)}
            if auth_code
            else {"20-pai-lab": hub_extra_config(values)},
            "extraEnv": env,
            "networkPolicy": {"enabled": values["networkPolicy"]["enabled"]},
        },
        "singleuser": {
            "image": split_image(values["images"]["singleuserCpu"]),
            "storage": {
                "type": "dynamic",
                "capacity": sc["storageCapacity"],
                "homeMountPath": "/home/jovyan",
                "dynamic": {"storageClass": sc["storageClass"] or None},
            },
            "networkPolicy": {
                "enabled": values["networkPolicy"]["enabled"],
                "egress": [
                    {
                        "to": [
                            {
                                "podSelector": {"matchLabels": o.selector("control-plane")},
                                "namespaceSelector": {
                                    "matchLabels": {
                                        "kubernetes.io/metadata.name": values["namespace"]
                                    }
                                },
                            }
                        ],
                        "ports": [{"port": values["controlPlane"]["port"], "protocol": "TCP"}],
                    }
                ],
            },
        },
        "cull": {"enabled": True, "timeout": sc["cullTimeout"], "every": 300},
        "scheduling": {"userScheduler": {"enabled": True}},
    }
    if values["images"]["pullSecrets"]:
        out["imagePullSecrets"] = list(values["images"]["pullSecrets"])
    if ing["enabled"]:
        ingress: dict[str, Any] = {
            "enabled": True,
            "hosts": [ing["host"]],
            "ingressClassName": ing["className"],
            "tls": [{"hosts": [ing["host"]], "secretName": ing["tlsSecretName"]}],
        }
        if ing["clusterIssuer"]:
            ingress["annotations"] = {"cert-manager.io/cluster-issuer": ing["clusterIssuer"]}
        out["ingress"] = ingress
        out["proxy"] = {"service": {"type": "ClusterIP"}}
    else:
        out["proxy"] = {"service": {"type": "LoadBalancer"}}
    return out


CHART_VERSION = "4.4.0"
_SCHEMA = Path(__file__).with_name(f"z2jh_values_schema_{CHART_VERSION}.json")


def chart_schema_errors(chart_values: dict) -> list[str]:
    """Problems of ``chart_values`` against the Z2JH chart's own values schema.

    The schema (vendored from the chart, BSD-3-Clause) refuses unknown keys and wrong
    types, which helm would otherwise only report at install time, or not at all.
    """
    import jsonschema

    schema = json.loads(_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
        for e in sorted(validator.iter_errors(chart_values), key=lambda e: list(e.absolute_path))
    ]


def render_z2jh(source: str | dict | None = None) -> str:
    """YAML values for the Z2JH chart, checked against the chart's schema first."""
    out = z2jh_values(load_values(source))
    problems = chart_schema_errors(out)
    if problems:  # a bug here, not in the user's values: say so plainly
        raise PaiError(
            f"generated Z2JH values do not match chart {CHART_VERSION}: {'; '.join(problems)}"
        )
    return yaml.safe_dump(out, sort_keys=False)
