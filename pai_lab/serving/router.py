"""The deployment router: one process per deployment in front of its model-server replicas.

``python -m pai_lab.serving.router <run-dir>`` reads ``<run-dir>/deployment.json`` (the
deployment dict, see :mod:`.local`, plus ``settings``), starts N model-server processes
per variant on free loopback ports and answers the Open Inference Protocol (V2) on its
own port:

- **Load balancing**: each request goes to the ready replica of the chosen variant with
  the fewest requests in flight (random among ties). A replica whose connection fails is
  skipped and the request retried on another one of the same variant.
- **Canary split**: with no version in the URL, a request goes to a non-shadow variant
  drawn at random with probability ``traffic/100``. ``/v2/models/<m>/versions/<v>/...``
  pins a variant by version. The response carries ``X-Pai-Variant``.
- **Shadow**: every request answered by a primary variant is also sent, in the
  background, to each shadow variant (``traffic`` on a shadow is the percentage of
  requests mirrored; 0 or absent means all). The client's response never waits for it
  and never sees its result or errors; counts are in ``/metrics``.
- **Health**: replicas are polled on ``/v2/health/ready``; a replica whose process exited,
  or that failed ``unhealthy_after`` probes in a row, is killed and started again.
- **Autoscaling**: between ``min_replicas`` and ``max_replicas`` by the mean in-flight
  requests over the last few seconds divided by ``target_inflight`` per replica. Scale-out
  is immediate; scale-in waits until the lower count has been enough for
  ``scale_in_delay`` seconds, and the removed replica first drains.

Clients authenticate to the router with the deployment's bearer token (health routes
stay open for probes). Replicas get a private random token that only the router knows,
so nobody can bypass the router's auth by finding a replica's port.

Admin API for the backend (bearer ``admin_token`` from ``<run-dir>/admin.json``):
``GET /_pai/status`` and ``PUT /_pai/deployment`` (new deployment dict: traffic, replicas,
variants). On start the router writes ``<run-dir>/router.json`` = ``{"pid", "port"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .._version import __version__
from ..errors import BadRequest

log = logging.getLogger("pai_lab.serving.router")

DEFAULT_SETTINGS = {
    "host": "127.0.0.1",
    "port": 0,
    "health_interval": 1.0,  # seconds between replica probes
    "unhealthy_after": 3,  # failed probes in a row before a live replica is restarted
    "autoscale_interval": 0.5,
    "autoscale_window": 4.0,  # seconds of in-flight samples averaged
    "target_inflight": 4.0,  # in-flight requests per replica the autoscaler aims at
    "scale_in_delay": 60.0,
    "replica_start_timeout": 120.0,
    "request_timeout": 60.0,
    "max_body_bytes": 16 * 1024 * 1024,
    "server_args": [],  # extra ModelServer args for every replica, e.g. ["--max-batch-size=64"]
}


# ---------------------------------------------------------------------------------------
# the deployment dict


def validate_deployment(d: Any) -> dict:
    """Check and normalise a deployment dict; raise ``BadRequest`` naming the field."""
    if not isinstance(d, dict):
        raise BadRequest("deployment must be an object")
    out = {
        "workspace": str(d.get("workspace") or "default"),
        "name": d.get("name"),
        "token": d.get("token") or "",
    }
    if not isinstance(out["name"], str) or not out["name"]:
        raise BadRequest("deployment 'name' must be a non-empty string")
    if not isinstance(out["token"], str):
        raise BadRequest("deployment 'token' must be a string")
    variants = d.get("variants")
    if not isinstance(variants, list) or not variants:
        raise BadRequest("deployment 'variants' must be a non-empty list")
    seen = set()
    norm = []
    for i, v in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise BadRequest(f"{where} must be an object")
        name = v.get("name") or f"v{i}"
        if name in seen:
            raise BadRequest(f"{where}: duplicate variant name {name!r}")
        seen.add(name)
        model = v.get("model")
        if not isinstance(model, str) or not model or "/" in model:
            raise BadRequest(f"{where}.model must be a model name without '/'")
        path = v.get("model_path")
        if not isinstance(path, str) or not path:
            raise BadRequest(f"{where}.model_path must be a local file or directory")
        if not os.path.exists(path):
            raise BadRequest(f"{where}.model_path {path!r} does not exist")

        def as_int(key: str, default: int, lo: int = 0, v: dict = v, where: str = where) -> int:
            val = v.get(key, default)
            if val is None:
                val = default
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise BadRequest(f"{where}.{key} must be an integer >= {lo}")
            return val

        replicas = as_int("replicas", 1, 1)
        mn = as_int("min_replicas", replicas, 1)
        mx = as_int("max_replicas", max(replicas, mn), 1)
        if not mn <= replicas <= mx:
            raise BadRequest(
                f"{where}: need min_replicas <= replicas <= max_replicas, got {mn}, {replicas}, {mx}"
            )
        traffic = v.get("traffic")
        if traffic is not None and (
            isinstance(traffic, bool)
            or not isinstance(traffic, (int, float))
            or not 0 <= traffic <= 100
        ):
            raise BadRequest(f"{where}.traffic must be a percentage between 0 and 100")
        norm.append(
            {
                "name": name,
                "model": model,
                "version": str(v.get("version") or "1"),
                "model_path": os.path.abspath(path),
                "framework": v.get("framework") or None,
                "replicas": replicas,
                "min_replicas": mn,
                "max_replicas": mx,
                "traffic": traffic,
                "shadow": bool(v.get("shadow", False)),
            }
        )
    primaries = [v for v in norm if not v["shadow"]]
    if not primaries:
        raise BadRequest("deployment needs at least one non-shadow variant")
    if len(primaries) == 1 and primaries[0]["traffic"] is None:
        primaries[0]["traffic"] = 100
    for v in norm:
        if v["traffic"] is None:
            v["traffic"] = 100 if v["shadow"] else 0
    total = sum(v["traffic"] for v in primaries)
    if abs(total - 100) > 1e-6:
        raise BadRequest(f"traffic of non-shadow variants must add up to 100, got {total:g}")
    out["variants"] = norm
    return out


# ---------------------------------------------------------------------------------------
# replicas and pools


class Replica:
    """One model-server process; ``port`` is known once it wrote its port file."""

    def __init__(self, pool: VariantPool, index: int):
        self.pool = pool
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.ready = False
        self.ever_ready = False
        self.draining = False
        self.inflight = 0
        self.failures = 0
        self.started = 0.0
        self.port_file = (
            pool.router.run_dir / f"replica-{pool.key}-{index}-{secrets.token_hex(3)}.json"
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        v = self.pool.variant
        r = self.pool.router
        self.port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pai_lab.serving.server",
            "--model-path",
            v["model_path"],
            "--name",
            v["model"],
            "--model-version",
            v["version"],
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            f"--ModelServer.parent_pid={os.getpid()}",
            "--log-level=WARN",
        ]
        if v["framework"]:
            cmd += ["--framework", v["framework"]]
        cmd += [str(a) for a in r.settings["server_args"]]
        env = dict(os.environ, PAI_SERVING_TOKEN=r.replica_token)
        logf = open(r.run_dir / f"replica-{self.pool.key}-{self.index}.log", "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        logf.close()
        self.port = None
        self.ready = self.ever_ready = False
        self.failures = 0
        self.started = time.monotonic()

    def stop(self, wait: float = 5.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ready = False
        self.port_file.unlink(missing_ok=True)

    def to_dict(self) -> dict:
        return {
            "pid": self.pid,
            "port": self.port,
            "ready": self.ready,
            "inflight": self.inflight,
            "draining": self.draining,
        }


class VariantPool:
    """The replicas of one variant plus its autoscaling state."""

    def __init__(self, router: Router, variant: dict):
        self.router = router
        self.variant = variant
        self.key = f"{variant['name']}-{secrets.token_hex(2)}"
        self.replicas: list[Replica] = []
        self.desired = variant["replicas"]
        self.inflight = 0
        self.samples: deque[tuple[float, int]] = deque()
        self.low_since: float | None = None
        self.restarts = 0
        self._next_index = 0
        self.requests = 0

    def add_replica(self) -> Replica:
        rep = Replica(self, self._next_index)
        self._next_index += 1
        rep.start()
        self.replicas.append(rep)
        return rep

    def ensure(self) -> None:
        live = [r for r in self.replicas if not r.draining]
        for _ in range(self.desired - len(live)):
            self.add_replica()

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready and not r.draining]

    def pick(self, exclude: set | None = None) -> Replica | None:
        cands = [r for r in self.ready_replicas() if not exclude or r not in exclude]
        if not cands:
            return None
        low = min(r.inflight for r in cands)
        return random.choice([r for r in cands if r.inflight == low])

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        self.replicas = []

    def status(self) -> dict:
        v = self.variant
        return {
            "name": v["name"],
            "model": v["model"],
            "version": v["version"],
            "model_path": v["model_path"],
            "framework": v["framework"],
            "traffic": v["traffic"],
            "shadow": v["shadow"],
            "min_replicas": v["min_replicas"],
            "max_replicas": v["max_replicas"],
            "replicas": {
                "desired": self.desired,
                "ready": len(self.ready_replicas()),
                "total": len(self.replicas),
            },
            "restarts": self.restarts,
            "requests": self.requests,
            "inflight": self.inflight,
            "replica_list": [r.to_dict() for r in self.replicas],
        }


# ---------------------------------------------------------------------------------------
# the router


class Router:
    def __init__(self, run_dir: Path, config: dict, admin_token: str):
        self.run_dir = run_dir
        self.settings = {**DEFAULT_SETTINGS, **(config.get("settings") or {})}
        self.admin_token = admin_token
        self.replica_token = secrets.token_urlsafe(24)
        self.deployment = validate_deployment(config["deployment"])
        self.pools: dict[str, VariantPool] = {}
        self.retired: list[VariantPool] = []
        self.client = tornado.httpclient.AsyncHTTPClient(max_clients=256)
        self.port: int | None = None
        self.background: set[asyncio.Task] = set()
        self.registry = CollectorRegistry()
        self.m_requests = Counter(
            "pai_router_requests",
            "Requests answered by the router, by variant and status code.",
            ["variant", "code"],
            registry=self.registry,
        )
        self.m_shadow = Counter(
            "pai_router_shadow_requests",
            "Requests mirrored to shadow variants, by variant and outcome code.",
            ["variant", "code"],
            registry=self.registry,
        )
        self.m_restarts = Counter(
            "pai_router_replica_restarts",
            "Replicas restarted after dying or failing health checks.",
            ["variant"],
            registry=self.registry,
        )
        self.m_replicas = Gauge(
            "pai_router_replicas",
            "Ready replicas per variant.",
            ["variant"],
            registry=self.registry,
        )
        for v in self.deployment["variants"]:
            self.pools[v["name"]] = VariantPool(self, v)

    # -- configuration ----------------------------------------------------------------
    def apply(self, new: dict) -> None:
        """Apply an updated deployment: traffic and replica counts in place, new models
        in new pools (the old pool is retired once the new one has a ready replica)."""
        dep = validate_deployment(new)
        if (dep["workspace"], dep["name"]) != (
            self.deployment["workspace"],
            self.deployment["name"],
        ):
            raise BadRequest("an update cannot change the deployment's workspace or name")
        names = {v["name"] for v in dep["variants"]}
        for name in list(self.pools):
            if name not in names:
                self.pools.pop(name).stop()
        for v in dep["variants"]:
            pool = self.pools.get(v["name"])
            same_model = pool is not None and all(
                pool.variant[k] == v[k] for k in ("model", "version", "model_path", "framework")
            )
            if same_model:
                pool.variant = v
                pool.desired = min(max(pool.desired, v["min_replicas"]), v["max_replicas"])
                if v["replicas"] != pool.desired and v["min_replicas"] == v["max_replicas"]:
                    pool.desired = v["replicas"]
            else:
                if pool is not None:
                    self.retired.append(pool)
                self.pools[v["name"]] = VariantPool(self, v)
                self.pools[v["name"]].ensure()
        self.deployment = dep
        self._write_state()

    def _write_state(self) -> None:
        tmp = self.run_dir / "deployment.json.tmp"
        cfg = json.loads((self.run_dir / "deployment.json").read_text())
        cfg["deployment"] = self.deployment
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(cfg, indent=1))
        os.replace(tmp, self.run_dir / "deployment.json")

    # -- choosing where a request goes -------------------------------------------------
    def primaries(self) -> list[VariantPool]:
        return [p for p in self.pools.values() if not p.variant["shadow"]]

    def shadows(self) -> list[VariantPool]:
        return [p for p in self.pools.values() if p.variant["shadow"]]

    def choose(self, model: str, version: str | None) -> VariantPool:
        known = {p.variant["model"] for p in self.pools.values()}
        if model not in known and model != self.deployment["name"]:
            raise LookupError(
                f"model '{model}' not found in deployment '{self.deployment['name']}'"
            )
        if version is not None:
            for p in self.primaries():
                if p.variant["version"] == version and model in (
                    p.variant["model"],
                    self.deployment["name"],
                ):
                    return p
            raise LookupError(f"model '{model}' has no version '{version}' in this deployment")
        x = random.random() * 100.0
        acc = 0.0
        candidates = [p for p in self.primaries() if p.variant["traffic"] > 0]
        for p in candidates:
            acc += p.variant["traffic"]
            if x < acc:
                return p
        return candidates[-1]

    def is_ready(self) -> bool:
        return all(p.ready_replicas() for p in self.primaries() if p.variant["traffic"] > 0)

    async def forward(
        self, pool: VariantPool, method: str, suffix: str, body: bytes | None
    ) -> tuple[int, bytes]:
        """Send to a ready replica of ``pool``; on a connection failure try another one."""
        v = pool.variant
        path = f"/v2/models/{v['model']}/versions/{v['version']}{suffix}"
        tried: set = set()
        pool.inflight += 1
        try:
            while True:
                rep = pool.pick(tried)
                if rep is None:
                    return 503, json.dumps(
                        {"error": f"no ready replica for variant '{v['name']}'"}
                    ).encode()
                tried.add(rep)
                rep.inflight += 1
                try:
                    resp = await self.client.fetch(
                        f"http://127.0.0.1:{rep.port}{path}",
                        method=method,
                        body=body,
                        headers={
                            "Authorization": f"Bearer {self.replica_token}",
                            "Content-Type": "application/json",
                        },
                        request_timeout=self.settings["request_timeout"],
                        raise_error=False,
                    )
                except Exception as e:  # refused/reset/timeout: take it out, try another
                    log.warning("replica %s of %s failed: %s", rep.index, v["name"], e)
                    rep.ready = False
                    continue
                finally:
                    rep.inflight -= 1
                if resp.code == 599:
                    rep.ready = False
                    continue
                return resp.code, resp.body or b""
        finally:
            pool.inflight -= 1

    def mirror(self, suffix: str, body: bytes | None) -> None:
        for pool in self.shadows():
            pct = pool.variant["traffic"] or 100
            if pct < 100 and random.random() * 100 >= pct:
                continue
            task = asyncio.ensure_future(self._shadow_one(pool, suffix, body))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def _shadow_one(self, pool: VariantPool, suffix: str, body: bytes | None) -> None:
        try:
            code, _ = await self.forward(pool, "POST", suffix, body)
        except Exception:  # a shadow must never affect anyone
            code = 599
        pool.requests += 1
        self.m_shadow.labels(pool.variant["name"], str(code)).inc()

    # -- supervision ------------------------------------------------------------------
    async def supervise(self) -> None:
        for pool in self.pools.values():
            pool.ensure()
        next_health = 0.0
        while True:
            now = time.monotonic()
            if now >= next_health:
                next_health = now + self.settings["health_interval"]
                await self.check_health()
            self.autoscale(now)
            await asyncio.sleep(self.settings["autoscale_interval"])

    async def check_health(self) -> None:
        probes = []
        for pool in list(self.pools.values()) + self.retired:
            for rep in list(pool.replicas):
                probes.append(self._check_replica(pool, rep))
        await asyncio.gather(*probes)
        for pool in list(self.retired):  # retire replaced pools once the new one serves
            new = self.pools.get(pool.variant["name"])
            if new is None or new.ready_replicas() or not pool.ready_replicas():
                pool.stop()
                self.retired.remove(pool)
        for name, pool in self.pools.items():
            self.m_replicas.labels(name).set(len(pool.ready_replicas()))

    async def _check_replica(self, pool: VariantPool, rep: Replica) -> None:
        if rep.draining:
            if rep.inflight == 0:
                rep.stop()
                pool.replicas.remove(rep)
            return
        proc = rep.proc
        if proc is None or proc.poll() is not None:
            log.warning(
                "replica %s of %s exited (%s); restarting",
                rep.index,
                pool.variant["name"],
                proc.returncode if proc else None,
            )
            self._restart(pool, rep)
            return
        if rep.port is None:
            try:
                rep.port = int(json.loads(rep.port_file.read_text())["port"])
            except (OSError, ValueError, KeyError):
                if time.monotonic() - rep.started > self.settings["replica_start_timeout"]:
                    log.warning("replica %s of %s never came up", rep.index, pool.variant["name"])
                    self._restart(pool, rep)
                return
        try:
            resp = await self.client.fetch(
                f"http://127.0.0.1:{rep.port}/v2/health/ready",
                request_timeout=2.0,
                raise_error=False,
            )
            ok = resp.code == 200
        except Exception:
            ok = False
        if ok:
            rep.ready = rep.ever_ready = True
            rep.failures = 0
            return
        rep.failures += 1
        rep.ready = False  # out of rotation at the first failed probe
        if rep.ever_ready and rep.failures >= self.settings["unhealthy_after"]:
            log.warning(
                "replica %s of %s is unhealthy; restarting", rep.index, pool.variant["name"]
            )
            self._restart(pool, rep)
        elif (
            not rep.ever_ready
            and time.monotonic() - rep.started > self.settings["replica_start_timeout"]
        ):
            log.warning("replica %s of %s never became ready", rep.index, pool.variant["name"])
            self._restart(pool, rep)

    def _restart(self, pool: VariantPool, rep: Replica) -> None:
        rep.stop(wait=2.0)
        rep.start()
        pool.restarts += 1
        self.m_restarts.labels(pool.variant["name"]).inc()

    def autoscale(self, now: float) -> None:
        window = self.settings["autoscale_window"]
        target = max(0.01, float(self.settings["target_inflight"]))
        for pool in self.pools.values():
            v = pool.variant
            pool.samples.append((now, pool.inflight))
            while pool.samples and pool.samples[0][0] < now - window:
                pool.samples.popleft()
            if v["min_replicas"] == v["max_replicas"]:
                pool.desired = v["replicas"]
                pool.ensure()
                continue
            mean = sum(s for _, s in pool.samples) / len(pool.samples)
            want = min(max(math.ceil(mean / target), v["min_replicas"]), v["max_replicas"])
            if want > pool.desired:
                log.info("scaling %s out to %d (mean in-flight %.1f)", v["name"], want, mean)
                pool.desired = want
                pool.low_since = None
            elif want < pool.desired:
                if pool.low_since is None:
                    pool.low_since = now
                elif now - pool.low_since >= self.settings["scale_in_delay"]:
                    pool.desired -= 1
                    pool.low_since = now
                    victims = sorted(
                        (r for r in pool.replicas if not r.draining),
                        key=lambda r: (r.ready, -r.inflight),
                    )
                    if victims:
                        victims[0].draining = True
                    log.info("scaling %s in to %d", v["name"], pool.desired)
            else:
                pool.low_since = None
            pool.ensure()

    def status(self) -> dict:
        pools = list(self.pools.values())
        ready = self.is_ready()
        return {
            "workspace": self.deployment["workspace"],
            "name": self.deployment["name"],
            "url": f"http://{self.settings['host']}:{self.port}",
            "state": "ready" if ready else "starting",
            "router_pid": os.getpid(),
            "variants": [p.status() for p in pools],
        }

    def shutdown(self) -> None:
        for pool in list(self.pools.values()) + self.retired:
            pool.stop()


# ---------------------------------------------------------------------------------------
# HTTP


class _Base(tornado.web.RequestHandler):
    def initialize(self, router: Router) -> None:
        self.router = router

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps({"error": self._reason if status_code < 500 else "internal error"}))

    def _bearer_ok(self, token: str) -> bool:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.encode()
        )

    def require_token(self) -> bool:
        token = self.router.deployment["token"]
        if token and not self._bearer_ok(token):
            self.set_header("WWW-Authenticate", 'Bearer realm="pai-lab"')
            self.error(401, "missing or wrong bearer token")
            return False
        return True


class LiveHandler(_Base):
    def get(self) -> None:
        self.finish('{"live":true}')


class ReadyHandler(_Base):
    def get(self) -> None:
        ready = self.router.is_ready()
        self.set_status(200 if ready else 503)
        self.finish(json.dumps({"ready": ready}))


class ServerMetaHandler(_Base):
    def get(self) -> None:
        if self.require_token():
            self.finish(
                json.dumps({"name": "pai-lab-router", "version": __version__, "extensions": []})
            )


class ModelProxyHandler(_Base):
    async def get(self, model: str, version: str | None, suffix: str | None) -> None:
        await self._proxy("GET", model, version, suffix or "", None)

    async def post(self, model: str, version: str | None, suffix: str | None) -> None:
        if suffix != "/infer":
            return self.error(405, "only .../infer accepts POST")
        body = self.request.body
        if len(body) > self.router.settings["max_body_bytes"]:
            return self.error(
                400,
                f"request body of {len(body)} bytes exceeds the limit of "
                f"{self.router.settings['max_body_bytes']} bytes",
            )
        await self._proxy("POST", model, version, suffix, body)

    async def _proxy(
        self, method: str, model: str, version: str | None, suffix: str, body: bytes | None
    ) -> None:
        if not self.require_token():
            return
        r = self.router
        try:
            pool = r.choose(model, version)
        except LookupError as e:
            return self.error(404, str(e))
        code, payload = await r.forward(pool, method, suffix, body)
        name = pool.variant["name"]
        pool.requests += 1
        r.m_requests.labels(name, str(code)).inc()
        if method == "POST" and r.shadows():
            r.mirror(suffix, body)
        self.set_status(code)
        self.set_header("X-Pai-Variant", name)
        self.finish(payload)


class MetricsHandler(_Base):
    def get(self) -> None:
        if self.require_token():
            self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.finish(generate_latest(self.router.registry))


class AdminHandler(_Base):
    def prepare(self) -> None:
        if not self._bearer_ok(self.router.admin_token):
            self.error(401, "admin token required")

    def get(self) -> None:
        self.finish(json.dumps(self.router.status()))

    def put(self) -> None:
        try:
            self.router.apply(json.loads(self.request.body))
        except ValueError:
            return self.error(400, "body is not valid JSON")
        except BadRequest as e:
            return self.error(400, e.message)
        self.finish(json.dumps(self.router.status()))


class NotFound(_Base):
    def prepare(self) -> None:
        self.error(404, f"no route {self.request.method} {self.request.path}")


def make_app(router: Router) -> tornado.web.Application:
    a = {"router": router}
    return tornado.web.Application(
        [
            (r"/v2/health/live", LiveHandler, a),
            (r"/v2/health/ready", ReadyHandler, a),
            (r"/v2/?", ServerMetaHandler, a),
            (r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?/?", ModelProxyHandler, a),
            (r"/metrics", MetricsHandler, a),
            (r"/_pai/status", AdminHandler, a),
            (r"/_pai/deployment", AdminHandler, a),
        ],
        default_handler_class=NotFound,
        default_handler_args=a,
        log_function=lambda h: None,
    )


async def run(run_dir: Path) -> None:
    config = json.loads((run_dir / "deployment.json").read_text())
    admin = json.loads((run_dir / "admin.json").read_text())["admin_token"]
    router = Router(run_dir, config, admin)
    s = router.settings
    sockets = tornado.netutil.bind_sockets(int(s["port"]), s["host"])
    router.port = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(
        make_app(router), max_body_size=int(s["max_body_bytes"]) * 2
    )
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sup = asyncio.ensure_future(router.supervise())
    tmp = run_dir / "router.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": router.port}))
    os.replace(tmp, run_dir / "router.json")
    try:
        await stop.wait()
    finally:
        sup.cancel()
        server.stop()
        router.shutdown()
        (run_dir / "router.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pai_lab.serving.router <run-dir>", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run(Path(argv[0])))


if __name__ == "__main__":
    main()
