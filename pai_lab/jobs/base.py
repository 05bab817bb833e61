"""The contract between the control plane and a job backend.

The control plane owns the queue, quotas, retries and the database; a backend only
starts one *attempt* of a job, stops it, re-attaches to it after a control-plane
restart, and reports what happens through ``report``. Keeping the queue out of the
backends is what lets the local and Kubernetes backends share the same FIFO and quota
rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from traitlets.config import LoggingConfigurable

# report(job_id, attempt, **fields): fields among
#   state="starting"|"running"|"succeeded"|"failed"|"cancelled"|"timed_out"|"lost",
#   exit_reason=str (one line for people, e.g. "ZeroDivisionError: division by zero"),
#   metrics=[{"name", "value", "step", "time"}]  (the full list so far),
#   environment={"python", "packages", "notebook_sha256", "image", "gpus", ...},
#   backend_ref={...}  (persisted; handed back to reattach/cancel/logs)
Reporter = Callable[..., Awaitable[None]]


@dataclass
class JobRun:
    """One attempt of a job, as handed to a backend."""

    id: str
    workspace: str
    owner: str
    attempt: int
    spec: dict  # JobSpec.to_dict()
    profile: dict  # Profile.to_dict() resolved by the control plane
    env: dict = field(default_factory=dict)  # extra env: PAI_LAB_URL, PAI_LAB_TOKEN (job token)
    backend_ref: dict = field(default_factory=dict)


class JobBackend(LoggingConfigurable):
    """Base class; subclasses: ``LocalJobBackend``, ``KubernetesJobBackend``."""

    def __init__(self, *, store: Any, report: Reporter, data_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.store = store  # pai_lab.storage.ArtifactStore
        self.report = report
        self.data_dir = data_dir

    def wait_reason(self, run: JobRun) -> str | None:
        """Why ``run`` cannot start right now (e.g. no free GPU), or None if it can."""
        return None

    def unavailable_reason(self, run: JobRun) -> str | None:
        """Why ``run`` can never start here (e.g. GPU profile on a machine without GPUs)."""
        return None

    async def start(self, run: JobRun) -> dict:
        """Start the attempt; return its backend_ref (persisted by the control plane)."""
        raise NotImplementedError

    async def cancel(self, run: JobRun) -> None:
        """Stop the attempt (graceful, then forced); report ``cancelled`` when it is gone."""
        raise NotImplementedError

    async def reattach(self, run: JobRun) -> None:
        """After a control-plane restart: follow a still-running attempt, or report its
        final state (from what it left behind), or report ``lost``."""
        raise NotImplementedError

    async def live_logs(self, run: JobRun, offset: int = 0) -> AsyncIterator[bytes] | None:
        """Log bytes from ``offset`` while the attempt is active, or None when the backend
        has no live copy (the control plane then reads ``jobs/<id>/logs.txt`` from the
        store). The iterator ends when no more bytes are available right now."""
        return None

    async def shutdown(self) -> None:
        """Control plane stopping: stop supervising, leave jobs running."""
