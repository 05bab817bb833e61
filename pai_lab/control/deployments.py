"""Deployments in the control plane: model references in, running endpoints out.

The REST layer (``handlers/registry.py``) checks roles; this module validates requests,
resolves model references (``iris@production``, ``iris:3``, ``iris``) to immutable
registry versions, mints the per-deployment bearer token and drives a deployment backend:
``LocalDeploymentBackend`` (router + model-server processes, :mod:`pai_lab.serving.local`)
by default, or the Kubernetes one (:mod:`pai_lab.serving.kubernetes`) with
``c.DeploymentService.backend = "kubernetes"``.

Rules worth knowing:

- **A deployment pins versions.** ``iris@production`` is resolved once, when the variant
  is created; moving the alias later does not redeploy. ``PATCH {"model": "iris@production"}``
  re-resolves it on purpose.
- **Production deployments.** A deployment is *production* when any of its variants was
  resolved through the ``production`` alias. Creating, changing or deleting a production
  deployment (including a change that makes a deployment production) needs the
  ``operator`` role; any other deployment needs ``developer``. The handler enforces it
  with :meth:`DeploymentService.is_production` before and after the change.
- **The token is shown once.** The database holds only its SHA-256
  (``Deployment.token_hash``) and a short hint, so a database dump (PostgreSQL in
  Kubernetes mode) leaks no endpoint. The plaintext stays on the control plane's own
  disk, ``<data_dir>/deployment-tokens/<ws>/<name>`` (0600, like the admin token), and is
  read back (checked against the hash) when a backend needs the whole deployment again:
  a traffic change or a restart must not drop authentication.
- **Restarts.** Routers outlive the control plane. On first use after a start the
  service reattaches (``handlers.registry.on_start`` does it at start when wired):
  routers the DB still wants are restarted if they died, or recreated if their run
  directory vanished; run directories the DB no longer knows are removed; a deployment
  whose token is gone too becomes ``lost`` (delete and recreate it).

Traffic changes: ``{"canary": {"model": "iris:4", "traffic": 10}}`` keeps the main
variant and gives the canary 10%; ``{"canary": null}`` (or traffic 0) removes it;
``{"variants": [{"model": "iris:3", "traffic": 90}, {"model": "iris", "version": 4,
"weight": 10}, {"model": "iris:5", "shadow": true}]}`` replaces the whole set (``weight``
is accepted as a synonym of ``traffic``). ``replicas``/``min_replicas``/``max_replicas``
at the top level apply to the main variant.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from ..errors import BackendUnavailable, BadRequest, Conflict, NotFound, PaiError
from .db import Deployment, hash_token, iso, select, utcnow
from .registry import PRODUCTION, Registry

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BACKENDS = {
    "local": "pai_lab.serving.local.LocalDeploymentBackend",
    "kubernetes": "pai_lab.serving.kubernetes.KubernetesServingBackend",
}
CREATE_FIELDS = {"name", "model", "replicas", "min_replicas", "max_replicas", "variants"}
PATCH_FIELDS = {"model", "canary", "variants", "replicas", "min_replicas", "max_replicas"}
VARIANT_FIELDS = {
    "name",
    "model",
    "version",
    "traffic",
    "weight",
    "shadow",
    "replicas",
    "min_replicas",
    "max_replicas",
}
MAX_REPLICAS = 64


def _int(body: dict, key: str, where: str, default: int | None = None) -> int | None:
    v = body.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_REPLICAS:
        raise BadRequest(f"{where}{key}: expected an integer from 1 to {MAX_REPLICAS}, got {v!r}")
    return v


def _traffic(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
        raise BadRequest(f"{where}traffic: expected a percentage from 0 to 100, got {v!r}")
    return int(v) if float(v).is_integer() else float(v)


def _replica_fields(body: dict, where: str, base: dict | None = None) -> dict:
    """replicas/min/max with defaults from ``base``; min <= replicas <= max."""
    base = base or {}
    r = _int(body, "replicas", where)
    mn = _int(body, "min_replicas", where)
    mx = _int(body, "max_replicas", where)
    replicas = r if r is not None else base.get("replicas", 1)
    if r is not None and mn is None and mx is None:
        mn = mx = replicas  # a plain replica count means: exactly that many
    mn = mn if mn is not None else min(base.get("min_replicas", replicas), replicas)
    mx = mx if mx is not None else max(base.get("max_replicas", replicas), replicas)
    if r is None:
        replicas = min(max(replicas, mn), mx)
    if not mn <= replicas <= mx:
        raise BadRequest(
            f"{where}replicas: need min_replicas <= replicas <= max_replicas, "
            f"got {mn} <= {replicas} <= {mx}"
        )
    return {"replicas": replicas, "min_replicas": mn, "max_replicas": mx}


def deployment_dict(d: Deployment, live: dict | None = None, error: str | None = None) -> dict:
    """The REST view of a deployment, merged with the backend's live status if known."""
    ref = d.backend_ref or {}
    live_variants = {v.get("name"): v for v in (live or {}).get("variants", [])}
    variants = []
    for v in d.variants or []:
        lv = live_variants.get(v["name"], {})
        reps = lv.get("replicas") if isinstance(lv.get("replicas"), dict) else {}
        variants.append(
            {
                **v,
                "weight": v["traffic"],
                "ready_replicas": reps.get("ready"),
                "desired_replicas": reps.get("desired"),
                "restarts": lv.get("restarts"),
                "requests": lv.get("requests"),
            }
        )
    main = next((v for v in variants if not v["shadow"]), variants[0] if variants else None)
    state = (live or {}).get("state") or d.state
    ready_total = sum(v["ready_replicas"] or 0 for v in variants)
    health: dict[str, Any] = {
        "state": state if live is not None or error else "unknown",
        "ready": state == "ready",
        "ready_replicas": ready_total,
        "replicas": sum(v["replicas"] for v in variants),
    }
    if error:
        health["error"] = error
    return {
        "workspace": d.workspace,
        "name": d.name,
        "state": state,
        "url": (live or {}).get("url") or d.url or None,
        "backend": d.backend,
        "production": bool(ref.get("production")),
        "token_hint": ref.get("token_hint", ""),
        "model": f"{main['model']}:{main['version']}" if main else None,
        "replicas": main["replicas"] if main else 0,
        "traffic": {v["name"]: v["traffic"] for v in variants},
        "variants": variants,
        "health": health,
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
        "created_by": d.created_by,
    }


