"""The control plane's database: SQLAlchemy 2 models and a small executor-backed facade.

All SQL runs on one dedicated worker thread (``Database.run``): sqlite wants a single
writer anyway, and it keeps blocking I/O off the tornado event loop. Any SQLAlchemy URL
works (sqlite file by default, PostgreSQL in Kubernetes mode).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

T = TypeVar("T")
SCHEMA_VERSION = 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def iso(t: dt.datetime | None) -> str | None:
    return (
        None
        if t is None
        else t.replace(microsecond=(t.microsecond // 1000) * 1000).isoformat() + "Z"
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "pai_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Workspace(Base):
    __tablename__ = "workspaces"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    max_concurrent_jobs: Mapped[int] = mapped_column(Integer, default=4)
    max_queued_jobs: Mapped[int] = mapped_column(Integer, default=100)
    max_gpus: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255), default="")


class Membership(Base):
    __tablename__ = "memberships"
    workspace: Mapped[str] = mapped_column(
        ForeignKey("workspaces.name", ondelete="CASCADE"), primary_key=True
    )
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("workspace", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace: Mapped[str] = mapped_column(ForeignKey("workspaces.name"), index=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    seq: Mapped[int] = mapped_column(Integer, default=0, index=True)  # FIFO order
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    exit_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    wait_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[list] = mapped_column(JSON, default=list)
    environment: Mapped[dict] = mapped_column(JSON, default=dict)
    backend: Mapped[str] = mapped_column(String(32), default="local")
    backend_ref: Mapped[dict] = mapped_column(JSON, default=dict)
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)


class ApiToken(Base):
    """User tokens (token mode) and per-attempt job tokens; only hashes are stored."""

    __tablename__ = "api_tokens"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "user" | "job"
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    note: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(String(255), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # ok | denied | refused | error
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Model(Base):
    __tablename__ = "models"
    workspace: Mapped[str] = mapped_column(ForeignKey("workspaces.name"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    gate: Mapped[str] = mapped_column(Text, default="")
    aliases: Mapped[dict] = mapped_column(JSON, default=dict)  # alias -> version
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255), default="")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    workspace: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(Text)
    framework: Mapped[str] = mapped_column(String(32))
    signature: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict] = mapped_column(JSON, default=dict)
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255), default="")


class Deployment(Base):
    __tablename__ = "deployments"
    workspace: Mapped[str] = mapped_column(ForeignKey("workspaces.name"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    variants: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    url: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(String(32), default="local")
    backend_ref: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255), default="")


def page(
    s: Session, model: type, order_by: Any, limit: int, offset: int, **equals: Any
) -> tuple[list, int]:
    """One page of ``model`` rows whose columns equal ``equals`` (None/"" means any
    value), newest-first or however ``order_by`` says, and the total that matched."""
    stmt = select(model)
    for column, value in equals.items():
        if value is not None and value != "":
            stmt = stmt.where(getattr(model, column) == value)
    total = s.scalar(select(func.count()).select_from(stmt.subquery()))
    return list(s.scalars(stmt.order_by(order_by).limit(limit).offset(offset))), total


# Migrations: (target version, list of SQL statements) applied in order to older schemas.
MIGRATIONS: list[tuple[int, list[str]]] = []


class Database:
    """Engine + sessions + the one DB thread."""

    def __init__(self, url: str, echo: bool = False):
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.url = url
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(conn, _record):
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pai-db")

    def upgrade(self) -> int:
        """Create the schema or migrate an older one; returns the schema version."""
        existing = set(inspect(self.engine).get_table_names())
        Base.metadata.create_all(self.engine)
        with self.Session.begin() as s:
            row = s.get(Meta, "schema_version")
            if row is None:
                # A fresh database gets the current schema straight from create_all.
                version = SCHEMA_VERSION if "jobs" not in existing else 1
                s.add(Meta(key="schema_version", value=str(version)))
            else:
                version = int(row.value)
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema v{version} is newer than this pai-lab (v{SCHEMA_VERSION})"
                )
            for target, statements in MIGRATIONS:
                if version < target:
                    for stmt in statements:
                        s.execute(text(stmt))
                    version = target
            s.merge(Meta(key="schema_version", value=str(version)))
        return version

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in a transaction on the DB thread; commit on success."""

        def call() -> T:
            with self.Session.begin() as s:
                return fn(s)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


__all__ = [
    "ApiToken",
    "AuditEvent",
    "Base",
    "Database",
    "Deployment",
    "Job",
    "Membership",
    "Model",
    "ModelVersion",
    "Workspace",
    "hash_token",
    "iso",
    "new_id",
    "select",
    "utcnow",
]
