"""Workspaces, memberships and the role rules every endpoint is checked against."""

from __future__ import annotations

import re

from sqlalchemy import select

from ..errors import BadRequest, Conflict, Forbidden, NotFound
from .db import Membership, Workspace, iso
from .identity import Identity

ROLES = ("viewer", "developer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
WS_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
QUOTA_FIELDS = ("max_concurrent_jobs", "max_queued_jobs", "max_gpus")


def check_role_name(role) -> str:
    if role not in RANK:
        raise BadRequest(f"role: {role!r} is not one of {', '.join(ROLES)}")
    return role


def ws_dict(w: Workspace, role: str | None = None) -> dict:
    d = {
        "name": w.name,
        "description": w.description,
        "quotas": {f: getattr(w, f) for f in QUOTA_FIELDS},
        "storage_prefix": f"workspaces/{w.name}/",
        "created_at": iso(w.created_at),
        "created_by": w.created_by,
    }
    if role is not None:
        d["role"] = role
    return d


def validate_quotas(q) -> dict:
    if not isinstance(q, dict):
        raise BadRequest("quotas: expected an object")
    unknown = set(q) - set(QUOTA_FIELDS)
    if unknown:
        raise BadRequest(f"quotas: unknown field(s): {', '.join(sorted(unknown))}")
    for k, v in q.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BadRequest(f"quotas.{k}: expected a non-negative integer")
    return q


class Workspaces:
    def __init__(self, db, default_role: str):
        self.db = db
        self.default_role = default_role

    async def ensure_default(self) -> None:
        def f(s):
            if s.get(Workspace, "default") is None:
                s.add(
                    Workspace(
                        name="default", description="Created at first start", created_by="system"
                    )
                )

        await self.db.run(f)

    async def role_of(self, ident: Identity, ws: str) -> str | None:
        """The caller's role in ``ws``; raises NotFound for an unknown workspace."""

        def f(s):
            if s.get(Workspace, ws) is None:
                raise NotFound(f"workspace {ws!r} does not exist")
            if ident.admin:
                return "admin"
            if ident.kind == "job" and ident.workspace != ws:
                return None
            m = s.get(Membership, (ws, ident.name))
            if ident.kind == "job":
                # Its owner needed 'developer' to submit it (platform admins need no
                # membership), so a job acts as at least a developer in its workspace.
                return m.role if m and RANK[m.role] > RANK["developer"] else "developer"
            return m.role if m else None

        return await self.db.run(f)

    async def auto_join(self, ident: Identity) -> None:
        """First sight of a user: member of ``default`` with the configured role."""
        if not self.default_role or ident.admin or ident.kind != "user":
            return

        def f(s):
            if s.get(Workspace, "default") and s.get(Membership, ("default", ident.name)) is None:
                s.add(Membership(workspace="default", user=ident.name, role=self.default_role))

        await self.db.run(f)

    async def list_for(self, ident: Identity) -> list[dict]:
        def f(s):
            if ident.admin:
                return [
                    ws_dict(w, "admin")
                    for w in s.scalars(select(Workspace).order_by(Workspace.name))
                ]
            rows = s.execute(
                select(Workspace, Membership.role)
                .join(Membership, Membership.workspace == Workspace.name)
                .where(Membership.user == ident.name)
                .order_by(Workspace.name)
            )
            out = [ws_dict(w, role) for w, role in rows]
            if ident.kind == "job":
                out = [w for w in out if w["name"] == ident.workspace]
            return out

        return await self.db.run(f)

    async def get(self, ws: str, role: str | None = None) -> dict:
        def f(s):
            w = s.get(Workspace, ws)
            if w is None:
                raise NotFound(f"workspace {ws!r} does not exist")
            return ws_dict(w, role)

        return await self.db.run(f)

    async def create(self, ident: Identity, body: dict) -> dict:
        unknown = set(body) - {"name", "description", "quotas"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        name = body.get("name")
        if not isinstance(name, str) or not WS_NAME_RE.match(name):
            raise BadRequest(
                "name: workspace names are 1-63 lowercase letters, digits and '-' "
                "(starting and ending with a letter or digit)"
            )
        desc = body.get("description", "")
        if not isinstance(desc, str):
            raise BadRequest("description: expected a string")
        quotas = validate_quotas(body.get("quotas", {}))

        def f(s):
            if s.get(Workspace, name) is not None:
                raise Conflict(f"workspace {name!r} already exists")
            w = Workspace(name=name, description=desc, created_by=ident.name, **quotas)
            s.add(w)
            s.flush()  # the membership's foreign key needs the workspace row first
            if not ident.admin or ident.kind == "user":
                s.add(Membership(workspace=name, user=ident.name, role="admin"))
            s.flush()
            return ws_dict(w, "admin")

        return await self.db.run(f)

    async def update(self, ws: str, body: dict) -> dict:
        unknown = set(body) - {"description", "quotas"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "description" in body and not isinstance(body["description"], str):
            raise BadRequest("description: expected a string")
        quotas = validate_quotas(body.get("quotas", {}))

        def f(s):
            w = s.get(Workspace, ws)
            if w is None:
                raise NotFound(f"workspace {ws!r} does not exist")
            if "description" in body:
                w.description = body["description"]
            for k, v in quotas.items():
                setattr(w, k, v)
            s.flush()
            return ws_dict(w)

        return await self.db.run(f)

    async def members(self, ws: str) -> list[dict]:
        def f(s):
            rows = s.scalars(
                select(Membership).where(Membership.workspace == ws).order_by(Membership.user)
            )
            return [{"user": m.user, "role": m.role, "added_at": iso(m.added_at)} for m in rows]

        return await self.db.run(f)

    async def set_member(self, ws: str, user: str, role: str) -> tuple[dict, str | None]:
        check_role_name(role)
        if not user or len(user) > 255 or "/" in user:
            raise BadRequest(f"user: {user!r} is not a valid user name")

        def f(s):
            m = s.get(Membership, (ws, user))
            old = m.role if m else None
            if m is None:
                m = Membership(workspace=ws, user=user, role=role)
                s.add(m)
            else:
                m.role = role
            s.flush()
            return {"user": m.user, "role": m.role, "added_at": iso(m.added_at)}, old

        return await self.db.run(f)

    async def remove_member(self, ws: str, user: str) -> None:
        def f(s):
            m = s.get(Membership, (ws, user))
            if m is None:
                raise NotFound(f"{user!r} is not a member of {ws!r}")
            if m.role == "admin":
                admins = s.scalars(
                    select(Membership).where(Membership.workspace == ws, Membership.role == "admin")
                ).all()
                if len(admins) == 1:
                    raise Conflict(f"{user!r} is the last admin of {ws!r}")
            s.delete(m)

        await self.db.run(f)


def require_rank(role: str | None, needed: str) -> bool:
    return role is not None and RANK[role] >= RANK[needed]


__all__ = ["ROLES", "RANK", "Workspaces", "require_rank", "Forbidden"]
