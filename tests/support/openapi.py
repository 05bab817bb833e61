"""Check real responses against the checked-in OpenAPI document.

Attached as a ``requests`` response hook, so every call a test makes through
``PaiClient`` is validated, not just a hand-picked few.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest

DOC = json.loads((Path(__file__).resolve().parents[2] / "pai_lab/control/openapi.json").read_text())


class OpenAPIChecker:
    def __init__(self, doc: dict = DOC):
        self.doc = doc
        self.routes = []
        for template, item in doc["paths"].items():
            rx = (
                "^"
                + re.sub(r"\{path\}", "(?:.*)", re.sub(r"\{(?!path\})[^}]+\}", "[^/]+", template))
                + "/?$"
            )
            self.routes.append((re.compile(rx), template, item))
        # Literal routes before templated ones (e.g. /jobs/{id}/logs before /files/{path}).
        self.routes.sort(key=lambda r: r[1].count("{"))
        self.checked = 0

    def schema_for(self, method: str, path: str, status: int) -> tuple[str, dict | None]:
        for rx, template, item in self.routes:
            if rx.match(path):
                op = item.get(method.lower())
                if op is None:
                    raise AssertionError(f"{method} {template}: method not in the OpenAPI document")
                responses = op["responses"]
                if str(status) not in responses:
                    raise AssertionError(f"{method} {template}: status {status} not documented")
                return template, responses[str(status)].get("content")
        raise AssertionError(f"{method} {path}: path not in the OpenAPI document")

    def validate(
        self, method: str, url: str, status: int, content_type: str, body: bytes | None
    ) -> None:
        path = urlparse(url).path
        idx = path.find("/api/v1")
        if idx < 0:
            return
        template, content = self.schema_for(method, path[idx + len("/api/v1") :], status)
        if not content or not content_type.startswith("application/json") or body is None:
            return
        if "application/json" not in content:
            return
        schema = {**content["application/json"]["schema"], "components": self.doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(json.loads(body))
        self.checked += 1

    def hook(self, resp, *args, **kwargs):
        ctype = resp.headers.get("Content-Type", "")
        # Streams (logs, downloads) are not consumed here; only JSON bodies are checked.
        body = (
            resp.content
            if ctype.startswith("application/json") and not resp.headers.get("Content-Disposition")
            else None
        )
        self.validate(resp.request.method, resp.url, resp.status_code, ctype, body)
        return resp


@pytest.fixture
def openapi() -> OpenAPIChecker:
    return OpenAPIChecker()
