"""Bearer-token identity for the stand-alone control plane (and job tokens everywhere).

Tokens are compared by SHA-256 hash: the admin token lives in ``<data-dir>/admin-token``
(mode 0600) and only its hash is kept in memory; user and job tokens are stored hashed in
the database, so a leaked database does not leak usable tokens.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from tornado.web import RequestHandler
from traitlets import Unicode

from .db import ApiToken, hash_token
from .identity import Identity, IdentityProvider

JOB_TOKEN_PREFIX = "pjt_"
USER_TOKEN_PREFIX = "put_"


def bearer_token(handler: RequestHandler) -> str | None:
    """The token from ``Authorization: Bearer|token X`` (or ``?token=`` for downloads)."""
    auth = handler.request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return handler.get_query_argument("token", None) or None


def load_or_create_admin_token(data_dir: str, configured: str = "") -> str:
    """The admin token: configured, else read from, else generated into the data dir."""
    path = Path(data_dir) / "admin-token"
    if configured:
        return configured
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class TokenIdentityProvider(IdentityProvider):
    """Admin token, user tokens minted by an admin, and job tokens."""

    admin_user = Unicode("admin", help="Name the admin token acts as (hub admin equivalent).").tag(
        config=True
    )

    def __init__(self, *, admin_token: str, db, **kwargs):
        super().__init__(**kwargs)
        self._admin_hash = hash_token(admin_token)
        self.db = db

    async def identify(self, handler: RequestHandler) -> Identity | None:
        token = bearer_token(handler)
        if not token:
            return None
        h = hash_token(token)
        if hmac.compare_digest(h, self._admin_hash):
            return Identity(name=self.admin_user, admin=True, kind="service")
        return await lookup_token(self.db, h)


async def lookup_token(db, token_hash: str) -> Identity | None:
    """User or job token from the database (shared with the hub identity provider)."""

    def q(s):
        row = s.get(ApiToken, token_hash)
        if row is None:
            return None
        if row.kind == "job":
            return Identity(name=row.user, kind="job", job_id=row.job_id, workspace=row.workspace)
        return Identity(name=row.user, kind="user")

    return await db.run(q)
