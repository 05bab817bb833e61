"""A fake Kubernetes API server at the HTTP boundary (the one mock this project allows).

A small aiohttp app that stores objects by (group/version, plural, namespace, name) and
answers the REST calls kubernetes_asyncio makes: create, get, list with labelSelector,
replace/patch (JSON merge), delete with propagationPolicy (cascading to owned objects),
watch streams (``?watch=1``: chunked JSON lines from a resourceVersion), and pod logs.
Two tiny controllers stand in for the Job controller and the Kubeflow Training Operator:
a created Job/PyTorchJob gets its pods, and moving those pods through phases (the test
helpers at the bottom) moves the owner's status conditions the way the real ones do.

Fixture: ``fake_k8s`` (a running ``FakeKube`` with ``.url``), for async tests.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from datetime import datetime, timezone

import pytest
from aiohttp import web

from tests.support.common import free_port

KINDS = {
    # plural -> (apiVersion, kind)
    "pods": ("v1", "Pod"),
    "services": ("v1", "Service"),
    "secrets": ("v1", "Secret"),
    "configmaps": ("v1", "ConfigMap"),
    "jobs": ("batch/v1", "Job"),
    "deployments": ("apps/v1", "Deployment"),
    "horizontalpodautoscalers": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "pytorchjobs": ("kubeflow.org/v1", "PyTorchJob"),
    "inferenceservices": ("serving.kserve.io/v1beta1", "InferenceService"),
}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def match_labels(labels: dict, selector: str | None) -> bool:
    """Equality-based label selectors: ``a=b,c!=d,e,!f``."""
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def merge_patch(target: dict, patch: dict) -> dict:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge_patch(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class FakeKube:
    """The store, the HTTP app, the controllers and the test helpers."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, ns, name) -> obj
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, type, plural, obj)
        self.rv = 100
        self.logs: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query)
        self.deletions: list[dict] = []  # {"plural","namespace","name","propagationPolicy"}
        self.installed_crds = {"pytorchjobs", "inferenceservices"}
        self.down = False  # answer 503 to everything (API server unreachable)
        self._changed = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ HTTP
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        core = "/api/v1/namespaces/{ns}/{plural}"
        grp = "/apis/{group}/{version}/namespaces/{ns}/{plural}"
        for base in (core, grp):
            app.router.add_route("GET", base, self.h_list)
            app.router.add_route("POST", base, self.h_create)
            app.router.add_route("GET", base + "/{name}", self.h_get)
            app.router.add_route("PUT", base + "/{name}", self.h_replace)
            app.router.add_route("PATCH", base + "/{name}", self.h_patch)
            app.router.add_route("DELETE", base + "/{name}", self.h_delete)
            app.router.add_route("PUT", base + "/{name}/status", self.h_replace)
            app.router.add_route("PATCH", base + "/{name}/status", self.h_patch)
        app.router.add_route("GET", "/api/v1/namespaces/{ns}/pods/{name}/log", self.h_log)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        self.requests.append((request.method, request.path, dict(request.query)))
        if self.down:
            return _status(503, "ServiceUnavailable", "the fake API server is down")
        plural = request.match_info.get("plural")
        if plural and plural not in KINDS:
            return _status(
                404, "NotFound", f"the server could not find the requested resource ({plural})"
            )
        if plural in ("pytorchjobs", "inferenceservices") and plural not in self.installed_crds:
            return _status(404, "NotFound", "the server could not find the requested resource")
        return await handler(request)

    async def start(self) -> None:
        port = free_port()
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port, shutdown_timeout=0.5).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def h_create(self, request: web.Request) -> web.Response:
        ns, plural = request.match_info["ns"], request.match_info["plural"]
        try:
            body = await request.json()
        except ValueError:
            return _status(400, "BadRequest", "body is not JSON")
        name = (body.get("metadata") or {}).get("name")
        if not name and (body.get("metadata") or {}).get("generateName"):
            name = body["metadata"]["generateName"] + uuid.uuid4().hex[:5]
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        if not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", name) or (
            plural in ("jobs", "pods", "services") and len(name) > 63
        ):
            return _status(422, "Invalid", f"metadata.name: Invalid value: {name!r}")
        if (plural, ns, name) in self.objects:
            return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj = await self.create(plural, ns, body, name=name)
        return web.json_response(obj, status=201)

    async def h_get(self, request: web.Request) -> web.Response:
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        obj = self.objects.get(key)
        if obj is None:
            return _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        return web.json_response(obj)

    async def h_list(self, request: web.Request) -> web.StreamResponse:
        ns, plural = request.match_info["ns"], request.match_info["plural"]
        sel = request.query.get("labelSelector")
        if request.query.get("watch") in ("1", "true", "True"):
            return await self._watch(request, plural, ns, sel)
        api_version, kind = KINDS[plural]
        items = [
            o
            for (p, n, _), o in sorted(self.objects.items())
            if p == plural and n == ns and match_labels(o["metadata"].get("labels") or {}, sel)
        ]
        return web.json_response(
            {
                "apiVersion": api_version,
                "kind": kind + "List",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _watch(self, request, plural, ns, sel) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 3600)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)

        def wanted(p: str, o: dict) -> bool:
            return (
                p == plural
                and o["metadata"].get("namespace") == ns
                and match_labels(o["metadata"].get("labels") or {}, sel)
            )

        sent = since
        if not since:  # no resourceVersion: the current state as ADDED events first
            for (p, _n, _), o in sorted(self.objects.items()):
                if wanted(p, o):
                    await resp.write(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n")
            sent = self.rv
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while loop.time() < deadline:
                for rv, etype, p, o in list(self.events):
                    if rv > sent:
                        sent = rv
                        if wanted(p, o):
                            await resp.write(
                                json.dumps({"type": etype, "object": o}).encode() + b"\n"
                            )
                async with self._changed:
                    if self.events and self.events[-1][0] > sent:
                        continue
                    try:
                        await asyncio.wait_for(
                            self._changed.wait(), min(1.0, deadline - loop.time())
                        )
                    except asyncio.TimeoutError:
                        pass
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        return resp

    async def h_replace(self, request: web.Request) -> web.Response:
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        if key not in self.objects:
            return _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        body = await request.json()
        body.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "namespace", "name"):
            body["metadata"][k] = self.objects[key]["metadata"][k]
        obj = await self.put(key[0], body)
        return web.json_response(obj)

    async def h_patch(self, request: web.Request) -> web.Response:
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        if key not in self.objects:
            return _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        patch = await request.json()
        obj = merge_patch(copy.deepcopy(self.objects[key]), patch)
        obj = await self.put(key[0], obj)
        return web.json_response(obj)

    async def h_delete(self, request: web.Request) -> web.Response:
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        if key not in self.objects:
            return _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        policy = request.query.get("propagationPolicy")
        if request.can_read_body:
            try:
                body = await request.json()
                policy = body.get("propagationPolicy") or policy
            except ValueError:
                pass
        self.deletions.append(
            {"plural": key[0], "namespace": key[1], "name": key[2], "propagationPolicy": policy}
        )
        obj = await self.delete(*key, policy=policy)
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Success",
                "details": {"name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]},
            }
        )

    async def h_log(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if pod.get("status", {}).get("phase", "Pending") == "Pending":
            return _status(
                400,
                "BadRequest",
                f'container "main" in pod "{name}" is waiting to start: ContainerCreating',
            )
        return web.Response(text=self.logs.get((ns, name), ""), content_type="text/plain")

    # --------------------------------------------------------------- storage
    async def _emit(self, etype: str, plural: str, obj: dict) -> None:
        self.events.append((self.rv, etype, plural, copy.deepcopy(obj)))
        async with self._changed:
            self._changed.notify_all()

    async def create(self, plural: str, ns: str, body: dict, name: str | None = None) -> dict:
        obj = copy.deepcopy(body)
        api_version, kind = KINDS[plural]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        md = obj.setdefault("metadata", {})
        md["name"] = name or md["name"]
        md["namespace"] = ns
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = _now()
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        obj.setdefault("status", {})
        self.objects[(plural, ns, md["name"])] = obj
        await self._emit("ADDED", plural, obj)
        await self._controllers_on_create(plural, obj)
        return obj

    async def put(self, plural: str, obj: dict) -> dict:
        md = obj["metadata"]
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        self.objects[(plural, md["namespace"], md["name"])] = obj
        await self._emit("MODIFIED", plural, obj)
        return obj

    async def delete(self, plural: str, ns: str, name: str, policy: str | None = None) -> dict:
        obj = self.objects.pop((plural, ns, name))
        # Background/Foreground cascade to dependents; Orphan (or none for pods) keeps them.
        if policy in ("Foreground", "Background"):
            uid = obj["metadata"]["uid"]
            for key, dep in list(self.objects.items()):
                owners = dep["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in owners) and key in self.objects:
                    await self.delete(*key, policy=policy)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._emit("DELETED", plural, obj)
        return obj

    # ----------------------------------------------------------- controllers
    async def _controllers_on_create(self, plural: str, obj: dict) -> None:
        if plural == "jobs":
            await self._new_job_pod(obj)
        elif plural == "pytorchjobs":
            for rtype, rspec in obj["spec"]["pytorchReplicaSpecs"].items():
                for i in range(int(rspec.get("replicas", 1))):
                    await self._new_pod(
                        obj,
                        f"{obj['metadata']['name']}-{rtype.lower()}-{i}",
                        rspec["template"],
                        {
                            "training.kubeflow.org/job-name": obj["metadata"]["name"],
                            "training.kubeflow.org/replica-type": rtype.lower(),
                            "training.kubeflow.org/replica-index": str(i),
                        },
                    )
            await self._set_condition("pytorchjobs", obj, "Created", "PyTorchJobCreated")

    async def _new_job_pod(self, job: dict) -> dict:
        suffix = uuid.uuid4().hex[:5]
        return await self._new_pod(
            job,
            f"{job['metadata']['name']}-{suffix}",
            job["spec"]["template"],
            {
                "job-name": job["metadata"]["name"],
                "batch.kubernetes.io/job-name": job["metadata"]["name"],
            },
        )

    async def _new_pod(self, owner: dict, name: str, template: dict, extra_labels: dict) -> dict:
        tmeta = template.get("metadata") or {}
        pod = {
            "metadata": {
                "name": name,
                "labels": {**(tmeta.get("labels") or {}), **extra_labels},
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": owner["metadata"]["name"],
                        "uid": owner["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }
        return await self.create("pods", owner["metadata"]["namespace"], pod)

    async def _set_condition(
        self, plural: str, obj: dict, ctype: str, reason: str, message: str = ""
    ) -> None:
        key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in self.objects:
            return
        cur = copy.deepcopy(self.objects[key])
        conds = cur.setdefault("status", {}).setdefault("conditions", [])
        for c in conds:
            if c["type"] != ctype and plural == "pytorchjobs":
                c["status"] = "False"
        conds.append(
            {
                "type": ctype,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": _now(),
            }
        )
        await self.put(plural, cur)

    def _owner_of(self, pod: dict) -> tuple[str, dict] | None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            plural = {"Job": "jobs", "PyTorchJob": "pytorchjobs"}.get(ref["kind"])
            if plural:
                owner = self.objects.get((plural, pod["metadata"]["namespace"], ref["name"]))
                if owner:
                    return plural, owner
        return None

    # ----------------------------------------------------------- test helpers
    def find(self, plural: str, namespace: str | None = None, **labels: str) -> list[dict]:
        sel = ",".join(f"{k}={v}" for k, v in labels.items())
        return [
            o
            for (p, n, _), o in sorted(self.objects.items())
            if p == plural
            and (namespace is None or n == namespace)
            and match_labels(o["metadata"].get("labels") or {}, sel)
        ]

    def pods_of(self, owner: dict) -> list[dict]:
        uid = owner["metadata"]["uid"]
        return [
            o
            for (p, _, _), o in sorted(self.objects.items())
            if p == "pods"
            and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    async def set_pod_phase(
        self,
        pod: dict,
        phase: str,
        *,
        exit_code: int | None = None,
        message: str = "",
        reason: str | None = None,
        logs: str | None = None,
    ) -> None:
        """Move a pod to Running/Succeeded/Failed and let the owner's controller react."""
        key = ("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        cur = copy.deepcopy(self.objects[key])
        if logs is not None:
            self.logs[(key[1], key[2])] = logs
        status = cur.setdefault("status", {})
        status["phase"] = phase
        cname = cur["spec"]["containers"][0]["name"]
        if phase == "Running":
            state = {"running": {"startedAt": _now()}}
        elif phase in ("Succeeded", "Failed"):
            code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
            state = {
                "terminated": {
                    "exitCode": code,
                    "reason": reason or ("Completed" if code == 0 else "Error"),
                    "message": message,
                    "finishedAt": _now(),
                }
            }
        else:
            state = {"waiting": {"reason": reason or "ContainerCreating", "message": message}}
        status["containerStatuses"] = [
            {"name": cname, "ready": phase == "Running", "state": state, "restartCount": 0}
        ]
        await self.put("pods", cur)
        await self._react_to_pod(cur)

    async def set_pod_waiting(self, pod: dict, reason: str, message: str = "") -> None:
        await self.set_pod_phase(pod, "Pending", reason=reason, message=message)

    async def _react_to_pod(self, pod: dict) -> None:
        found = self._owner_of(pod)
        if not found:
            return
        plural, owner = found
        phase = pod["status"]["phase"]
        if plural == "jobs":
            pods = self.pods_of(owner)
            st = copy.deepcopy(owner.get("status") or {})
            st["active"] = sum(p["status"]["phase"] in ("Pending", "Running") for p in pods)
            st["succeeded"] = sum(p["status"]["phase"] == "Succeeded" for p in pods)
            st["failed"] = sum(p["status"]["phase"] == "Failed" for p in pods)
            owner = copy.deepcopy(owner)
            owner["status"] = st
            await self.put("jobs", owner)
            if phase == "Succeeded":
                await self._set_condition("jobs", owner, "Complete", "Completed")
            elif phase == "Failed":
                if st["failed"] > int(owner["spec"].get("backoffLimit", 6)):
                    await self._set_condition(
                        "jobs",
                        owner,
                        "Failed",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    )
                else:  # the Job controller retries with a new pod
                    await self._new_job_pod(owner)
        else:
            rtype = pod["metadata"]["labels"].get("training.kubeflow.org/replica-type")
            pods = self.pods_of(owner)
            if phase == "Running" and all(p["status"]["phase"] == "Running" for p in pods):
                await self._set_condition(plural, owner, "Running", "PyTorchJobRunning")
            elif phase == "Failed":
                await self._set_condition(
                    plural,
                    owner,
                    "Failed",
                    "PyTorchJobFailed",
                    f"PyTorchJob {owner['metadata']['name']} is failed because 1 {rtype.capitalize()} replica(s) failed.",
                )
            elif phase == "Succeeded" and rtype == "master":
                await self._set_condition(plural, owner, "Succeeded", "PyTorchJobSucceeded")

    async def exceed_deadline(self, owner_plural: str, owner: dict) -> None:
        """What the controllers do at activeDeadlineSeconds: kill the pods, mark Failed."""
        for pod in self.pods_of(owner):
            await self.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        if owner_plural == "jobs":
            await self._set_condition(
                "jobs",
                owner,
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        else:
            await self._set_condition(
                owner_plural,
                owner,
                "Failed",
                "PyTorchJobFailed",
                f"PyTorchJob {owner['metadata']['name']} is failed because it is active more than specified deadline",
            )


@pytest.fixture
async def fake_k8s():
    kube = FakeKube()
    await kube.start()
    try:
        yield kube
    finally:
        await kube.stop()
