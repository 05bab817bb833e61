"""Jobs in the control plane: submit, FIFO queue with per-workspace quotas, retries,
cancel and reconciliation after a restart.

The queue lives here, not in a backend, so local processes and Kubernetes Jobs obey the
same rules. Backends report attempt outcomes through ``on_report``; a report for an
attempt that is no longer current is ignored, which makes late or duplicate reports
(after a restart, say) harmless.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from sqlalchemy import func, select

from ..errors import BackendUnavailable, BadRequest, Conflict, NotFound, QuotaExceeded
from ..jobs import spec as S
from ..jobs.base import JobRun
from .db import ApiToken, Job, Workspace, hash_token, iso, new_id, page, utcnow
from .identity import Identity

_UPDATABLE = {"state", "exit_reason", "metrics", "environment", "backend_ref"}


def job_dict(j: Job) -> dict:
    return {
        "id": j.id,
        "workspace": j.workspace,
        "owner": j.owner,
        "name": j.name,
        "state": j.state,
        "attempt": j.attempt,
        "spec": j.spec,
        "created_at": iso(j.created_at),
        "started_at": iso(j.started_at),
        "finished_at": iso(j.finished_at),
        "duration": (
            ((j.finished_at or utcnow()) - j.started_at).total_seconds() if j.started_at else None
        ),
        "exit_reason": j.exit_reason,
        "wait_reason": j.wait_reason,
        "metrics": j.metrics or [],
        "environment": j.environment or {},
        "output_prefix": f"jobs/{j.id}/",
    }


class Scheduler:
    def __init__(self, *, db, store, backend_factory, profiles, audit, log, api_url: str):
        self.db = db
        self.store = store
        self.profiles = profiles
        self.audit = audit
        self.log = log
        self.api_url = api_url
        self.backend = backend_factory(report=self.on_report)
        self._dispatch_lock = asyncio.Lock()
        self._waiters: dict[str, asyncio.Event] = {}
        self._bg: set[asyncio.Task] = set()

    # ---- helpers -------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def changed(self, job_id: str) -> asyncio.Event:
        """An event set on the next change of this job (for log/state followers)."""
        return self._waiters.setdefault(job_id, asyncio.Event())

    def _notify(self, job_id: str) -> None:
        ev = self._waiters.pop(job_id, None)
        if ev:
            ev.set()

    def run_for(self, j: Job, token: str | None = None) -> JobRun:
        try:
            profile = self.profiles.get(j.spec.get("profile")).to_dict()
        except KeyError:
            profile = {}
        env = {"PAI_LAB_URL": self.api_url, "PAI_LAB_WORKSPACE": j.workspace}
        if token:
            env["PAI_LAB_TOKEN"] = token
        return JobRun(
            id=j.id,
            workspace=j.workspace,
            owner=j.owner,
            attempt=j.attempt,
            spec=j.spec,
            profile=profile,
            env=env,
            backend_ref=dict(j.backend_ref or {}),
        )

    async def run_of(self, job_id: str) -> JobRun:
        def f(s):
            j = s.get(Job, job_id)
            if j is None:
                raise NotFound(f"job {job_id!r} not found")
            return self.run_for(j)

        return await self.db.run(f)

    # ---- submit --------------------------------------------------------------------
    async def submit(self, ident: Identity, ws: str, body: Any) -> tuple[dict, bool]:
        """Validate, store the inputs, insert the row; returns (job, created)."""
        loop = asyncio.get_running_loop()
        spec, files = await loop.run_in_executor(None, S.parse_job_spec, body)
        try:
            profile = self.profiles.get(spec.profile)
        except KeyError as e:
            raise BadRequest(f"profile: {e.args[0]}") from None
        if spec.profile is None:
            spec.profile = profile.slug
        if not spec.resources.get("gpu") and profile.gpu:
            spec.resources["gpu"] = profile.gpu
        probe = JobRun(
            id="",
            workspace=ws,
            owner=ident.name,
            attempt=1,
            spec=spec.to_dict(),
            profile=profile.to_dict(),
        )
        reason = self.backend.unavailable_reason(probe)
        if reason:
            raise BadRequest(reason)

        def check(s):
            w = s.get(Workspace, ws)
            if w is None:
                raise NotFound(f"workspace {ws!r} does not exist")
            if spec.idempotency_key:
                old = s.scalar(
                    select(Job).where(
                        Job.workspace == ws, Job.idempotency_key == spec.idempotency_key
                    )
                )
                if old is not None:
                    mine = json.loads(json.dumps(spec.comparable()))
                    theirs = dict(old.spec)
                    theirs.pop("idempotency_key", None)
                    if mine != theirs:
                        raise Conflict(
                            f"idempotency_key {spec.idempotency_key!r} was used for job {old.id} "
                            "with a different spec"
                        )
                    return job_dict(old)
            gpus = spec.gpus * spec.workers
            if gpus > w.max_gpus:
                raise QuotaExceeded(
                    f"job asks for {gpus} GPU(s); workspace {ws!r} allows {w.max_gpus} at a time"
                )
            queued = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.workspace == ws, Job.state == S.QUEUED)
            )
            if queued >= w.max_queued_jobs:
                raise QuotaExceeded(
                    f"workspace {ws!r} already has {queued} queued jobs (quota {w.max_queued_jobs}); "
                    "wait for some to start or cancel them"
                )
            return None

        existing = await self.db.run(check)
        if existing is not None:
            return existing, False

        job_id = new_id("j")
        wstore = self.store.workspace(ws)
        written: list[str] = []
        try:
            for rel, data in files.items():
                path = f"jobs/{job_id}/{rel}"
                await wstore.write_bytes(path, data)
                written.append(path)
        except Exception:
            await self._remove_inputs(ws, job_id)
            raise

        def insert(s):
            seq = (s.scalar(select(func.max(Job.seq))) or 0) + 1
            j = Job(
                id=job_id,
                workspace=ws,
                owner=ident.name,
                name=spec.name,
                spec=spec.to_dict(),
                state=S.QUEUED,
                attempt=1,
                idempotency_key=spec.idempotency_key,
                seq=seq,
                backend=type(self.backend).__name__,
            )
            s.add(j)
            s.flush()
            return job_dict(j)

        try:
            job = await self.db.run(insert)
        except Exception as e:
            await self._remove_inputs(ws, job_id)
            if "UNIQUE" in str(e).upper() and spec.idempotency_key:
                raise Conflict(f"idempotency_key {spec.idempotency_key!r} was just used") from None
            raise
        self._spawn(self.dispatch())
        return job, True

    async def _remove_inputs(self, ws: str, job_id: str) -> None:
        try:
            wstore = self.store.workspace(ws)
            if await wstore.exists(f"jobs/{job_id}"):
                await wstore.delete(f"jobs/{job_id}", recursive=True)
        except Exception:
            self.log.exception("could not clean inputs of rejected job %s", job_id)

    # ---- queue ---------------------------------------------------------------------
    async def dispatch(self) -> None:
        """Start what quotas allow, FIFO per workspace."""
        async with self._dispatch_lock:
            while True:
                started = await self._dispatch_once()
                if not started:
                    return

    async def _dispatch_once(self) -> bool:
        def pick(s):
            out = []
            for w in s.scalars(select(Workspace)):
                head = s.scalar(
                    select(Job)
                    .where(Job.workspace == w.name, Job.state == S.QUEUED)
                    .order_by(Job.seq)
                    .limit(1)
                )
                if head is None:
                    continue
                active = s.scalars(
                    select(Job).where(
                        Job.workspace == w.name, Job.state.in_((S.STARTING, S.RUNNING))
                    )
                ).all()
                gpus_used = sum(
                    int(a.spec.get("resources", {}).get("gpu", 0) or 0) * a.spec.get("workers", 1)
                    for a in active
                )
                need = int(head.spec.get("resources", {}).get("gpu", 0) or 0) * head.spec.get(
                    "workers", 1
                )
                reason = None
                if len(active) >= w.max_concurrent_jobs:
                    reason = (
                        f"waiting for a free slot: {len(active)} of {w.max_concurrent_jobs} "
                        f"concurrent jobs in workspace {w.name!r} are running"
                    )
                elif gpus_used + need > w.max_gpus:
                    reason = f"waiting for GPU quota: {gpus_used} of {w.max_gpus} GPU(s) in use in workspace {w.name!r}"
                out.append((head, reason))
            return out

        started = False
        for head, reason in await self.db.run(pick):
            run = self.run_for(head)
            reason = reason or self.backend.wait_reason(run)
            if reason:
                if head.wait_reason != reason:
                    await self._update(head.id, head.attempt, wait_reason=reason)
                continue
            await self._start(head)
            started = True
        return started

    async def _start(self, head: Job) -> None:
        token = "pjt_" + secrets.token_urlsafe(24)

        def mark(s):
            j = s.get(Job, head.id)
            if j is None or j.state != S.QUEUED:
                return None
            j.state = S.STARTING
            j.wait_reason = None
            j.started_at = utcnow()
            s.add(
                ApiToken(
                    hash=hash_token(token),
                    user=j.owner,
                    kind="job",
                    job_id=j.id,
                    workspace=j.workspace,
                )
            )
            s.flush()
            return self.run_for(j, token)

        run = await self.db.run(mark)
        if run is None:
            return
        self._notify(run.id)
        try:
            ref = await self.backend.start(run)
        except BackendUnavailable as e:
            # Lost a race for a resource (a GPU taken since wait_reason said yes): wait again.
            self.log.info("job %s could not start yet: %s", run.id, e.message)
            await self._requeue(run, e.message)
            return
        except Exception as e:
            self.log.exception("backend failed to start job %s", run.id)
            await self.on_report(
                run.id, run.attempt, state=S.FAILED, exit_reason=f"could not start: {e}"
            )
            return
        if ref:
            await self._update(run.id, run.attempt, backend_ref=ref, _only_active=True)

    async def _requeue(self, run: JobRun, reason: str) -> None:
        def f(s):
            j = s.get(Job, run.id)
            if j is None or j.attempt != run.attempt or j.state != S.STARTING:
                return
            j.state = S.QUEUED
            j.started_at = None
            j.wait_reason = reason
            for t in s.scalars(select(ApiToken).where(ApiToken.job_id == j.id)):
                s.delete(t)

        await self.db.run(f)
        self._notify(run.id)

    # ---- reports from backends -----------------------------------------------------
    async def _update(
        self, job_id: str, attempt: int, _only_active: bool = False, **fields
    ) -> dict | None:
        def f(s):
            j = s.get(Job, job_id)
            if j is None or j.attempt != attempt:
                return None
            if _only_active and j.state in S.TERMINAL_STATES:
                return None
            for k, v in fields.items():
                setattr(j, k, v)
            s.flush()
            return job_dict(j)

        out = await self.db.run(f)
        self._notify(job_id)
        return out

    async def on_report(self, job_id: str, attempt: int, **fields) -> None:
        bad = set(fields) - _UPDATABLE
        if bad:
            self.log.warning("backend reported unknown fields %s for %s", bad, job_id)
        fields = {k: v for k, v in fields.items() if k in _UPDATABLE}
        state = fields.get("state")
        if state is not None and state not in S.STATES:
            self.log.error("backend reported unknown state %r for %s", state, job_id)
            return

        def f(s):
            j = s.get(Job, job_id)
            if j is None or j.attempt != attempt or j.state in S.TERMINAL_STATES:
                return None
            retry = False
            for k, v in fields.items():
                if k == "state":
                    continue
                setattr(j, k, v)
            if state == S.RUNNING and j.state in (S.QUEUED, S.STARTING):
                j.state = S.RUNNING
            elif state in S.TERMINAL_STATES:
                retries = int(j.spec.get("retries", 0))
                if state in (S.FAILED, S.LOST) and j.attempt <= retries and not j.cancel_requested:
                    retry = True
                    j.exit_reason = f"attempt {j.attempt} {state}: {fields.get('exit_reason') or 'no reason given'}; retrying"
                    j.attempt += 1
                    j.state = S.QUEUED
                    j.backend_ref = {}
                else:
                    if j.cancel_requested and state in (S.FAILED, S.LOST):
                        state_final = S.CANCELLED
                    else:
                        state_final = state
                    j.state = state_final
                    j.finished_at = utcnow()
                for t in s.scalars(select(ApiToken).where(ApiToken.job_id == j.id)):
                    s.delete(t)
            s.flush()
            return job_dict(j), retry

        res = await self.db.run(f)
        self._notify(job_id)
        if res is None:
            return
        job, retry = res
        if job["state"] in S.TERMINAL_STATES or retry:
            self.log.info(
                "job %s attempt %s -> %s%s", job_id, attempt, state, " (retrying)" if retry else ""
            )
            self._spawn(self.dispatch())

    # ---- queries and actions -------------------------------------------------------
    async def get(self, ws: str, job_id: str) -> dict:
        def f(s):
            j = s.get(Job, job_id)
            if j is None or j.workspace != ws:
                raise NotFound(f"job {job_id!r} not found in workspace {ws!r}")
            return job_dict(j)

        return await self.db.run(f)

    async def list(
        self, ws: str, *, owner=None, state=None, name=None, limit=50, offset=0
    ) -> tuple[list[dict], int]:
        if state is not None and state not in S.STATES:
            raise BadRequest(f"state: {state!r} is not one of {', '.join(S.STATES)}")

        def f(s):
            rows, total = page(
                s,
                Job,
                Job.seq.desc(),
                limit,
                offset,
                workspace=ws,
                owner=owner,
                state=state,
                name=name,
            )
            return [job_dict(j) for j in rows], total

        return await self.db.run(f)

    async def cancel(self, ws: str, job_id: str) -> dict:
        def f(s):
            j = s.get(Job, job_id)
            if j is None or j.workspace != ws:
                raise NotFound(f"job {job_id!r} not found in workspace {ws!r}")
            if j.state in S.TERMINAL_STATES:
                raise Conflict(f"job {job_id} already ended ({j.state})")
            j.cancel_requested = 1
            if j.state == S.QUEUED:
                j.state = S.CANCELLED
                j.finished_at = utcnow()
                j.exit_reason = "cancelled while queued"
                j.wait_reason = None
                return job_dict(j), None
            s.flush()
            return job_dict(j), self.run_for(j)

        job, run = await self.db.run(f)
        self._notify(job_id)
        if run is not None:
            try:
                await self.backend.cancel(run)
            except Exception as e:
                self.log.exception("cancel of %s failed", job_id)
                raise BackendUnavailable(f"could not stop job {job_id}: {e}") from None
        else:
            self._spawn(self.dispatch())
        return job

    async def reconcile(self) -> None:
        """After a restart: re-attach to attempts that were running when we went down."""

        def f(s):
            return [
                self.run_for(j)
                for j in s.scalars(select(Job).where(Job.state.in_((S.STARTING, S.RUNNING))))
            ]

        for run in await self.db.run(f):
            try:
                await self.backend.reattach(run)
            except Exception as e:
                self.log.exception("reattach of %s failed", run.id)
                await self.on_report(
                    run.id,
                    run.attempt,
                    state=S.LOST,
                    exit_reason=f"could not re-attach after restart: {e}",
                )
        await self.dispatch()

    async def shutdown(self) -> None:
        await self.backend.shutdown()
        for t in list(self._bg):
            t.cancel()
