"""Kubernetes job backend: one attempt = one ``batch/v1`` Job or ``kubeflow.org/v1`` PyTorchJob.

Why it looks like this:

* **Retries belong to the control plane.** Each attempt is its own object
  (``pai-<job>-a<attempt>``) with ``backoffLimit: 0``; a failed attempt is reported
  ``failed`` and the control plane's retry rule (``spec.retries``) queues attempt N+1, which
  becomes a new object. One rule for local and Kubernetes jobs, and every attempt keeps its
  own logs and exit reason. Pod disruptions (node drain, preemption) are *not* failures:
  ``podFailurePolicy`` tells the Job controller to replace such a pod without counting it.
* **The cluster is the state.** Labels carry the job id, workspace and attempt; a label
  watch per namespace (plus a slow periodic resync) turns Job/PyTorchJob conditions and pod
  phases into reports. After a control-plane restart, ``reattach`` re-reads the object and
  follows it again, so the control plane can restart at any time without losing jobs.
* **Inputs come from the artifact store**, not a size-limited ConfigMap: the pod runs
  ``python -m pai_lab.jobs.kubernetes pod``, which writes ``job.json`` from the environment
  and hands over to the same runner local jobs use (``python -m pai_lab.jobs.runner``).
  That runner fetches ``jobs/<id>/input.*`` and uploads outputs, logs and metrics; the
  entry echoes the runner's log to stdout (so ``kubectl logs`` and ``live_logs`` work) and
  writes the runner's result to the container's termination message, where the backend
  reads the exact exit reason.
* **Quotas are the control plane's** (max concurrent jobs, max GPUs per workspace). With one
  namespace per workspace (``namespace = "pai-{workspace}"``) ``pai-lab k8s render`` can add
  a ResourceQuota as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Int, List, Unicode

from ..errors import BackendUnavailable, BadRequest, PaiError
from .base import JobBackend, JobRun

LABEL_PREFIX = "pai-lab.io"
L_JOB_ID = f"{LABEL_PREFIX}/job-id"
L_WORKSPACE = f"{LABEL_PREFIX}/workspace"
L_ATTEMPT = f"{LABEL_PREFIX}/attempt"
L_RUN = f"{LABEL_PREFIX}/run"
MANAGED = {"app.kubernetes.io/managed-by": "pai-lab", "app.kubernetes.io/part-of": "pai-lab"}
SELECTOR = "app.kubernetes.io/managed-by=pai-lab,app.kubernetes.io/component=job"
RUN_DIR = "/tmp/pai-run"
PYTORCH = ("kubeflow.org", "v1", "pytorchjobs")
# Waiting reasons that will not fix themselves: fail the attempt instead of hanging.
FATAL_WAITING = {
    "ErrImagePull": "cannot pull the image",
    "ImagePullBackOff": "cannot pull the image",
    "InvalidImageName": "invalid image name",
    "CreateContainerConfigError": "bad container configuration",
    "CreateContainerError": "cannot create the container",
}
FINAL = ("succeeded", "failed", "cancelled", "timed_out", "lost")
_SECRET_OPTION = re.compile(r"(key|secret|token|password|credential)", re.I)


def label_value(value: Any) -> str:
    """A valid label value (<= 63 chars, alphanumerics at both ends) for any string."""
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))[:63]
    return v.strip("-_.") or "x"


def object_name(job_id: str, attempt: int) -> str:
    """``pai-<job-id>-a<attempt>``: a DNS label short enough for pod names derived from it."""
    base = re.sub(r"[^a-z0-9-]+", "-", str(job_id).lower()).strip("-") or "job"
    name = f"pai-{base}-a{attempt}"
    if len(name) > 50:
        digest = hashlib.sha1(str(job_id).encode()).hexdigest()[:8]
        name = f"pai-{base[:30].strip('-')}-{digest}-a{attempt}"
    return name


def _quantity(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class KubernetesJobBackend(JobBackend):
    """Runs job attempts as Kubernetes Jobs (one worker) or PyTorchJobs (several)."""

    api_url = Unicode(
        "",
        help="""Kubernetes API server URL. Empty: in-cluster service account config when
        running in a pod, else the kubeconfig. Set it (e.g. http://127.0.0.1:8001 behind
        `kubectl proxy`) to talk to one API server directly.""",
    ).tag(config=True)
    api_token = Unicode("", help="Bearer token for api_url (empty: none).").tag(config=True)
    kubeconfig = Unicode(
        "", help="kubeconfig file when not in a cluster (empty: $KUBECONFIG or ~/.kube/config)."
    ).tag(config=True)
    namespace = Unicode(
        "pai-jobs",
        help="Namespace of job objects; '{workspace}' in it gives one namespace per workspace.",
    ).tag(config=True)
    service_account = Unicode(
        "pai-job", help="ServiceAccount of job pods (it needs no API permissions)."
    ).tag(config=True)
    default_image = Unicode(
        "ghcr.io/pai-lab/singleuser-cpu:0.1.0", help="Image when the profile names none."
    ).tag(config=True)
    image_pull_policy = Unicode("IfNotPresent", help="imagePullPolicy of job containers.").tag(
        config=True
    )
    image_pull_secrets = List(Unicode(), help="Names of image pull Secrets for job pods.").tag(
        config=True
    )
    gpu_resource = Unicode("nvidia.com/gpu", help="Extended resource name of GPUs.").tag(
        config=True
    )
    gpu_node_selector = Dict(
        {"nvidia.com/gpu.present": "true"},
        help="nodeSelector for GPU jobs whose profile has none.",
    ).tag(config=True)
    gpu_tolerations = List(
        Dict(),
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        help="Tolerations for GPU jobs whose profile has none.",
    ).tag(config=True)
    store_secret = Unicode(
        "pai-lab-store",
        help="""Secret whose keys become environment variables of job pods (envFrom), e.g.
        AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3, MinIO or OSS. Empty: none.""",
    ).tag(config=True)
    store_url = Unicode(
        "", help="Artifact store URL as pods see it (empty: the control plane's store URL)."
    ).tag(config=True)
    store_options = Dict(
        help="""fsspec options for pods (e.g. {"client_kwargs": {"endpoint_url": ...}}). Empty:
        the control plane's options minus anything that looks like a credential."""
    ).tag(config=True)
    control_url = Unicode(
        "",
        help="Control plane URL as pods see it (PAI_LAB_URL); empty: the one the control plane passes.",
    ).tag(config=True)
    ttl_seconds_after_finished = Int(
        86400, help="Finished Job objects are deleted by Kubernetes after this."
    ).tag(config=True)
    deadline_grace = Int(
        120,
        help="""Seconds added to max_runtime for activeDeadlineSeconds: the runner's own
        timeout (which still uploads the output notebook) should fire first; the
        deadline is the backstop.""",
    ).tag(config=True)
    propagation_policy = Unicode(
        "Foreground", help="propagationPolicy when cancel deletes a Job: Foreground or Background."
    ).tag(config=True)
    cancel_timeout = Float(60.0, help="Seconds cancel waits for the object to disappear.").tag(
        config=True
    )
    resync_interval = Float(60.0, help="Seconds between full resyncs besides the watch.").tag(
        config=True
    )
    fail_on_image_errors = Bool(
        True, help="Fail an attempt whose pod cannot pull its image instead of waiting forever."
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._api = None
        self._api_lock = asyncio.Lock()
        self._runs: dict[tuple[str, str], JobRun] = {}  # (namespace, object name) -> run
        self._kinds: dict[tuple[str, str], str] = {}
        self._reported: dict[tuple[str, int], str] = {}
        self._cancelling: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._watchers: dict[str, list[asyncio.Task]] = {}
        self._closing = False

    # ------------------------------------------------------------------ client
    async def api(self):
        """The shared ``ApiClient`` (created on first use)."""
        from kubernetes_asyncio import client, config

        async with self._api_lock:
            if self._api is None:
                conf = client.Configuration()
                if self.api_url:
                    conf.host = self.api_url.rstrip("/")
                    if self.api_token:
                        conf.api_key = {"authorization": self.api_token}
                        conf.api_key_prefix = {"authorization": "Bearer"}
                elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                    config.load_incluster_config(client_configuration=conf)
                else:
                    await config.load_kube_config(
                        config_file=self.kubeconfig or None, client_configuration=conf
                    )
                self._api = client.ApiClient(conf)
            return self._api

    async def _call(self, what: str, coro_fn, *args, **kwargs):
        """Run one API call; connection problems become ``BackendUnavailable``, and an
        error status on a raw (``_preload_content=False``) response an ``ApiException``."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            resp = await coro_fn(*args, **kwargs)
        except ApiException:
            raise
        except (OSError, asyncio.TimeoutError) as e:
            raise BackendUnavailable(
                f"Kubernetes API unreachable while trying to {what}: {e}"
            ) from None
        except Exception as e:  # aiohttp ClientError and friends
            if type(e).__module__.startswith("aiohttp"):
                raise BackendUnavailable(
                    f"Kubernetes API unreachable while trying to {what}: {e}"
                ) from None
            raise
        status = getattr(resp, "status", 200)
        if isinstance(status, int) and status >= 400:
            body = await resp.read()
            resp.release()
            err = ApiException(status=status, reason=getattr(resp, "reason", "") or "")
            err.body = body.decode("utf-8", "replace")
            raise err
        return resp

    async def _batch(self):
        from kubernetes_asyncio import client

        return client.BatchV1Api(await self.api())

    async def _core(self):
        from kubernetes_asyncio import client

        return client.CoreV1Api(await self.api())

    async def _custom(self):
        from kubernetes_asyncio import client

        return client.CustomObjectsApi(await self.api())

    # --------------------------------------------------------------- manifests
    def namespace_for(self, workspace: str) -> str:
        return self.namespace.replace("{workspace}", label_value(workspace).lower())

    def pod_store(self) -> dict:
        """The store as pods must see it; credentials never go into the object spec."""
        base: dict = {}
        with contextlib.suppress(Exception):
            base = self.store.to_dict()
        url = self.store_url or base.get("url", "")
        opts = self.store_options or {
            k: v for k, v in (base.get("options") or {}).items() if not _SECRET_OPTION.search(k)
        }
        return {"url": url, "options": opts}

    def resources(self, run: JobRun) -> dict:
        prof, res = run.profile or {}, (run.spec.get("resources") or {})
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        cpu_req = res.get("cpu", prof.get("cpu_guarantee"))
        cpu_lim = res.get("cpu", prof.get("cpu_limit"))
        mem_req = res.get("memory", prof.get("mem_guarantee"))
        mem_lim = res.get("memory", prof.get("mem_limit"))
        if cpu_req:
            requests["cpu"] = _quantity(cpu_req)
        if cpu_lim:
            limits["cpu"] = _quantity(cpu_lim)
        if mem_req:
            requests["memory"] = str(mem_req)
        if mem_lim:
            limits["memory"] = str(mem_lim)
        gpus = self.gpus(run)
        if gpus:
            requests[self.gpu_resource] = limits[self.gpu_resource] = str(gpus)
        out = {}
        if requests:
            out["requests"] = requests
        if limits:
            out["limits"] = limits
        return out

    @staticmethod
    def gpus(run: JobRun) -> int:
        res = run.spec.get("resources") or {}
        return int(res["gpu"] if "gpu" in res else (run.profile or {}).get("gpu") or 0)

    def labels(self, run: JobRun, name: str) -> dict[str, str]:
        return {
            **MANAGED,
            "app.kubernetes.io/name": "pai-lab",
            "app.kubernetes.io/component": "job",
            L_JOB_ID: label_value(run.id),
            L_WORKSPACE: label_value(run.workspace),
            L_ATTEMPT: str(run.attempt),
            L_RUN: name,
        }

    def annotations(self, run: JobRun) -> dict[str, str]:
        return {
            L_JOB_ID: str(run.id),
            L_WORKSPACE: str(run.workspace),
            f"{LABEL_PREFIX}/owner": str(run.owner),
            f"{LABEL_PREFIX}/attempt": str(run.attempt),
            f"{LABEL_PREFIX}/job-name": str(run.spec.get("name", "")),
            f"{LABEL_PREFIX}/profile": str((run.profile or {}).get("slug", "")),
        }

    def image(self, run: JobRun) -> str:
        return (run.profile or {}).get("image") or self.default_image

    def env(self, run: JobRun, distributed: bool) -> list[dict]:
        store = self.pod_store()
        job = {
            "id": run.id,
            "workspace": run.workspace,
            "owner": run.owner,
            "attempt": run.attempt,
            "spec": run.spec,
            "profile": run.profile,
        }
        extra = dict(run.env or {})
        if self.control_url:
            extra["PAI_LAB_URL"] = self.control_url
        env = {
            "PAI_JOB_ID": str(run.id),
            "PAI_WORKSPACE": str(run.workspace),
            "PAI_ATTEMPT": str(run.attempt),
            "PAI_OUTPUT_DIR": f"{RUN_DIR}/outputs",
            "PAI_RUN_DIR": RUN_DIR,
            "PAI_STORE_URL": store["url"],
            "PAI_STORE_OPTIONS": json.dumps(store["options"]),
            "PAI_IMAGE": self.image(run),
            "PAI_JOB_JSON": json.dumps(job, separators=(",", ":"), default=str),
            "PYTHONUNBUFFERED": "1",
        }
        if distributed:
            env["LOCAL_RANK"] = "0"  # one process per pod; the operator sets the rest
        for k, v in extra.items():
            env.setdefault(k, str(v))
        return [{"name": k, "value": v} for k, v in env.items()]

    def pod_template(self, run: JobRun, name: str, container_name: str, distributed: bool) -> dict:
        prof = run.profile or {}
        container: dict[str, Any] = {
            "name": container_name,
            "image": self.image(run),
            "imagePullPolicy": self.image_pull_policy,
            "command": ["python", "-m", "pai_lab.jobs.kubernetes", "pod"],
            "workingDir": RUN_DIR,
            "env": self.env(run, distributed),
            "resources": self.resources(run),
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [
                {"name": "run", "mountPath": RUN_DIR},
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
            "securityContext": {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
        if distributed:
            container["ports"] = [
                {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}
            ]
        if self.store_secret:
            container["envFrom"] = [{"secretRef": {"name": self.store_secret, "optional": True}}]
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "serviceAccountName": self.service_account,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 100,
                "fsGroup": 100,
            },
            "containers": [container],
            "volumes": [
                {"name": "run", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        }
        gpus = self.gpus(run)
        node_selector = dict(prof.get("node_selector") or {}) or (
            dict(self.gpu_node_selector) if gpus else {}
        )
        tolerations = list(prof.get("tolerations") or []) or (
            list(self.gpu_tolerations) if gpus else []
        )
        if node_selector:
            spec["nodeSelector"] = node_selector
        if tolerations:
            spec["tolerations"] = tolerations
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": s} for s in self.image_pull_secrets]
        return {
            "metadata": {"labels": self.labels(run, name), "annotations": self.annotations(run)},
            "spec": spec,
        }

    def deadline(self, run: JobRun) -> int | None:
        mr = run.spec.get("max_runtime")
        return int(mr) + max(0, self.deadline_grace) if mr else None

    def build_job(self, run: JobRun) -> dict:
        """The ``batch/v1`` Job for a single-worker attempt."""
        name = object_name(run.id, run.attempt)
        spec: dict[str, Any] = {
            "backoffLimit": 0,  # retries are the control plane's attempts
            "completions": 1,
            "parallelism": 1,
            "ttlSecondsAfterFinished": self.ttl_seconds_after_finished,
            # a pod lost to a node drain or preemption is replaced, not counted as a failure
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "template": self.pod_template(run, name, "main", distributed=False),
        }
        deadline = self.deadline(run)
        if deadline:
            spec["activeDeadlineSeconds"] = deadline
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": self.namespace_for(run.workspace),
                "labels": self.labels(run, name),
                "annotations": self.annotations(run),
            },
            "spec": spec,
        }

    def build_pytorchjob(self, run: JobRun) -> dict:
        """The Kubeflow ``PyTorchJob`` for ``workers > 1``: 1 Master + (workers-1) Workers."""
        name = object_name(run.id, run.attempt)
        template = self.pod_template(run, name, "pytorch", distributed=True)
        workers = int(run.spec.get("workers", 1))
        run_policy: dict[str, Any] = {
            "backoffLimit": 0,
            "cleanPodPolicy": "None",  # keep pods (and their logs) until the TTL
            "ttlSecondsAfterFinished": self.ttl_seconds_after_finished,
        }
        deadline = self.deadline(run)
        if deadline:
            run_policy["activeDeadlineSeconds"] = deadline
        return {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {
                "name": name,
                "namespace": self.namespace_for(run.workspace),
                "labels": self.labels(run, name),
                "annotations": self.annotations(run),
            },
            "spec": {
                "runPolicy": run_policy,
                "pytorchReplicaSpecs": {
                    "Master": {"replicas": 1, "restartPolicy": "Never", "template": template},
                    "Worker": {
                        "replicas": workers - 1,
                        "restartPolicy": "Never",
                        "template": template,
                    },
                },
            },
        }

    def build(self, run: JobRun) -> dict:
        return (
            self.build_pytorchjob(run)
            if int(run.spec.get("workers", 1)) > 1
            else self.build_job(run)
        )

    # ---------------------------------------------------------------- backend API
    def unavailable_reason(self, run: JobRun) -> str | None:
        url = self.pod_store()["url"]
        if url.startswith("file://") and not self.store_url:
            return (
                "the artifact store is a local directory (file://) that Kubernetes pods cannot "
                "read; configure an s3:// store (MinIO, OSS, S3) for Kubernetes jobs"
            )
        return None

    async def start(self, run: JobRun) -> dict:
        from kubernetes_asyncio.client.exceptions import ApiException

        body = self.build(run)
        ns, name, kind = body["metadata"]["namespace"], body["metadata"]["name"], body["kind"]
        try:
            if kind == "Job":
                batch = await self._batch()
                created = await self._call(
                    "create a Job", batch.create_namespaced_job, ns, body, _preload_content=False
                )
            else:
                custom = await self._custom()
                created = await self._call(
                    "create a PyTorchJob",
                    custom.create_namespaced_custom_object,
                    *PYTORCH[:2],
                    ns,
                    PYTORCH[2],
                    body,
                    _preload_content=False,
                )
            obj = json.loads(await created.read())
        except ApiException as e:
            if e.status == 409:  # created before a restart, ref never saved: adopt it
                obj = await self._get(ns, kind, name)
                labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
                if (
                    not obj
                    or labels.get(L_JOB_ID) != label_value(run.id)
                    or labels.get(L_ATTEMPT) != str(run.attempt)
                ):
                    raise PaiError(
                        f"{kind} {ns}/{name} exists and belongs to another job"
                    ) from None
            elif e.status == 404 and kind == "PyTorchJob":
                raise BadRequest(
                    "workers > 1 needs the Kubeflow Training Operator (PyTorchJob), which this "
                    "cluster does not have; install it or submit with workers: 1"
                ) from None
            elif e.status == 404:
                raise BackendUnavailable(
                    f"namespace {ns!r} does not exist; run `pai-lab k8s render`"
                ) from None
            else:
                raise BackendUnavailable(
                    f"Kubernetes refused the {kind}: {_api_message(e)}"
                ) from None
        ref = {"namespace": ns, "name": name, "kind": kind, "uid": obj["metadata"].get("uid", "")}
        key = (ns, name)
        self._runs[key] = run
        self._kinds[key] = kind
        await self._report(run, "starting", backend_ref=ref, environment={"image": self.image(run)})
        self._ensure_watch(ns)
        return ref

    async def cancel(self, run: JobRun) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        key, kind = self._key(run)
        self._runs.setdefault(key, run)
        self._kinds.setdefault(key, kind)
        self._cancelling.add(key)
        with contextlib.suppress(Exception):  # logs first: deleting the pods loses them
            await self._persist_logs(run, key, kind, runner_finished=False)
        ns, name = key
        try:
            if kind == "Job":
                batch = await self._batch()
                await self._call(
                    "delete a Job",
                    batch.delete_namespaced_job,
                    name,
                    ns,
                    propagation_policy=self.propagation_policy,
                )
            else:
                custom = await self._custom()
                await self._call(
                    "delete a PyTorchJob",
                    custom.delete_namespaced_custom_object,
                    *PYTORCH[:2],
                    ns,
                    PYTORCH[2],
                    name,
                    propagation_policy=self.propagation_policy,
                )
        except ApiException as e:
            if e.status != 404:
                self._cancelling.discard(key)
                raise BackendUnavailable(
                    f"could not delete {kind} {ns}/{name}: {_api_message(e)}"
                ) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cancel_timeout
        delay = 0.05
        while loop.time() < deadline and await self._get(ns, kind, name) is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        await self._report(run, "cancelled", exit_reason="cancelled")
        self._forget(key)

    async def reattach(self, run: JobRun) -> None:
        ref = run.backend_ref or {}
        if not ref.get("name"):
            # started but the ref was never saved: the object name is deterministic
            body = self.build(run)
            ref = {
                "namespace": body["metadata"]["namespace"],
                "name": body["metadata"]["name"],
                "kind": body["kind"],
            }
            run.backend_ref = ref
        key = (ref["namespace"], ref["name"])
        self._runs[key] = run
        self._kinds[key] = ref.get("kind", "Job")
        self._ensure_watch(key[0])
        try:
            await self._sync(key)
        except BackendUnavailable as e:
            # The API being down is not the job being lost: the watch loop retries.
            self.log.warning("reattach of %s deferred: %s", run.id, e)

    async def live_logs(self, run: JobRun, offset: int = 0) -> AsyncIterator[bytes] | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        key, kind = self._key(run)
        try:
            pod = await self._main_pod(key, kind)
            if pod is None:
                return None
            core = await self._core()
            resp = await self._call(
                "read pod logs",
                core.read_namespaced_pod_log,
                pod["metadata"]["name"],
                key[0],
                _preload_content=False,
            )
            data = await resp.read()
        except ApiException as e:
            if e.status == 400:  # container not started yet: nothing to show so far
                data = b""
            elif e.status == 404:
                return None
            else:
                raise BackendUnavailable(f"could not read logs: {_api_message(e)}") from None

        async def chunks() -> AsyncIterator[bytes]:
            if len(data) > offset:
                yield data[offset:]

        return chunks()

    async def shutdown(self) -> None:
        self._closing = True
        tasks = [t for ts in self._watchers.values() for t in ts]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._watchers.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None

    # ------------------------------------------------------------ reconciliation
    def _key(self, run: JobRun) -> tuple[tuple[str, str], str]:
        ref = run.backend_ref or {}
        if ref.get("name"):
            return (ref["namespace"], ref["name"]), ref.get("kind", "Job")
        for key, r in self._runs.items():
            if r.id == run.id and r.attempt == run.attempt:
                return key, self._kinds.get(key, "Job")
        body = self.build(run)
        return (body["metadata"]["namespace"], body["metadata"]["name"]), body["kind"]

    def _forget(self, key: tuple[str, str]) -> None:
        self._runs.pop(key, None)
        self._kinds.pop(key, None)
        self._cancelling.discard(key)
        self._locks.pop(key, None)

    async def _report(self, run: JobRun, state: str, **fields: Any) -> None:
        """Report a state once per change; nothing after a final state."""
        rk = (run.id, run.attempt)
        prev = self._reported.get(rk)
        if prev in FINAL or (prev == state and not set(fields) - {"environment"}):
            return
        self._reported[rk] = state
        await self.report(run.id, run.attempt, state=state, **fields)

    async def _get(self, ns: str, kind: str, name: str) -> dict | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            if kind == "Job":
                batch = await self._batch()
                resp = await self._call(
                    "read a Job", batch.read_namespaced_job, name, ns, _preload_content=False
                )
            else:
                custom = await self._custom()
                resp = await self._call(
                    "read a PyTorchJob",
                    custom.get_namespaced_custom_object,
                    *PYTORCH[:2],
                    ns,
                    PYTORCH[2],
                    name,
                    _preload_content=False,
                )
            return json.loads(await resp.read())
        except ApiException as e:
            if e.status == 404:
                return None
            raise BackendUnavailable(
                f"could not read {kind} {ns}/{name}: {_api_message(e)}"
            ) from None

    async def _pods(self, key: tuple[str, str]) -> list[dict]:
        core = await self._core()
        resp = await self._call(
            "list pods",
            core.list_namespaced_pod,
            key[0],
            label_selector=f"{L_RUN}={key[1]}",
            _preload_content=False,
        )
        return json.loads(await resp.read()).get("items", [])

    async def _main_pod(self, key: tuple[str, str], kind: str) -> dict | None:
        """The pod whose log is the job's log: the Job's newest pod, or the PyTorchJob master."""
        pods = await self._pods(key)
        if kind != "Job":
            pods = [
                p
                for p in pods
                if (p["metadata"].get("labels") or {}).get(
                    "training.kubeflow.org/replica-type", "master"
                )
                == "master"
            ] or pods
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
        return pods[-1] if pods else None

    async def _sync(self, key: tuple[str, str]) -> None:
        """Read the object and its pods, and report what changed."""
        run = self._runs.get(key)
        if run is None:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._runs:
                return
            kind = self._kinds.get(key, "Job")
            obj = await self._get(key[0], kind, key[1])
            if obj is None:
                if key in self._cancelling:
                    return  # cancel() reports when it sees it gone
                await self._finish_missing(run, key)
                return
            pods = await self._pods(key)
            state, reason = assess(kind, obj, pods)
            if state in ("succeeded", "failed", "timed_out"):
                await self._finish(run, key, kind, state, reason, pods)
            elif state == "failed-waiting":
                if self.fail_on_image_errors and key not in self._cancelling:
                    await self._abort(run, key, kind, reason)
            elif state == "running":
                await self._report(run, "running")
            elif self._reported.get((run.id, run.attempt)) is None:
                await self._report(run, "starting")

    async def _finish(self, run, key, kind, state, reason, pods) -> None:
        message = runner_result(pods)
        if message:
            # The runner knows best (e.g. its own max_runtime fired: timed_out with a reason).
            if message.get("state") in ("succeeded", "failed", "timed_out", "cancelled"):
                if not (state == "timed_out" and message.get("state") == "failed"):
                    state = message["state"]
            reason = message.get("exit_reason") or reason
        fields: dict[str, Any] = {"exit_reason": reason} if reason else {}
        ws = self.store.workspace(run.workspace) if self.store is not None else None
        if ws is not None:
            for name, field in (("metrics.json", "metrics"), ("environment.json", "environment")):
                with contextlib.suppress(Exception):
                    data = json.loads(await ws.read_bytes(f"jobs/{run.id}/{name}"))
                    if field == "environment":
                        data = {"image": self.image(run), **data}
                    fields[field] = data
        with contextlib.suppress(Exception):
            await self._persist_logs(run, key, kind, runner_finished=bool(message), pods=pods)
        if key in self._cancelling:
            return
        await self._report(run, state, **fields)
        self._forget(key)

    async def _finish_missing(self, run: JobRun, key) -> None:
        """The object is gone (deleted by hand or by its TTL while we were down)."""
        ws = self.store.workspace(run.workspace) if self.store is not None else None
        if ws is not None:
            with contextlib.suppress(Exception):
                result = json.loads(
                    await ws.read_bytes(f"jobs/{run.id}/attempts/{run.attempt}/result.json")
                )
                if result.get("state") in ("succeeded", "failed", "timed_out", "cancelled"):
                    fields: dict[str, Any] = {"exit_reason": result.get("exit_reason")}
                    with contextlib.suppress(Exception):
                        fields["metrics"] = json.loads(
                            await ws.read_bytes(f"jobs/{run.id}/metrics.json")
                        )
                    await self._report(run, result["state"], **fields)
                    self._forget(key)
                    return
        await self._report(
            run,
            "lost",
            exit_reason=f"{self._kinds.get(key, 'Job')} {key[0]}/{key[1]} disappeared from the cluster",
        )
        self._forget(key)

    async def _abort(self, run: JobRun, key, kind, reason: str) -> None:
        """A pod that can never start: delete the object and report the attempt failed."""
        from kubernetes_asyncio.client.exceptions import ApiException

        self._cancelling.add(key)
        with contextlib.suppress(ApiException, PaiError):
            if kind == "Job":
                batch = await self._batch()
                await self._call(
                    "delete a Job",
                    batch.delete_namespaced_job,
                    key[1],
                    key[0],
                    propagation_policy="Background",
                )
            else:
                custom = await self._custom()
                await self._call(
                    "delete a PyTorchJob",
                    custom.delete_namespaced_custom_object,
                    *PYTORCH[:2],
                    key[0],
                    PYTORCH[2],
                    key[1],
                    propagation_policy="Background",
                )
        await self._report(run, "failed", exit_reason=reason)
        self._forget(key)

    async def _persist_logs(
        self, run, key, kind, *, runner_finished: bool, pods: list | None = None
    ) -> None:
        """Keep the pod's log in the store: per attempt always, as ``logs.txt`` when the
        runner could not upload its own (killed, OOM, image problems)."""
        if self.store is None:
            return
        pod = await self._main_pod(key, kind)
        if pod is None:
            return
        core = await self._core()
        resp = await self._call(
            "read pod logs",
            core.read_namespaced_pod_log,
            pod["metadata"]["name"],
            key[0],
            _preload_content=False,
        )
        data = await resp.read()
        ws = self.store.workspace(run.workspace)
        await ws.write_bytes(f"jobs/{run.id}/attempts/{run.attempt}/pod-logs.txt", data)
        if not runner_finished:
            await ws.write_bytes(f"jobs/{run.id}/logs.txt", data)

    # ------------------------------------------------------------------ watches
    def _ensure_watch(self, ns: str) -> None:
        if self._closing or ns in self._watchers:
            return
        loop = asyncio.get_running_loop()
        self._watchers[ns] = [
            loop.create_task(self._watch_loop(ns, "jobs")),
            loop.create_task(self._watch_loop(ns, "pytorchjobs")),
            loop.create_task(self._watch_loop(ns, "pods")),
            loop.create_task(self._resync_loop(ns)),
        ]

    async def _resync_loop(self, ns: str) -> None:
        while not self._closing:
            await asyncio.sleep(self.resync_interval)
            for key in [k for k in self._runs if k[0] == ns]:
                with contextlib.suppress(PaiError):
                    await self._sync(key)

    async def _watch_loop(self, ns: str, plural: str) -> None:
        """List+watch ``plural`` in ``ns`` with our label; each event resyncs its run."""
        from kubernetes_asyncio.client.exceptions import ApiException

        delay = 0.5
        rv: str | None = None
        while not self._closing:
            try:
                if rv is None:
                    resp = await self._list(ns, plural, None)
                    listing = json.loads(await resp.read())
                    rv = (listing.get("metadata") or {}).get("resourceVersion") or "0"
                    for obj in listing.get("items", []):
                        await self._on_event(ns, plural, obj)
                resp = await self._list(ns, plural, rv, watch=True)
                async with resp:
                    delay = 0.5
                    while not self._closing:
                        line = await resp.content.readline()
                        if not line:
                            break
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            if (event.get("object") or {}).get("code") == 410:
                                rv = None  # too old: list again
                            break
                        obj = event.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        await self._on_event(ns, plural, obj)
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 404 and plural == "pytorchjobs":
                    return  # no Training Operator here; start() says so when it matters
                if e.status == 410:
                    rv = None
                self.log.warning("watch of %s in %s: %s", plural, ns, _api_message(e))
            except Exception as e:  # noqa: BLE001 - keep watching whatever happens
                self.log.warning("watch of %s in %s interrupted: %s", plural, ns, e)
                rv = None
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _list(self, ns: str, plural: str, rv: str | None, watch: bool = False):
        kwargs: dict[str, Any] = {"label_selector": SELECTOR, "_preload_content": False}
        if watch:
            kwargs.update(
                watch=True, resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True
            )
        if plural == "jobs":
            return await self._call(
                "list Jobs", (await self._batch()).list_namespaced_job, ns, **kwargs
            )
        if plural == "pods":
            return await self._call(
                "list pods", (await self._core()).list_namespaced_pod, ns, **kwargs
            )
        custom = await self._custom()
        return await self._call(
            "list PyTorchJobs",
            custom.list_namespaced_custom_object,
            *PYTORCH[:2],
            ns,
            PYTORCH[2],
            **kwargs,
        )

    async def _on_event(self, ns: str, plural: str, obj: dict) -> None:
        name = ((obj.get("metadata") or {}).get("labels") or {}).get(L_RUN)
        key = (ns, name)
        if name and key in self._runs:
            try:
                await self._sync(key)
            except PaiError as e:
                self.log.warning("sync of %s/%s: %s", ns, name, e.message)


def _api_message(e: Any) -> str:
    with contextlib.suppress(Exception):
        return json.loads(e.body).get("message") or str(e.reason)
    return f"{e.status} {e.reason}"


def assess(kind: str, obj: dict, pods: list[dict]) -> tuple[str, str | None]:
    """(state, reason) of one attempt from its object and pods.

    States: ``succeeded``/``failed``/``timed_out`` (final), ``running``, ``starting``, and
    ``failed-waiting`` (a pod that cannot start, e.g. its image cannot be pulled).
    """
    conds = {
        c.get("type"): c
        for c in (obj.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    if kind == "Job":
        if "Complete" in conds or "SuccessCriteriaMet" in conds:
            return "succeeded", None
        failed = conds.get("Failed") or conds.get("FailureTarget")
        if failed:
            if failed.get("reason") == "DeadlineExceeded":
                return "timed_out", "max_runtime exceeded (Kubernetes activeDeadlineSeconds)"
            return "failed", pod_failure(pods) or failed.get("message") or failed.get("reason")
    else:
        if "Succeeded" in conds:
            return "succeeded", None
        if "Failed" in conds:
            msg = conds["Failed"].get("message") or ""
            if "deadline" in msg.lower():
                return "timed_out", "max_runtime exceeded (PyTorchJob activeDeadlineSeconds)"
            return "failed", pod_failure(pods) or msg or "PyTorchJob failed"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FATAL_WAITING:
                what = FATAL_WAITING[waiting["reason"]]
                detail = waiting.get("message") or waiting["reason"]
                return "failed-waiting", f"{what}: {detail}"
    if any((p.get("status") or {}).get("phase") in ("Running", "Succeeded") for p in pods):
        return "running", None
    return "starting", None


def _terminated(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated")
        if t:
            return t
    return {}


def runner_result(pods: list[dict]) -> dict | None:
    """The runner's result from a termination message, preferring a failing pod's."""
    found = []
    for pod in pods:
        msg = _terminated(pod).get("message") or ""
        with contextlib.suppress(ValueError):
            data = json.loads(msg)
            if isinstance(data, dict) and "state" in data:
                found.append(data)
    found.sort(key=lambda d: d.get("state") == "succeeded")
    return found[0] if found else None


def pod_failure(pods: list[dict]) -> str | None:
    """A one-line reason from the first failed container (OOM, exit code, message)."""
    for pod in pods:
        t = _terminated(pod)
        if not t or t.get("exitCode", 0) == 0:
            continue
        if t.get("reason") == "OOMKilled":
            lim = (
                ((pod.get("spec") or {}).get("containers") or [{}])[0]
                .get("resources", {})
                .get("limits", {})
            )
            return f"out of memory: the container exceeded its memory limit ({lim.get('memory', 'unknown')})"
        msg = (t.get("message") or "").strip()
        if msg and not msg.startswith("{"):
            return msg.splitlines()[-1][:500]
        return f"container exited with code {t.get('exitCode')} ({t.get('reason', 'Error')})"
    return None


# ---------------------------------------------------------------------------- in the pod
def _pod_job_json(run_dir: Path) -> dict:
    job = json.loads(os.environ["PAI_JOB_JSON"])
    job["store"] = {
        "url": os.environ.get("PAI_STORE_URL", ""),
        "options": json.loads(os.environ.get("PAI_STORE_OPTIONS") or "{}"),
    }
    job["env"] = {k: os.environ[k] for k in ("PAI_LAB_URL", "PAI_LAB_TOKEN") if os.environ.get(k)}
    # Set by the Training Operator on PyTorchJob pods; absent for a plain Job.
    job["rank"] = int(os.environ.get("RANK", "0") or 0)
    job["world_size"] = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return job


def pod_main(run_dir: str | None = None, termination_log: str | None = None) -> int:
    """Container entry: write job.json, run the runner, echo its log, report its result.

    Exit status 0 only when the attempt succeeded, so the Job's own condition agrees with
    the runner; the result (state + exit reason) goes to the termination message.
    """
    rd = Path(run_dir or os.environ.get("PAI_RUN_DIR", RUN_DIR))
    rd.mkdir(parents=True, exist_ok=True)
    term = termination_log or os.environ.get("PAI_TERMINATION_LOG", "/dev/termination-log")
    job = _pod_job_json(rd)
    path = rd / "job.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(job, f)
    proc = subprocess.Popen([sys.executable, "-m", "pai_lab.jobs.runner", str(rd)])

    def forward(signum, frame):  # kubelet's SIGTERM on cancel: let the runner stop cleanly
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    logs = rd / "logs.txt"
    pos = 0

    def pump() -> None:
        nonlocal pos
        with contextlib.suppress(OSError), open(logs, "rb") as f:
            f.seek(pos)
            chunk = f.read()
            if chunk:
                pos += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()

    while proc.poll() is None:
        pump()
        time.sleep(0.2)
    pump()
    try:
        result = json.loads((rd / "result.json").read_text())
    except (OSError, ValueError):
        result = {
            "state": "failed",
            "exit_reason": f"the job runner exited with code {proc.returncode} and no result",
        }
    short = {
        "state": result.get("state", "failed"),
        "exit_reason": (result.get("exit_reason") or None),
    }
    if short["exit_reason"] and len(short["exit_reason"]) > 3000:
        short["exit_reason"] = short["exit_reason"][:3000] + "..."
    with contextlib.suppress(OSError), open(term, "w") as f:
        f.write(json.dumps(short))
    if job.get("rank", 0) == 0:
        # Also in the store: the answer for a reattach after the Job object is gone.
        with contextlib.suppress(Exception):
            from pai_lab.storage import ArtifactStore

            ws = ArtifactStore.from_dict(job["store"]).workspace(job["workspace"])
            ws.write_bytes_sync(
                f"jobs/{job['id']}/attempts/{job.get('attempt', 1)}/result.json",
                json.dumps(short).encode(),
            )
    return 0 if short["state"] == "succeeded" else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["pod"]:
        print(
            "usage: python -m pai_lab.jobs.kubernetes pod   (the entry of a job pod)",
            file=sys.stderr,
        )
        return 2
    if not os.environ.get("PAI_JOB_JSON"):
        print(
            "PAI_JOB_JSON is not set: this entry runs inside a pod made by KubernetesJobBackend",
            file=sys.stderr,
        )
        return 2
    return pod_main()


if __name__ == "__main__":
    sys.exit(main())
