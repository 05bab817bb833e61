"""Who is calling: one small interface, so token auth (standalone control plane), hub auth
(``hub_identity.py``) and the in-process standalone mode (``pai_lab.server``) are
interchangeable without touching handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from tornado.web import RequestHandler
from traitlets.config import LoggingConfigurable


@dataclass
class Identity:
    name: str
    admin: bool = False  # hub admins / the admin token: admin in every workspace
    groups: list[str] = field(default_factory=list)
    kind: str = "user"  # "user" | "job" | "service"
    # A job token acts as its owner but only inside the job's workspace.
    job_id: str | None = None
    workspace: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "admin": self.admin, "groups": self.groups, "kind": self.kind}


class IdentityProvider(LoggingConfigurable):
    """Resolve a request to an Identity, or None (the handler then answers 401)."""

    async def identify(self, handler: RequestHandler) -> Identity | None:
        raise NotImplementedError

    def extra_handlers(self, base_url: str) -> list:
        """Tornado handlers the provider needs (e.g. an OAuth callback)."""
        return []

    def login_url(self, handler: RequestHandler) -> str | None:
        """Where a browser should go to log in, if anywhere (used for 401s from browsers)."""
        return None
