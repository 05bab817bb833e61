"""Typed errors shared by the control plane, the client and the CLI.

One hierarchy on both sides of the wire: the server turns a ``PaiError`` into
``{"error": {"code": ..., "message": ...}}`` with its HTTP status, and the client turns
that body back into the same class, so callers can ``except NotFound`` wherever they are.
"""

from __future__ import annotations


class PaiError(Exception):
    """Base of every error a user may see; ``message`` is meant for people."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(PaiError):
    status, code = 400, "bad_request"


class Unauthorized(PaiError):
    status, code = 401, "unauthorized"


class Forbidden(PaiError):
    status, code = 403, "forbidden"


class NotFound(PaiError):
    status, code = 404, "not_found"


class Conflict(PaiError):
    status, code = 409, "conflict"


class PayloadTooLarge(PaiError):
    status, code = 413, "payload_too_large"


class GateFailed(PaiError):
    status, code = 422, "gate_failed"


class QuotaExceeded(PaiError):
    status, code = 429, "quota_exceeded"


class BackendUnavailable(PaiError):
    status, code = 503, "backend_unavailable"


_BY_STATUS = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        GateFailed,
        QuotaExceeded,
        BackendUnavailable,
    )
}


def error_for_status(status: int, message: str, code: str | None = None) -> PaiError:
    """Rebuild the typed error a server sent (used by the client)."""
    cls = _BY_STATUS.get(status, PaiError)
    err = cls(message, code=code)
    err.status = status
    return err
