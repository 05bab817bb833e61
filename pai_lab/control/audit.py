"""The audit log: every mutation and every denial, with who, what, when and the outcome."""

from __future__ import annotations

from typing import Any

from .db import AuditEvent, iso, page


def event_dict(e: AuditEvent) -> dict:
    return {
        "id": e.id,
        "time": iso(e.time),
        "actor": e.actor,
        "action": e.action,
        "workspace": e.workspace,
        "object_type": e.object_type,
        "object_id": e.object_id,
        "outcome": e.outcome,
        "detail": e.detail or {},
    }


class AuditLog:
    def __init__(self, db, log):
        self.db = db
        self.log = log

    async def record(
        self,
        actor: str,
        action: str,
        *,
        workspace: str | None = None,
        object_type: str = "",
        object_id: str = "",
        outcome: str = "ok",
        **detail: Any,
    ) -> None:
        def add(s):
            s.add(
                AuditEvent(
                    actor=actor,
                    action=action,
                    workspace=workspace,
                    object_type=object_type,
                    object_id=str(object_id)[:255],
                    outcome=outcome,
                    detail=detail,
                )
            )

        await self.db.run(add)
        if outcome != "ok":
            self.log.info(
                "audit: %s %s %s/%s -> %s %s", actor, action, workspace, object_id, outcome, detail
            )

    async def list(
        self,
        workspace: str | None,
        *,
        limit: int = 100,
        offset: int = 0,
        action: str | None = None,
        outcome: str | None = None,
        actor: str | None = None,
    ) -> tuple[list[dict], int]:
        def q(s):
            rows, total = page(
                s,
                AuditEvent,
                AuditEvent.id.desc(),
                limit,
                offset,
                workspace=workspace,
                action=action,
                outcome=outcome,
                actor=actor,
            )
            return [event_dict(e) for e in rows], total

        return await self.db.run(q)
