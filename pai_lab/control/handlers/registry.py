"""REST handlers for the model registry and deployments (hooked in by ``PaiControl.extra_routes``).

Role rules (checked here, every denial audited through ``BaseHandler.require/deny``):

==============================================  ==========================================
viewer                                          read models, versions, deployments
developer                                       register versions, edit descriptions,
                                                move/delete any alias except ``production``,
                                                create/change/delete non-production
                                                deployments
operator (and admin)                            move/delete ``production``, change a
                                                model's gate, create/change/delete
                                                production deployments
==============================================  ==========================================

A deployment is *production* when one of its variants was resolved through the
``production`` alias (``iris@production``); see :mod:`pai_lab.control.deployments`.
Changing the gate needs an operator because the gate is what protects ``production``.
Every alias move is audited (``set_alias``) with who, from, to and the gate verdict —
refusals too, with outcome ``refused``.
"""

from __future__ import annotations

from ...errors import BadRequest, PaiError
from ..deployments import DeploymentService
from ..registry import PRODUCTION, GateRefused, Registry, check_model_name
from ..workspaces import require_rank
from .base import BaseHandler


def services(control) -> tuple[Registry, DeploymentService]:
    """The registry and deployment services of a control plane, created on first use."""
    reg = getattr(control, "_pai_registry", None)
    if reg is None:
        reg = control._pai_registry = Registry(control)
        control._pai_deployments = DeploymentService(control, reg)
    return reg, control._pai_deployments


async def on_start(control) -> None:
    """Optional start-up hook: reattach deployments right away instead of on first use."""
    _, deps = services(control)
    await deps.ready()


class _Handler(BaseHandler):
    @property
    def registry(self) -> Registry:
        return services(self.control)[0]

    @property
    def deployments(self) -> DeploymentService:
        return services(self.control)[1]


# ---- models ------------------------------------------------------------------------------
class ModelsHandler(_Handler):
    async def get(self, ws: str) -> None:
        await self.require(ws, "viewer", "list_models", ws)
        self.send({"models": await self.registry.list_models(ws)})

    async def post(self, ws: str) -> None:
        """Register a version of model ``name`` (created on first registration)."""
        body = self.json_body()
        name = body.get("name") if isinstance(body, dict) else None
        await self.require(ws, "developer", "register_model", str(name or ""))
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        name = check_model_name(body.get("name"))
        await self._register(ws, name, {k: v for k, v in body.items() if k != "name"})

    async def _register(self, ws: str, name: str, body) -> None:
        await self.require(ws, "developer", "register_model", name)
        v = await self.registry.register(self.identity, ws, name, body)
        await self.audit(
            ws,
            "register_model",
            "model",
            f"{name}:{v['version']}",
            source_job=v["source_job"],
            source=v["lineage"].get("source"),
        )
        self.send(v, 201)


class ModelHandler(_Handler):
    async def get(self, ws: str, name: str) -> None:
        await self.require(ws, "viewer", "read_model", name)
        self.send(await self.registry.get_model(ws, name))

    async def patch(self, ws: str, name: str) -> None:
        body = self.json_body()
        needed = "operator" if isinstance(body, dict) and "gate" in body else "developer"
        await self.require(ws, needed, "update_model", name)
        model, changes = await self.registry.update_model(ws, name, body)
        if changes:
            await self.audit(ws, "update_model", "model", name, changes=changes)
        self.send(model)


class VersionsHandler(ModelsHandler):
    async def get(self, ws: str, name: str) -> None:  # type: ignore[override]
        await self.require(ws, "viewer", "list_versions", name)
        self.send({"versions": await self.registry.list_versions(ws, name)})

    async def post(self, ws: str, name: str) -> None:  # type: ignore[override]
        await self.require(ws, "developer", "register_model", name)
        body = self.json_body()
        if isinstance(body, dict) and "name" in body and body["name"] != name:
            raise BadRequest(f"name: {body['name']!r} does not match the URL's model {name!r}")
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "name"}
        await self._register(ws, check_model_name(name), body)


class VersionHandler(_Handler):
    async def get(self, ws: str, name: str, version: str) -> None:
        await self.require(ws, "viewer", "read_model", f"{name}:{version}")
        self.send(await self.registry.get_version(ws, name, version))


