"""Unauthenticated routes: health and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from tornado.web import RequestHandler

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


class HealthHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish({"status": "ok", "version": self.settings["pai_control"].version})


class OpenAPIHandler(RequestHandler):
    _cache: bytes | None = None

    def get(self) -> None:
        if OpenAPIHandler._cache is None:
            OpenAPIHandler._cache = OPENAPI_PATH.read_bytes()
        self.set_header("Content-Type", "application/json")
        self.finish(OpenAPIHandler._cache)
