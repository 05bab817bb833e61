"""Base handler: identity, JSON in/out, errors as JSON, role checks with audited denials."""

from __future__ import annotations

import json
import traceback
import uuid
from typing import Any

from tornado.web import HTTPError, RequestHandler

from ...errors import BadRequest, Forbidden, PaiError, Unauthorized
from ..identity import Identity
from ..workspaces import RANK, require_rank


class BaseHandler(RequestHandler):
    identity: Identity | None = None

    @property
    def control(self):
        return self.settings["pai_control"]

    @property
    def log(self):
        return self.control.log

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_xsrf_cookie(self) -> None:
        # Bearer/hub tokens only (no cookie sessions of our own); hub OAuth cookies are
        # checked by the hub identity provider, which enforces its own XSRF rules.
        return

    async def prepare(self) -> None:
        self.identity = await self.control.identity_provider.identify(self)
        if self.identity is None:
            await self.control.audit.record(
                "anonymous",
                "authenticate",
                outcome="denied",
                path=self.request.path,
                method=self.request.method,
                ip=self.request.remote_ip,
            )
            raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        await self.control.workspaces.auto_join(self.identity)

    # ---- input ---------------------------------------------------------------------
    def json_body(self, required: bool = True) -> Any:
        body = self.request.body
        if not body:
            if required:
                raise BadRequest("request body: expected JSON, got nothing")
            return {}
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body: malformed JSON ({e})") from None

    def int_arg(self, name: str, default: int, lo: int = 0, hi: int = 1000) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise BadRequest(f"{name}: expected an integer, got {raw!r}") from None
        if not lo <= v <= hi:
            raise BadRequest(f"{name}: must be between {lo} and {hi}")
        return v

    # ---- authorization -------------------------------------------------------------
    async def require(self, ws: str, needed: str, action: str, object_id: str = "") -> str:
        """The caller's role in ``ws`` if at least ``needed``; else audit and 403."""
        role = await self.control.workspaces.role_of(self.identity, ws)
        if not require_rank(role, needed):
            await self.deny(ws, action, object_id, f"needs role {needed!r}, has {role or 'none'}")
        return role

    async def require_admin(self, action: str) -> None:
        if not self.identity.admin:
            await self.deny(None, action, "", "needs a platform admin")

    async def deny(self, ws: str | None, action: str, object_id: str, why: str):
        await self.control.audit.record(
            self.identity.name,
            action,
            workspace=ws,
            object_id=object_id,
            outcome="denied",
            reason=why,
        )
        where = f" in workspace {ws!r}" if ws else ""
        raise Forbidden(f"{self.identity.name!r} may not {action.replace('_', ' ')}{where}: {why}")

    async def audit(
        self, ws: str | None, action: str, object_type: str = "", object_id: str = "", **detail
    ) -> None:
        await self.control.audit.record(
            self.identity.name,
            action,
            workspace=ws,
            object_type=object_type,
            object_id=object_id,
            **detail,
        )

    # ---- output --------------------------------------------------------------------
    def send(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(obj))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PaiError):
            self.set_status(exc.status)
            body = exc.to_dict()
        elif isinstance(exc, HTTPError):
            msg = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            body = {"error": {"code": f"http_{status_code}", "message": msg or self._reason}}
        else:
            ref = uuid.uuid4().hex[:8]
            self.log.error(
                "internal error %s on %s %s:\n%s",
                ref,
                self.request.method,
                self.request.path,
                "".join(traceback.format_exception(*kwargs["exc_info"]))
                if "exc_info" in kwargs
                else "",
            )
            body = {
                "error": {
                    "code": "internal_error",
                    "message": f"internal error (reference {ref}; details are in the control plane log)",
                }
            }
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, PaiError):
            self.log.info(
                "%s %s -> %s %s",
                self.request.method,
                self.request.path,
                value.status,
                value.message,
            )
        else:
            super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:
        from ...errors import NotFound

        raise NotFound(f"no such API route: {self.request.method} {self.request.path}")


__all__ = ["BaseHandler", "NotFoundHandler", "RANK"]
