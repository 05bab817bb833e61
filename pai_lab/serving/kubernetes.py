"""Kubernetes deployment backend: KServe InferenceService, or Deployment+Service+HPA.

Both run our model server image; the container entry (``python -m
pai_lab.serving.kubernetes serve``) downloads the model version from the artifact store
and starts ``pai_lab.serving.server`` on port 8080, so a pod needs no volume and no
storage initializer, only the store credentials Secret (``envFrom``).

* ``mode = "kserve"``: one InferenceService per deployment. A canary is KServe's own
  mechanism: the stable variant is rolled out first, then the predictor is switched to
  the canary variant with ``canaryTrafficPercent``; KServe keeps the previous ready
  revision for the rest of the traffic. So at most two non-shadow variants.
* ``mode = "deployment"``: for clusters without KServe. One Deployment + HPA per variant
  and one Service over all serving variants; traffic splits by ready pods, so weights
  are honoured as replica ratios (exact percentages need KServe). Each variant also gets
  its own Service for version-pinned calls.

Shadow variants need request mirroring, which neither offers; both modes refuse them
with a clear error (the local backend's router supports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import BackendUnavailable, BadRequest, Conflict, NotFound

PORT = 8080
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
L_WS = "pai-lab.io/workspace"
L_DEP = "pai-lab.io/deployment"
L_VARIANT = "pai-lab.io/variant"
L_SERVES = "pai-lab.io/serves"
_DNS = re.compile(r"[^a-z0-9-]+")


def dns_name(*parts: str, limit: int = 45) -> str:
    """A DNS label from parts (KServe/Knative names must stay short: <= 45 here)."""
    import hashlib

    raw = "-".join(str(p) for p in parts)
    name = _DNS.sub("-", raw.lower()).strip("-") or "x"
    if len(name) > limit or name != raw.lower():
        digest = hashlib.sha1(raw.encode()).hexdigest()[:6]
        name = f"{name[: limit - 7].strip('-')}-{digest}"
    return name


def check_deployment(d: Any) -> dict:
    """Validate a deployment dict for Kubernetes; ``BadRequest`` names the field."""
    if not isinstance(d, dict):
        raise BadRequest("deployment must be an object")
    name = d.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", name):
        raise BadRequest("deployment 'name' must be 1-63 letters, digits, '.', '_' or '-'")
    out = {
        "workspace": str(d.get("workspace") or "default"),
        "name": name,
        "token": d.get("token") or "",
    }
    if not isinstance(out["token"], str):
        raise BadRequest("deployment 'token' must be a string")
    variants = d.get("variants")
    if not isinstance(variants, list) or not variants:
        raise BadRequest("deployment 'variants' must be a non-empty list")
    norm, seen = [], set()
    for i, v in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise BadRequest(f"{where} must be an object")
        vname = str(v.get("name") or f"v{i}")
        if vname in seen:
            raise BadRequest(f"{where}: duplicate variant name {vname!r}")
        seen.add(vname)
        if not isinstance(v.get("model"), str) or not v["model"] or "/" in v["model"]:
            raise BadRequest(f"{where}.model must be a model name without '/'")
        if not isinstance(v.get("model_uri"), str) or not v["model_uri"]:
            raise BadRequest(f"{where}.model_uri must name the model files in the store")
        if v.get("shadow"):
            raise BadRequest(
                f"{where}: shadow variants need request mirroring, which the Kubernetes backends "
                "do not offer; deploy it as a canary with a small traffic share instead"
            )
        ints = {}
        for key, default in (("replicas", 1), ("min_replicas", None), ("max_replicas", None)):
            val = v.get(key, default)
            if val is None:
                continue
            if (
                isinstance(val, bool)
                or not isinstance(val, int)
                or val < (0 if key == "min_replicas" else 1)
            ):
                raise BadRequest(f"{where}.{key} must be a positive integer")
            ints[key] = val
        replicas = ints.get("replicas", 1)
        mn = ints.get("min_replicas", replicas)
        mx = ints.get("max_replicas", max(replicas, mn))
        if not mn <= mx:
            raise BadRequest(f"{where}: min_replicas must not exceed max_replicas")
        traffic = v.get("traffic")
        if traffic is not None and (
            isinstance(traffic, bool)
            or not isinstance(traffic, (int, float))
            or not 0 <= traffic <= 100
        ):
            raise BadRequest(f"{where}.traffic must be a percentage between 0 and 100")
        norm.append(
            {
                "name": vname,
                "model": v["model"],
                "version": str(v.get("version") or "1"),
                "model_uri": v["model_uri"],
                "framework": v.get("framework") or "",
                "replicas": replicas,
                "min_replicas": mn,
                "max_replicas": mx,
                "traffic": traffic,
            }
        )
    if len(norm) == 1 and norm[0]["traffic"] is None:
        norm[0]["traffic"] = 100
    for v in norm:
        if v["traffic"] is None:
            v["traffic"] = 0
    total = sum(v["traffic"] for v in norm)
    if abs(total - 100) > 1e-6:
        raise BadRequest(f"traffic of the variants must add up to 100, got {total:g}")
    out["variants"] = norm
    return out


class KubernetesServingBackend(LoggingConfigurable):
    """Deploys model versions to Kubernetes (KServe or plain Deployments)."""

    mode = Unicode(
        "kserve", help="'kserve' (InferenceService) or 'deployment' (Deployment+Service+HPA)."
    ).tag(config=True)
    namespace = Unicode("pai-serving", help="Namespace of model servers.").tag(config=True)
    image = Unicode("ghcr.io/pai-lab/model-server:0.1.0", help="Model server image.").tag(
        config=True
    )
    image_pull_policy = Unicode("IfNotPresent", help="imagePullPolicy.").tag(config=True)
    image_pull_secrets = List(Unicode(), help="Image pull Secret names.").tag(config=True)
    store_secret = Unicode(
        "pai-lab-store", help="Secret with store credentials (envFrom); empty: none."
    ).tag(config=True)
    store_url = Unicode("", help="Artifact store URL as pods see it (s3://bucket/prefix).").tag(
        config=True
    )
    store_options = Dict(help="fsspec options for pods (no credentials).").tag(config=True)
    cpu = Unicode("500m", help="CPU request per replica.").tag(config=True)
    memory = Unicode("1Gi", help="Memory request and limit per replica.").tag(config=True)
    target_cpu = Int(70, help="HPA target CPU utilisation (deployment mode).").tag(config=True)
    api_url = Unicode("", help="Kubernetes API URL (empty: in-cluster, else kubeconfig).").tag(
        config=True
    )
    ready_timeout = Float(
        300.0, help="Seconds create() waits for the stable revision before a canary."
    ).tag(config=True)
    poll_interval = Float(2.0, help="Seconds between readiness checks.").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._api = None

    # ------------------------------------------------------------------ manifests
    def object_name(self, dep: dict) -> str:
        return dns_name(dep["workspace"], dep["name"])

    def labels(self, dep: dict, variant: dict | None = None) -> dict[str, str]:
        out = {
            "app.kubernetes.io/name": "pai-lab",
            "app.kubernetes.io/part-of": "pai-lab",
            "app.kubernetes.io/managed-by": "pai-lab",
            "app.kubernetes.io/component": "model-server",
            L_WS: dns_name(dep["workspace"], limit=63),
            L_DEP: self.object_name(dep),
        }
        if variant is not None:
            out[L_VARIANT] = dns_name(variant["name"], limit=63)
        return out

    def container(self, dep: dict, variant: dict, name: str = "kserve-container") -> dict:
        env = {
            "PAI_WORKSPACE": dep["workspace"],
            "PAI_MODEL_URI": variant["model_uri"],
            "PAI_MODEL_NAME": variant["model"],
            "PAI_MODEL_VERSION": variant["version"],
            "PAI_MODEL_FRAMEWORK": variant["framework"],
            "PAI_STORE_URL": self.store_url,
            "PAI_STORE_OPTIONS": json.dumps(self.store_options),
            "PAI_SERVING_TOKEN": dep["token"],
        }
        c: dict[str, Any] = {
            "name": name,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "command": ["python", "-m", "pai_lab.serving.kubernetes", "serve"],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "ports": [
                {
                    "name": "http1" if name == "kserve-container" else "http",
                    "containerPort": PORT,
                    "protocol": "TCP",
                }
            ],
            "resources": {
                "requests": {"cpu": self.cpu, "memory": self.memory},
                "limits": {"memory": self.memory},
            },
            "readinessProbe": {
                "httpGet": {"path": "/v2/health/ready", "port": PORT},
                "periodSeconds": 5,
            },
            "securityContext": {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
        if self.store_secret:
            c["envFrom"] = [{"secretRef": {"name": self.store_secret, "optional": True}}]
        return c

    def inference_service(
        self, dep: dict, variant: dict, canary_percent: int | None = None
    ) -> dict:
        """The InferenceService running ``variant``; ``canary_percent`` sends only that
        share to it (the previous ready revision keeps the rest)."""
        predictor: dict[str, Any] = {
            "minReplicas": variant["min_replicas"],
            "maxReplicas": variant["max_replicas"],
            "containers": [self.container(dep, variant)],
        }
        if canary_percent is not None and canary_percent < 100:
            predictor["canaryTrafficPercent"] = int(canary_percent)
        if self.image_pull_secrets:
            predictor["imagePullSecrets"] = [{"name": s} for s in self.image_pull_secrets]
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": self.object_name(dep),
                "namespace": self.namespace,
                "labels": self.labels(dep),
                "annotations": {
                    "pai-lab.io/variant": variant["name"],
                    "pai-lab.io/model": f"{variant['model']}:{variant['version']}",
                    "serving.kserve.io/deploymentMode": "Serverless",
                },
            },
            "spec": {"predictor": predictor},
        }

    def kserve_steps(self, dep: dict, current_variant: str | None) -> list[dict]:
        """InferenceService specs to apply in order, given the variant running now."""
        variants = sorted(dep["variants"], key=lambda v: -v["traffic"])
        live = [v for v in variants if v["traffic"] > 0]
        if len(live) > 2:
            raise BadRequest(
                "KServe splits traffic between two revisions only (stable and canary); "
                "use serving.backend 'deployment' or fewer variants"
            )
        if len(live) == 1:
            return [self.inference_service(dep, live[0])]
        stable, canary = live
        if current_variant == canary["name"]:  # canary already rolled out: only move the split
            return [
                self.inference_service(dep, canary, canary_percent=int(round(canary["traffic"])))
            ]
        steps = []
        if current_variant != stable["name"]:
            steps.append(self.inference_service(dep, stable))
        steps.append(
            self.inference_service(dep, canary, canary_percent=int(round(canary["traffic"])))
        )
        return steps

    def deployment_objects(self, dep: dict) -> list[dict]:
        """Deployment + HPA per variant, a Service per variant and one over all of them."""
        base = self.object_name(dep)
        out: list[dict] = []
        pod_sec = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}
        for v in dep["variants"]:
            name = dns_name(base, v["name"], limit=50)
            labels = self.labels(dep, v)
            if v["traffic"] > 0:
                labels[L_SERVES] = "true"
            replicas = max(v["replicas"], v["min_replicas"], 1)
            spec: dict[str, Any] = {
                "containers": [self.container(dep, v, name="model-server")],
                "securityContext": pod_sec,
                "automountServiceAccountToken": False,
            }
            if self.image_pull_secrets:
                spec["imagePullSecrets"] = [{"name": s} for s in self.image_pull_secrets]
            out.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": {L_DEP: base, L_VARIANT: labels[L_VARIANT]}},
                        "template": {"metadata": {"labels": labels}, "spec": spec},
                    },
                }
            )
            out.append(self._service(name, labels, {L_DEP: base, L_VARIANT: labels[L_VARIANT]}))
            out.append(
                {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                    "spec": {
                        "scaleTargetRef": {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": name,
                        },
                        "minReplicas": max(1, v["min_replicas"]),
                        "maxReplicas": max(1, v["min_replicas"], v["max_replicas"]),
                        "metrics": [
                            {
                                "type": "Resource",
                                "resource": {
                                    "name": "cpu",
                                    "target": {
                                        "type": "Utilization",
                                        "averageUtilization": self.target_cpu,
                                    },
                                },
                            }
                        ],
                    },
                }
            )
        out.append(self._service(base, self.labels(dep), {L_DEP: base, L_SERVES: "true"}))
        return out

    def _service(self, name: str, labels: dict, selector: dict) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}],
            },
        }

    # ------------------------------------------------------------------ client
    async def api(self):
        from kubernetes_asyncio import client, config

        if self._api is None:
            conf = client.Configuration()
            if self.api_url:
                conf.host = self.api_url.rstrip("/")
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=conf)
            else:
                await config.load_kube_config(client_configuration=conf)
            self._api = client.ApiClient(conf)
        return self._api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def _req(
        self, method: str, path: str, body: Any = None, query: dict | None = None
    ) -> dict | None:
        """One REST call with a JSON body; 404 -> None; other errors -> typed errors."""
        from kubernetes_asyncio.client.exceptions import ApiException

        api = await self.api()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        for auth in (await api.configuration.auth_settings()).values():
            if auth.get("value"):
                headers[auth["key"]] = auth["value"]
        try:
            resp = await api.rest_client.request(
                method,
                api.configuration.host + path,
                query_params=query,
                headers=headers,
                body=body,
            )
        except ApiException as e:
            msg = e.body.decode() if isinstance(e.body, bytes) else str(e.body or e.reason)
            with contextlib.suppress(ValueError, AttributeError):
                msg = json.loads(msg).get("message", msg)
            if e.status == 404 and method in ("GET", "DELETE", "PATCH"):
                return None
            if e.status == 409:
                raise Conflict(msg) from None
            if e.status == 404:
                raise BackendUnavailable(
                    f"{msg} (is KServe installed? else set serving mode 'deployment')"
                ) from None
            raise BackendUnavailable(f"Kubernetes refused {method} {path}: {msg}") from None
        except (OSError, asyncio.TimeoutError) as e:
            raise BackendUnavailable(f"Kubernetes API unreachable: {e}") from None
        except Exception as e:
            if type(e).__module__.startswith("aiohttp"):
                raise BackendUnavailable(f"Kubernetes API unreachable: {e}") from None
            raise
        return json.loads(resp.data) if resp.data else {}

    def _path(self, api_version: str, plural: str, name: str | None = None) -> str:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = f"{base}/namespaces/{self.namespace}/{plural}"
        return f"{path}/{name}" if name else path

    # ------------------------------------------------------------------ backend API
    async def create(self, deployment: dict) -> dict:
        dep = check_deployment(deployment)
        if self.mode == "kserve":
            path = self._path(
                "serving.kserve.io/v1beta1", "inferenceservices", self.object_name(dep)
            )
            if await self._req("GET", path) is not None:
                raise Conflict(f"deployment {dep['workspace']}/{dep['name']} already exists")
        return await self._apply(dep)

    async def update(self, deployment: dict) -> dict:
        dep = check_deployment(deployment)
        return await self._apply(dep)

    async def _apply(self, dep: dict) -> dict:
        if self.mode == "kserve":
            name = self.object_name(dep)
            path = self._path("serving.kserve.io/v1beta1", "inferenceservices", name)
            current = await self._req("GET", path)
            cur_variant = ((current or {}).get("metadata", {}).get("annotations") or {}).get(
                "pai-lab.io/variant"
            )
            steps = self.kserve_steps(dep, cur_variant)
            for i, isvc in enumerate(steps):
                if current is None:
                    current = await self._req(
                        "POST", self._path("serving.kserve.io/v1beta1", "inferenceservices"), isvc
                    )
                else:
                    patch = {
                        "metadata": {"annotations": isvc["metadata"]["annotations"]},
                        "spec": isvc["spec"],
                    }
                    if "canaryTrafficPercent" not in isvc["spec"]["predictor"]:
                        patch["spec"] = json.loads(json.dumps(isvc["spec"]))
                        patch["spec"]["predictor"]["canaryTrafficPercent"] = None
                    current = await self._req("PATCH", path, patch)
                if i < len(steps) - 1:
                    await self._wait_ready(path)
            return await self.status(dep["name"], dep["workspace"])
        for obj in self.deployment_objects(dep):
            plural = {
                "Deployment": "deployments",
                "Service": "services",
                "HorizontalPodAutoscaler": "horizontalpodautoscalers",
            }[obj["kind"]]
            path = self._path(obj["apiVersion"], plural, obj["metadata"]["name"])
            if await self._req("GET", path) is None:
                await self._req("POST", self._path(obj["apiVersion"], plural), obj)
            else:
                await self._req(
                    "PATCH",
                    path,
                    {"metadata": {"labels": obj["metadata"]["labels"]}, "spec": obj["spec"]},
                )
        # variants removed from the deployment go away
        wanted = {o["metadata"]["name"] for o in self.deployment_objects(dep)}
        for api_version, plural in (
            ("apps/v1", "deployments"),
            ("v1", "services"),
            ("autoscaling/v2", "horizontalpodautoscalers"),
        ):
            listing = await self._req(
                "GET",
                self._path(api_version, plural),
                query={"labelSelector": f"{L_DEP}={self.object_name(dep)}"},
            )
            for item in (listing or {}).get("items", []):
                if item["metadata"]["name"] not in wanted:
                    await self._req(
                        "DELETE",
                        self._path(api_version, plural, item["metadata"]["name"]),
                        query={"propagationPolicy": "Background"},
                    )
        return await self.status(dep["name"], dep["workspace"])

    async def _wait_ready(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while True:
            obj = await self._req("GET", path) or {}
            if _ready(obj):
                return
            if loop.time() > deadline:
                raise BackendUnavailable(
                    f"the stable revision did not become ready within {self.ready_timeout:g}s; canary not started"
                )
            await asyncio.sleep(self.poll_interval)

    async def status(self, name: str, workspace: str = "default") -> dict:
        dep = {"name": name, "workspace": workspace}
        obj_name = self.object_name(dep)
        if self.mode == "kserve":
            obj = await self._req(
                "GET", self._path("serving.kserve.io/v1beta1", "inferenceservices", obj_name)
            )
            if obj is None:
                raise NotFound(f"deployment {workspace}/{name} not found")
            st = obj.get("status") or {}
            traffic = {}
            for comp in (st.get("components") or {}).values():
                for t in comp.get("traffic") or []:
                    traffic[t.get("revisionName", "")] = t.get("percent")
            return {
                "workspace": workspace,
                "name": name,
                "url": st.get("url"),
                "state": "ready" if _ready(obj) else "starting",
                "variant": (obj["metadata"].get("annotations") or {}).get("pai-lab.io/variant"),
                "canary_percent": obj["spec"]["predictor"].get("canaryTrafficPercent"),
                "traffic": traffic,
            }
        listing = await self._req(
            "GET",
            self._path("apps/v1", "deployments"),
            query={"labelSelector": f"{L_DEP}={obj_name}"},
        )
        items = (listing or {}).get("items", [])
        if not items:
            raise NotFound(f"deployment {workspace}/{name} not found")
        variants = []
        for d in items:
            st = d.get("status") or {}
            variants.append(
                {
                    "name": d["metadata"]["labels"].get(L_VARIANT),
                    "replicas": {
                        "desired": d["spec"].get("replicas", 1),
                        "ready": st.get("readyReplicas", 0),
                    },
                }
            )
        ready = all(v["replicas"]["ready"] >= 1 for v in variants)
        return {
            "workspace": workspace,
            "name": name,
            "url": f"http://{obj_name}.{self.namespace}.svc.cluster.local",
            "state": "ready" if ready else "starting",
            "variants": variants,
        }

    async def delete(self, name: str, workspace: str = "default") -> None:
        dep = {"name": name, "workspace": workspace}
        obj_name = self.object_name(dep)
        if self.mode == "kserve":
            gone = await self._req(
                "DELETE",
                self._path("serving.kserve.io/v1beta1", "inferenceservices", obj_name),
                query={"propagationPolicy": "Foreground"},
            )
            if gone is None:
                raise NotFound(f"deployment {workspace}/{name} not found")
            return
        found = False
        for api_version, plural in (
            ("autoscaling/v2", "horizontalpodautoscalers"),
            ("apps/v1", "deployments"),
            ("v1", "services"),
        ):
            listing = await self._req(
                "GET",
                self._path(api_version, plural),
                query={"labelSelector": f"{L_DEP}={obj_name}"},
            )
            for item in (listing or {}).get("items", []):
                found = True
                await self._req(
                    "DELETE",
                    self._path(api_version, plural, item["metadata"]["name"]),
                    query={"propagationPolicy": "Foreground"},
                )
        if not found:
            raise NotFound(f"deployment {workspace}/{name} not found")


def _ready(obj: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


# ------------------------------------------------------------------------- in the pod
def fetch_model(dest: str | os.PathLike) -> Path:
    """Copy the model version named by ``PAI_MODEL_URI`` from the store into ``dest``.

    ``PAI_MODEL_URI`` is a path in the workspace (``models/iris/3`` or a file in it),
    optionally written ``pai://models/iris/3``.
    """
    from pai_lab.storage import ArtifactStore

    uri = os.environ["PAI_MODEL_URI"]
    rel = uri.split("://", 1)[1] if uri.startswith("pai://") else uri
    store = ArtifactStore.from_dict(
        {
            "url": os.environ["PAI_STORE_URL"],
            "options": json.loads(os.environ.get("PAI_STORE_OPTIONS") or "{}"),
        }
    )
    ws = store.workspace(os.environ.get("PAI_WORKSPACE") or "default")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if ws.info_sync(rel).get("type") == "directory":
        ws.get_dir_sync(rel, dest)
        return dest
    target = dest / rel.rstrip("/").rsplit("/", 1)[-1]
    ws.get_file_sync(rel, target)
    return target


def serve_main(argv: list[str] | None = None) -> int:
    """Container entry: fetch the model, then become the model server on port 8080."""
    dest = os.environ.get("PAI_MODEL_DIR", "/tmp/pai-model")
    try:
        path = fetch_model(dest)
    except Exception as e:  # one line for `kubectl logs`, not a traceback
        print(
            f"pai-lab model server: cannot fetch {os.environ.get('PAI_MODEL_URI')!r}: {e}",
            file=sys.stderr,
        )
        return 3
    args = [
        sys.executable,
        "-m",
        "pai_lab.serving.server",
        f"--model-path={path}",
        f"--name={os.environ.get('PAI_MODEL_NAME', 'model')}",
        f"--model-version={os.environ.get('PAI_MODEL_VERSION', '1')}",
        f"--host={os.environ.get('PAI_SERVING_HOST', '0.0.0.0')}",
        f"--port={os.environ.get('PAI_SERVING_PORT', str(PORT))}",
    ]
    if os.environ.get("PAI_MODEL_FRAMEWORK"):
        args.append(f"--framework={os.environ['PAI_MODEL_FRAMEWORK']}")
    args += list(argv or [])
    sys.stdout.flush()
    os.execv(sys.executable, args)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["serve"]:
        print(
            "usage: python -m pai_lab.serving.kubernetes serve   (the entry of a model server pod)",
            file=sys.stderr,
        )
        return 2
    return serve_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