class AliasHandler(_Handler):
    def _needed(self, alias: str) -> str:
        return "operator" if alias == PRODUCTION else "developer"

    async def put(self, ws: str, name: str, alias: str) -> None:
        await self.require(ws, self._needed(alias), "set_alias", f"{name}@{alias}")
        body = self.json_body()
        if not isinstance(body, dict) or "version" not in body:
            raise BadRequest("request body: expected {'version': N}")
        unknown = set(body) - {"version"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        try:
            model, result, old = await self.registry.set_alias(ws, name, alias, body["version"])
        except GateRefused as e:
            await self.audit(
                ws,
                "set_alias",
                "model",
                f"{name}@{alias}",
                outcome="refused",
                alias=alias,
                from_version=await self.registry.alias_of(ws, name, alias),
                to_version=body["version"],
                gate=e.result.to_dict(),
            )
            raise
        await self.audit(
            ws,
            "set_alias",
            "model",
            f"{name}@{alias}",
            alias=alias,
            from_version=old,
            to_version=model["aliases"][alias],
            gate=result.to_dict(),
        )
        self.send({**model, "gate_result": result.to_dict()})

    async def delete(self, ws: str, name: str, alias: str) -> None:
        await self.require(ws, self._needed(alias), "delete_alias", f"{name}@{alias}")
        model, old = await self.registry.delete_alias(ws, name, alias)
        await self.audit(
            ws, "delete_alias", "model", f"{name}@{alias}", alias=alias, from_version=old
        )
        self.send(model)


# ---- deployments ---------------------------------------------------------------------------
class DeploymentsHandler(_Handler):
    async def get(self, ws: str) -> None:
        await self.require(ws, "viewer", "list_deployments", ws)
        self.send({"deployments": await self.deployments.list(ws)})

    async def post(self, ws: str) -> None:
        body = self.json_body()
        name = body.get("name", "") if isinstance(body, dict) else ""
        role = await self.require(ws, "developer", "create_deployment", str(name))
        plan = await self.deployments.plan_create(ws, body)
        production = self.deployments.is_production(plan["variants"])
        if production and not require_rank(role, "operator"):
            await self.deny(
                ws,
                "create_deployment",
                plan["name"],
                f"deploying {PRODUCTION!r} needs role 'operator', has {role}",
            )
        try:
            dep = await self.deployments.create(self.identity, ws, plan)
        except PaiError as e:
            await self.audit(
                ws,
                "create_deployment",
                "deployment",
                plan["name"],
                outcome="error",
                reason=e.message,
            )
            raise
        await self.audit(
            ws,
            "create_deployment",
            "deployment",
            dep["name"],
            variants=[f"{v['model']}:{v['version']}={v['traffic']}" for v in dep["variants"]],
            production=production,
        )
        self.send(dep, 201)


class DeploymentHandler(_Handler):
    async def get(self, ws: str, name: str) -> None:
        await self.require(ws, "viewer", "read_deployment", name)
        self.send(await self.deployments.get(ws, name))

    async def _require_change(self, ws: str, name: str, action: str, after: list | None) -> str:
        role = await self.require(ws, "developer", action, name)
        cur = await self.deployments.current(ws, name)
        prod = cur["production"] or (after is not None and self.deployments.is_production(after))
        if prod and not require_rank(role, "operator"):
            await self.deny(
                ws, action, name, f"a production deployment needs role 'operator', has {role}"
            )
        return role

    async def patch(self, ws: str, name: str) -> None:
        await self.require(ws, "developer", "update_deployment", name)
        body = self.json_body()
        _, old, new = await self.deployments.plan_update(ws, name, body)
        await self._require_change(ws, name, "update_deployment", new)
        dep = await self.deployments.update(ws, name, new)
        await self.audit(
            ws,
            "update_deployment",
            "deployment",
            name,
            before=[f"{v['model']}:{v['version']}={v['traffic']}" for v in old],
            after=[f"{v['model']}:{v['version']}={v['traffic']}" for v in new],
            replicas=[v["replicas"] for v in new],
        )
        self.send(dep)

    async def delete(self, ws: str, name: str) -> None:
        await self._require_change(ws, name, "delete_deployment", None)
        await self.deployments.delete(ws, name)
        await self.audit(ws, "delete_deployment", "deployment", name)
        self.set_status(204)
        self.finish()


def routes(api: str, ws: str) -> list:
    """Tornado routes for ``PaiControl.extra_routes`` (``ws`` captures the workspace)."""
    m = ws + r"/models/([^/]+)"
    return [
        (ws + r"/models/?", ModelsHandler),
        (m + r"/?", ModelHandler),
        (m + r"/versions/?", VersionsHandler),
        (m + r"/versions/([^/]+)/?", VersionHandler),
        (m + r"/aliases/([^/]+)/?", AliasHandler),
        (ws + r"/deployments/?", DeploymentsHandler),
        (ws + r"/deployments/([^/]+)/?", DeploymentHandler),
    ]
