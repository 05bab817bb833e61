"""Jobs: submit, list, get, cancel and the (optionally following) log stream."""

from __future__ import annotations

import asyncio

from tornado.iostream import StreamClosedError

from ...errors import NotFound
from ...jobs import spec as S
from .base import BaseHandler


class JobsHandler(BaseHandler):
    async def get(self, ws: str) -> None:
        await self.require(ws, "viewer", "list_jobs", ws)
        jobs, total = await self.control.scheduler.list(
            ws,
            owner=self.get_query_argument("owner", None),
            state=self.get_query_argument("state", None),
            name=self.get_query_argument("name", None),
            limit=self.int_arg("limit", 50, 1, 500),
            offset=self.int_arg("offset", 0, 0, 10**9),
        )
        self.send({"jobs": jobs, "total": total})

    async def post(self, ws: str) -> None:
        await self.require(ws, "developer", "submit_job", ws)
        body = self.json_body()
        job, created = await self.control.scheduler.submit(self.identity, ws, body)
        if created:
            await self.audit(ws, "submit_job", "job", job["id"], name=job["name"])
        self.send(job, 201 if created else 200)


class JobHandler(BaseHandler):
    async def get(self, ws: str, job_id: str) -> None:
        await self.require(ws, "viewer", "read_job", job_id)
        self.send(await self.control.scheduler.get(ws, job_id))


class JobCancelHandler(BaseHandler):
    async def post(self, ws: str, job_id: str) -> None:
        role = await self.require(ws, "developer", "cancel_job", job_id)
        job = await self.control.scheduler.get(ws, job_id)
        if job["owner"] != self.identity.name and role not in ("operator", "admin"):
            await self.deny(
                ws, "cancel_job", job_id, f"job belongs to {job['owner']!r}; needs role 'operator'"
            )
        job = await self.control.scheduler.cancel(ws, job_id)
        await self.audit(ws, "cancel_job", "job", job_id)
        self.send(job)


class JobLogsHandler(BaseHandler):
    """Plain-text log; ``?follow=1`` keeps the response open until the job ends."""

    async def get(self, ws: str, job_id: str) -> None:
        await self.require(ws, "viewer", "read_logs", job_id)
        follow = self.get_query_argument("follow", "0") in ("1", "true", "yes")
        offset = self.int_arg("offset", 0, 0, 2**62)
        sched = self.control.scheduler
        job = await sched.get(ws, job_id)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("X-Accel-Buffering", "no")
        try:
            while True:
                changed = sched.changed(job_id)
                job = await sched.get(ws, job_id)
                terminal = job["state"] in S.TERMINAL_STATES
                offset = await self._send_available(job, offset, terminal)
                if terminal or not follow:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), timeout=0.25)
                except asyncio.TimeoutError:
                    pass
        except StreamClosedError:
            return
        self.finish()

    async def _send_available(self, job: dict, offset: int, terminal: bool) -> int:
        """Write what exists past ``offset``: live from the backend, else the stored copy."""
        if not terminal:
            sent = await self._send_live(job, offset)
            if sent is not None or job["state"] == S.QUEUED:
                return offset if sent is None else sent
        wstore = self.control.store.workspace(job["workspace"])
        try:
            data = await wstore.read_bytes(f"jobs/{job['id']}/logs.txt")
        except NotFound:
            # A job may end before its runner stored any log: use the backend's local
            # copy if it still has one.
            sent = await self._send_live(job, offset)
            return offset if sent is None else sent
        if len(data) > offset:
            self.write(data[offset:])
            await self.flush()
            offset = len(data)
        return offset

    async def _send_live(self, job: dict, offset: int) -> int | None:
        """Stream the backend's live log from ``offset``; None if it has no live copy."""
        run = await self.control.scheduler.run_of(job["id"])
        chunks = await self.control.scheduler.backend.live_logs(run, offset)
        if chunks is None:
            return None
        async for chunk in chunks:
            self.write(chunk)
            offset += len(chunk)
            await self.flush()
        return offset
