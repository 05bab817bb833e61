"""/me, /profiles, /workspaces, members, audit and admin-minted user tokens."""

from __future__ import annotations

import secrets

from ...errors import BadRequest
from ..auth import USER_TOKEN_PREFIX
from ..db import ApiToken, hash_token
from .base import BaseHandler


class MeHandler(BaseHandler):
    async def get(self) -> None:
        ident = self.identity
        wss = await self.control.workspaces.list_for(ident)
        self.send(
            {
                **ident.to_dict(),
                "job_id": ident.job_id,
                "workspaces": [{"name": w["name"], "role": w["role"]} for w in wss],
            }
        )


class ProfilesHandler(BaseHandler):
    async def get(self) -> None:
        out = []
        for p in self.control.profiles.all():
            d = p.to_dict()
            d["available"], d["unavailable_reason"] = True, None
            reason = self.control.profile_unavailable_reason(p)
            if reason:
                d["available"], d["unavailable_reason"] = False, reason
            out.append(d)
        self.send({"profiles": out})


class WorkspacesHandler(BaseHandler):
    async def get(self) -> None:
        self.send({"workspaces": await self.control.workspaces.list_for(self.identity)})

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        await self.require_admin("create_workspace")
        ws = await self.control.workspaces.create(self.identity, body)
        await self.audit(ws["name"], "create_workspace", "workspace", ws["name"])
        self.send(ws, 201)


class WorkspaceHandler(BaseHandler):
    async def get(self, ws: str) -> None:
        role = await self.require(ws, "viewer", "read_workspace", ws)
        self.send(await self.control.workspaces.get(ws, role))

    async def patch(self, ws: str) -> None:
        await self.require(ws, "admin", "update_workspace", ws)
        body = self.json_body()
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        out = await self.control.workspaces.update(ws, body)
        await self.audit(ws, "update_workspace", "workspace", ws, changes=body)
        self.control.kick()
        self.send(out)


class MembersHandler(BaseHandler):
    async def get(self, ws: str) -> None:
        await self.require(ws, "viewer", "list_members", ws)
        self.send({"members": await self.control.workspaces.members(ws)})


class MemberHandler(BaseHandler):
    async def put(self, ws: str, user: str) -> None:
        await self.require(ws, "admin", "set_member", user)
        body = self.json_body()
        if not isinstance(body, dict) or set(body) != {"role"}:
            raise BadRequest('request body: expected {"role": "viewer|developer|operator|admin"}')
        member, old = await self.control.workspaces.set_member(ws, user, body["role"])
        await self.audit(ws, "set_member", "member", user, role=body["role"], previous=old)
        self.send(member)

    async def delete(self, ws: str, user: str) -> None:
        await self.require(ws, "admin", "remove_member", user)
        await self.control.workspaces.remove_member(ws, user)
        await self.audit(ws, "remove_member", "member", user)
        self.set_status(204)
        self.finish()


class AuditHandler(BaseHandler):
    async def get(self, ws: str) -> None:
        await self.require(ws, "operator", "read_audit", ws)
        events, total = await self.control.audit.list(
            ws,
            limit=self.int_arg("limit", 100, 1, 1000),
            offset=self.int_arg("offset", 0, 0, 10**9),
            action=self.get_query_argument("action", None),
            outcome=self.get_query_argument("outcome", None),
            actor=self.get_query_argument("actor", None),
        )
        self.send({"events": events, "total": total})


class UserTokensHandler(BaseHandler):
    """``POST /api/v1/users/{name}/tokens`` (platform admins): API tokens for token mode."""

    async def post(self, user: str) -> None:
        await self.require_admin("create_token")
        body = self.json_body(required=False)
        note = body.get("note", "") if isinstance(body, dict) else ""
        if not isinstance(note, str):
            raise BadRequest("note: expected a string")
        token = USER_TOKEN_PREFIX + secrets.token_urlsafe(24)

        def add(s):
            s.add(ApiToken(hash=hash_token(token), user=user, kind="user", note=note[:255]))

        await self.control.db.run(add)
        await self.audit(None, "create_token", "user", user)
        self.send({"user": user, "token": token, "note": note}, 201)