class DeploymentService(LoggingConfigurable):
    """Model endpoints of all workspaces, over one deployment backend."""

    backend_name = Unicode(
        "local",
        help="Deployment backend: 'local' (router and model-server processes on this "
        "machine), 'kubernetes' (KServe InferenceService or Deployment+Service), or a "
        "dotted class with the same async create/update/status/delete API.",
    ).tag(config=True)

    def __init__(self, control, registry: Registry, **kwargs: Any):
        super().__init__(parent=control, **kwargs)
        self.control = control
        self.db = control.db
        self.registry = registry
        self._backend = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._attached: asyncio.Future | None = None

    # ---- backend ---------------------------------------------------------------------
    @property
    def backend(self):
        """Built on first use, so a control plane that never deploys pays nothing."""
        if self._backend is None:
            dotted = BACKENDS.get(self.backend_name, self.backend_name)
            mod, _, cls_name = dotted.rpartition(".")
            cls = getattr(importlib.import_module(mod), cls_name)
            if self.backend_name == "local" or "data_dir" in getattr(cls, "class_traits", dict)():
                self._backend = cls(parent=self.control, data_dir=self.control.data_dir)
            else:
                self._backend = cls(parent=self.control)
        return self._backend

    @property
    def is_local(self) -> bool:
        return hasattr(self.backend, "run_dir")

    def _lock(self, ws: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((ws, name), asyncio.Lock())

    async def ready(self) -> None:
        """Reattach once per process (first call does it; the others wait for it)."""
        if self._attached is None:
            self._attached = asyncio.ensure_future(self._reattach())
        await asyncio.shield(self._attached)

    async def _reattach(self) -> None:
        """Never raises: a broken deployment must not take the API down with it."""
        try:
            await self._reattach_all()
        except Exception:
            self.log.exception("reattaching deployments after start failed")

    async def _reattach_all(self) -> None:
        if not self.is_local:
            return
        rows = await self.db.run(lambda s: list(s.scalars(select(Deployment))))
        wanted, lost = [], []
        for d in rows:
            token = self._stored_token(d)
            if token is None:
                lost.append(d)
                continue
            wanted.append(await self._backend_spec(d.workspace, d.name, d.variants, token))
        found = await self.backend.reattach(wanted)
        known = {f"{d.workspace}/{d.name}" for d in rows}
        for key in found:
            if key not in known:  # deleted from the DB while we were down
                ws, name = key.split("/", 1)
                try:
                    await self.backend.delete(name, ws)
                except PaiError:
                    pass
        for d in lost:
            await self._set(d.workspace, d.name, state="lost")
        for key, st in found.items():
            if key in known:
                ws, name = key.split("/", 1)
                await self._set(ws, name, state=st.get("state") or "unknown", url=st.get("url"))

    def _token_file(self, ws: str, name: str) -> Path:
        return Path(self.control.data_dir) / "deployment-tokens" / ws / name

    def _keep_token(self, ws: str, name: str, token: str) -> None:
        """Keep the plaintext token in a 0600 file of the (0700) data dir, never the DB."""
        path = self._token_file(ws, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)

    def _stored_token(self, d: Deployment) -> str | None:
        """The plaintext token (ours, else the local backend's run dir), hash-checked."""
        candidates = []
        try:
            candidates.append(self._token_file(d.workspace, d.name).read_text().strip())
        except OSError:
            pass
        if self.is_local:
            try:
                path = self.backend.run_dir(d.name, d.workspace) / "deployment.json"
                candidates.append(json.loads(path.read_text())["deployment"]["token"])
            except (OSError, ValueError, KeyError, TypeError, PaiError):
                pass
        for token in candidates:
            if isinstance(token, str) and hash_token(token) == d.token_hash:
                return token
        return None

    # ---- requests -> variants ----------------------------------------------------------
    async def _variant(self, ws: str, body: Any, where: str, base: dict | None = None) -> dict:
        if not isinstance(body, dict):
            raise BadRequest(f"{where}: expected an object")
        unknown = set(body) - VARIANT_FIELDS
        if unknown:
            raise BadRequest(f"{where}: unknown field(s): {', '.join(sorted(unknown))}")
        model = body.get("model")
        if "version" in body and body["version"] not in (None, ""):
            if not isinstance(model, str) or "@" in model or ":" in model:
                raise BadRequest(f"{where}.model: give 'NAME' with 'version', or 'NAME:VERSION'")
            model = f"{model}:{body['version']}"
        version = await self.registry.resolve(ws, model, what=f"{where}.model")
        if "traffic" in body and "weight" in body and body["traffic"] != body["weight"]:
            raise BadRequest(f"{where}: 'traffic' and 'weight' disagree")
        traffic = _traffic(body.get("traffic", body.get("weight")), f"{where}.")
        shadow = body.get("shadow", False)
        if not isinstance(shadow, bool):
            raise BadRequest(f"{where}.shadow: expected true or false")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
            raise BadRequest(f"{where}.name: 1-63 letters, digits, '_', '.', '-'")
        return {
            "name": name,
            "model": version["model"],
            "version": version["version"],
            "ref": model,
            "alias": version["alias"],
            "framework": version["framework"],
            "traffic": traffic,
            "shadow": shadow,
            **_replica_fields(body, f"{where}.", base),
        }

    @staticmethod
    def _name_variants(variants: list[dict], old: list[dict]) -> list[dict]:
        """Keep names of unchanged variants (so their replicas keep running)."""
        by_model = {(v["model"], v["version"], v["shadow"]): v["name"] for v in old}
        used: set[str] = {v["name"] for v in variants if v["name"]}
        for i, v in enumerate(variants):
            if v["name"]:
                continue
            name = by_model.get((v["model"], v["version"], v["shadow"]))
            if name is None or name in used:
                if not v["shadow"] and "main" not in used and i == 0:
                    name = "main"
                else:
                    base = f"{'shadow' if v['shadow'] else 'v'}-{v['model']}-{v['version']}"
                    name, n = base[:63], 2
                    while name in used:
                        name, n = f"{base[:58]}-{n}", n + 1
            v["name"] = name
            used.add(name)
        names = [v["name"] for v in variants]
        if len(set(names)) != len(names):
            raise BadRequest("variants: duplicate variant names")
        return variants

    @staticmethod
    def _check_traffic(variants: list[dict]) -> list[dict]:
        primaries = [v for v in variants if not v["shadow"]]
        if not primaries:
            raise BadRequest("variants: at least one variant must take traffic (not shadow)")
        if len(primaries) == 1 and primaries[0]["traffic"] is None:
            primaries[0]["traffic"] = 100
        for v in variants:
            if v["traffic"] is None:
                v["traffic"] = 100 if v["shadow"] else 0
        total = sum(v["traffic"] for v in primaries)
        if abs(total - 100) > 1e-6:
            raise BadRequest(
                f"variants: traffic of the non-shadow variants adds up to {total:g}, not 100"
            )
        return variants

    @staticmethod
    def is_production(variants: list[dict]) -> bool:
        return any(v.get("alias") == PRODUCTION for v in variants)

    async def plan_create(self, ws: str, body: Any) -> dict:
        """Validate a create request and resolve its models (no side effects)."""
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        unknown = set(body) - CREATE_FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        name = body.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadRequest(
                f"name: deployment names are 1-63 letters, digits, '_', '.', '-', got {name!r}"
            )
        if ("model" in body) == ("variants" in body):
            raise BadRequest("give either 'model' (e.g. 'iris@production') or 'variants'")
        if "model" in body:
            main = await self._variant(
                ws,
                {
                    k: body[k]
                    for k in ("model", "replicas", "min_replicas", "max_replicas")
                    if k in body
                },
                "model",
            )
            variants = [main]
        else:
            if not isinstance(body["variants"], list) or not body["variants"]:
                raise BadRequest("variants: expected a non-empty list")
            variants = [
                await self._variant(ws, v, f"variants[{i}]") for i, v in enumerate(body["variants"])
            ]
        variants = self._check_traffic(self._name_variants(variants, []))
        return {"name": name, "variants": variants}

    async def plan_update(
        self, ws: str, name: str, body: Any
    ) -> tuple[dict, list[dict], list[dict]]:
        """(current deployment, old variants, new variants) for a PATCH (no side effects)."""
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        unknown = set(body) - PATCH_FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if not body:
            raise BadRequest(f"nothing to change; give one of {', '.join(sorted(PATCH_FIELDS))}")
        if "variants" in body and ({"canary", "model"} & set(body)):
            raise BadRequest("give 'variants' alone, or 'model'/'canary'/'replicas'")
        d = await self._row(ws, name)
        old = [dict(v) for v in d.variants]
        if "variants" in body:
            if not isinstance(body["variants"], list) or not body["variants"]:
                raise BadRequest("variants: expected a non-empty list")
            new = []
            for i, v in enumerate(body["variants"]):
                same = next(
                    (o for o in old if isinstance(v, dict) and o["name"] == v.get("name")), None
                )
                new.append(await self._variant(ws, v, f"variants[{i}]", base=same))
            new = self._name_variants(new, old)
        else:
            new = [dict(v) for v in old]
            main_i = next(i for i, v in enumerate(new) if not v["shadow"])
            main = new[main_i]
            if "model" in body:
                fresh = await self._variant(ws, {"model": body["model"]}, "model", base=main)
                fresh.update(
                    name=main["name"],
                    traffic=main["traffic"],
                    **{k: main[k] for k in ("replicas", "min_replicas", "max_replicas")},
                )
                new[main_i] = main = fresh
            reps = {k: body[k] for k in ("replicas", "min_replicas", "max_replicas") if k in body}
            if reps:
                main.update(_replica_fields(reps, "", base=main))
            if "canary" in body:
                c = body["canary"]
                new = [v for v in new if v["name"] != "canary"]
                others = sum(v["traffic"] for v in new if not v["shadow"] and v is not main)
                if c is None or (isinstance(c, dict) and c.get("traffic", c.get("weight")) == 0):
                    main["traffic"] = 100 - others
                else:
                    if not isinstance(c, dict) or "model" not in c:
                        raise BadRequest(
                            "canary: expected {'model': 'NAME:VERSION', 'traffic': 10}"
                        )
                    if c.get("traffic", c.get("weight")) is None:
                        raise BadRequest("canary.traffic: give the canary's percentage (1-99)")
                    cv = await self._variant(ws, {**c, "name": "canary"}, "canary")
                    if cv["shadow"]:
                        raise BadRequest(
                            "canary.shadow: a canary takes traffic; use 'variants' for shadows"
                        )
                    if not 0 < cv["traffic"] < 100 - others:
                        raise BadRequest(
                            f"canary.traffic: must be above 0 and below {100 - others:g} "
                            "(the main variant keeps the rest)"
                        )
                    main["traffic"] = 100 - others - cv["traffic"]
                    new.append(cv)
        return d, old, self._check_traffic(new)

    # ---- DB helpers --------------------------------------------------------------------
    async def _row(self, ws: str, name: str) -> Deployment:
        def f(s):
            d = s.get(Deployment, (ws, name))
            if d is None:
                raise NotFound(f"deployment {name!r} not found in workspace {ws!r}")
            return d

        return await self.db.run(f)

    async def _set(self, ws: str, name: str, **fields) -> Deployment | None:
        def f(s):
            d = s.get(Deployment, (ws, name))
            if d is None:
                return None
            for k, v in fields.items():
                if v is not None or k == "url":
                    setattr(d, k, v if v is not None else "")
            d.updated_at = utcnow()
            s.flush()
            return d

        return await self.db.run(f)

    async def _backend_spec(self, ws: str, name: str, variants: list[dict], token: str) -> dict:
        loop = asyncio.get_running_loop()
        out = []
        for v in variants:
            path = await loop.run_in_executor(
                None, self.registry.local_dir, ws, v["model"], v["version"]
            )
            out.append(
                {
                    "name": v["name"],
                    "model": v["model"],
                    "version": str(v["version"]),
                    "model_path": path,
                    "model_uri": f"models/{v['model']}/{v['version']}",
                    "framework": v.get("framework"),
                    "replicas": v["replicas"],
                    "min_replicas": v["min_replicas"],
                    "max_replicas": v["max_replicas"],
                    "traffic": v["traffic"],
                    "shadow": v["shadow"],
                }
            )
        return {"workspace": ws, "name": name, "token": token, "variants": out}

    @staticmethod
    def _stored_variants(variants: list[dict]) -> list[dict]:
        keys = (
            "name model version ref alias framework traffic shadow "
            "replicas min_replicas max_replicas"
        ).split()
        return [{k: v.get(k) for k in keys} for v in variants]

    # ---- API ---------------------------------------------------------------------------
    async def list(self, ws: str) -> list[dict]:
        await self.ready()
        rows = await self.db.run(
            lambda s: list(
                s.scalars(
                    select(Deployment).where(Deployment.workspace == ws).order_by(Deployment.name)
                )
            )
        )
        return list(await asyncio.gather(*(self._with_status(d) for d in rows)))

    async def get(self, ws: str, name: str) -> dict:
        await self.ready()
        return await self._with_status(await self._row(ws, name))

    async def _with_status(self, d: Deployment) -> dict:
        if d.state == "lost":
            return deployment_dict(
                d, None, "the deployment's processes and files are gone; delete and recreate it"
            )
        try:
            live = await self.backend.status(d.name, d.workspace)
        except PaiError as e:
            return deployment_dict(d, None, e.message)
        except Exception as e:  # a backend hiccup must not break listing
            self.log.warning("status of %s/%s failed: %s", d.workspace, d.name, e)
            return deployment_dict(d, None, f"status unavailable: {type(e).__name__}")
        return deployment_dict(d, live)

    async def create(self, ident, ws: str, plan: dict) -> dict:
        """Start a planned deployment; returns it with the plaintext ``token`` (once)."""
        await self.ready()
        name, variants = plan["name"], plan["variants"]
        token = "pdt_" + secrets.token_urlsafe(24)
        hint = token[:8] + "…"
        async with self._lock(ws, name):

            def insert(s):
                if s.get(Deployment, (ws, name)) is not None:
                    raise Conflict(f"deployment {name!r} already exists in workspace {ws!r}")
                s.add(
                    Deployment(
                        workspace=ws,
                        name=name,
                        token_hash=hash_token(token),
                        variants=self._stored_variants(variants),
                        state="starting",
                        backend=self.backend_name,
                        backend_ref={
                            "production": self.is_production(variants),
                            "token_hint": hint,
                        },
                        created_by=ident.name,
                    )
                )

            await self.db.run(insert)
            try:
                self._keep_token(ws, name, token)
                spec = await self._backend_spec(ws, name, variants, token)
                status = await self.backend.create(spec)
            except BaseException as e:
                await self._cleanup_failed_create(ws, name, e)
                raise
            d = await self._set(
                ws, name, state=status.get("state") or "starting", url=status.get("url")
            )
        out = deployment_dict(d, status)
        out["token"] = token
        return out

    async def _cleanup_failed_create(self, ws: str, name: str, err: BaseException) -> None:
        self._token_file(ws, name).unlink(missing_ok=True)
        if not isinstance(err, Conflict):  # a Conflict means someone else's run dir
            try:
                await self.backend.delete(name, ws)
            except Exception:
                pass

        def drop(s):
            d = s.get(Deployment, (ws, name))
            if d is not None:
                s.delete(d)

        await self.db.run(drop)

    async def update(self, ws: str, name: str, new_variants: list[dict]) -> dict:
        await self.ready()
        async with self._lock(ws, name):
            d = await self._row(ws, name)
            if d.state == "lost":
                raise Conflict(
                    f"deployment {name!r} is lost (its processes and files are gone); "
                    "delete and recreate it"
                )
            token = self._stored_token(d)
            if token is None:
                raise BackendUnavailable(
                    f"cannot change deployment {name!r}: its token is not available from the "
                    f"{self.backend_name} backend (changing it would drop authentication)"
                )
            spec = await self._backend_spec(ws, name, new_variants, token)
            status = await self.backend.update(spec)
            ref = dict(d.backend_ref or {})
            ref["production"] = self.is_production(new_variants)
            d = await self._set(
                ws,
                name,
                variants=self._stored_variants(new_variants),
                backend_ref=ref,
                state=status.get("state") or d.state,
                url=status.get("url") or d.url,
            )
        return deployment_dict(d, status)

    async def delete(self, ws: str, name: str) -> dict:
        await self.ready()
        async with self._lock(ws, name):
            d = await self._row(ws, name)
            try:
                await self.backend.delete(name, ws)
            except NotFound:
                pass

            def drop(s):
                row = s.get(Deployment, (ws, name))
                if row is not None:
                    s.delete(row)

            await self.db.run(drop)
            self._token_file(ws, name).unlink(missing_ok=True)
        return deployment_dict(d, None)

    async def current(self, ws: str, name: str) -> dict:
        """The stored deployment without live status (for role checks)."""
        d = await self._row(ws, name)
        return {"variants": d.variants, "production": bool((d.backend_ref or {}).get("production"))}


__all__ = ["DeploymentService", "deployment_dict"]
