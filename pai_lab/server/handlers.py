"""Handlers under ``<base_url>pai/api/``.

Authentication is jupyter_server's own (token, cookie + XSRF for browsers, or the hub's
OAuth under JupyterHub); authorization goes through the server's ``Authorizer`` with the
resource ``pai`` (read for GET/HEAD, write otherwise). The control plane then applies the
workspace roles of the identity the forwarded token stands for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.httputil import HTTPHeaders

from ..errors import BackendUnavailable, BadRequest, NotFound, PaiError
from ..jobs.spec import SPEC_FIELDS
from .proxy import RESPONSE_DROP, Upstream, UpstreamUnavailable, forward_request_headers

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    503: "backend_unavailable",
    504: "backend_unavailable",
}

# Fields of a job spec that /pai/api/notebook-jobs passes on unchanged.
_SPEC_PASSTHROUGH = tuple(sorted(SPEC_FIELDS - {"source", "files"}))
MAX_SIBLING_FILES = 1000


class PaiBaseHandler(ExtensionHandlerMixin, APIHandler):
    """JSON errors in the platform's shape, auth via jupyter_server, scope 'pai'."""

    auth_resource = "pai"

    @property
    def ext(self):
        return self.extensionapp

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self._finished:
            return
        if self.request.method == "OPTIONS":  # CORS preflight: answered by APIHandler
            return
        if not self.current_user:
            # jupyter_server >= 2.13 lets unauthenticated requests through prepare() unless
            # allow_unauthenticated_access is off; a pai route is never anonymous.
            raise web.HTTPError(403, "authentication required (a Jupyter token or login)")
        action = "read" if self.request.method in ("GET", "HEAD", "OPTIONS") else "write"
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, action, self.auth_resource)
        )
        if not allowed:
            raise web.HTTPError(403, f"not authorized to {action} pai-lab resources")

    def update_api_activity(self) -> None:
        # Polling the job list or following logs is not user activity: counting it would
        # keep an open sidebar from ever letting the idle culler stop the server.
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            super().update_api_activity()

    def finish(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        kwargs.setdefault("set_content_type", self._headers.get("Content-Type", "application/json"))
        return super().finish(*args, **kwargs)

    def send_error_json(self, status: int, message: str, code: str | None = None) -> None:
        if self._headers_written:
            # Mid-stream: nothing sensible to add; end the response.
            self.finish()
            return
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        body = {"error": {"code": code or _CODES.get(status, "error"), "message": message}}
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PaiError):
            self.send_error_json(exc.status, exc.message, exc.code)
            return
        if isinstance(exc, web.HTTPError):
            message = exc.log_message or exc.reason or self._reason
            if exc.args and exc.log_message and "%" in exc.log_message:
                try:
                    message = exc.log_message % exc.args[1:]
                except TypeError:
                    pass
        else:
            message = "internal error in the pai-lab server extension (see the server log)"
        if status_code == 403 and not message:
            message = "forbidden"
        self.send_error_json(status_code, message or self._reason)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, PaiError):
            if not self._finished:
                self.send_error_json(e.status, e.message, e.code)
            return
        super()._handle_request_exception(e)


@web.stream_request_body
class ProxyHandler(PaiBaseHandler):
    """``/pai/api/v1/<rest>`` -> ``<control plane>/api/v1/<rest>``, streamed both ways."""

    _upstream: Upstream | None = None
    _client_gone = False
    _body_error: str | None = None

    _deferred_error: BaseException | None = None

    async def prepare(self) -> None:  # type: ignore[override]
        try:
            await self._prepare_upstream()
        except Exception as e:
            if self.request.method in ("POST", "PUT", "PATCH", "DELETE") and not self._finished:
                # Answering before the body is read makes the server close the socket with
                # unread data, which the client sees as a reset instead of our 403/503.
                # Drain (and drop) the body first, as a non-streaming handler would.
                self._deferred_error = e
                return
            raise

    async def _prepare_upstream(self) -> None:
        if self.request.method == "OPTIONS":
            await super().prepare()
            return
        if self.ext.max_upload_bytes and self.request.method in ("PUT", "POST", "PATCH"):
            # Bodies stream through (never held in memory): allow the control plane's size.
            self.request.connection.set_max_body_size(self.ext.max_upload_bytes)
        await super().prepare()
        if self._finished:
            return
        try:
            await self.ext.wait_ready()
        except asyncio.TimeoutError:
            raise BackendUnavailable("the pai-lab control plane is still starting; retry") from None
        if self.ext.startup_error:
            raise BackendUnavailable(self.ext.startup_error)
        rest = self.path_kwargs.get("rest") or ""
        url = self.ext.upstream_url + "api/v1/" + rest.lstrip("/")
        if self.request.query:
            url += "?" + self.request.query
        headers = forward_request_headers(self.request.headers)
        if self.ext.upstream_token:
            headers["Authorization"] = f"token {self.ext.upstream_token}"
        method = self.request.method
        # A body without Content-Length (a chunked upload) is forwarded chunked.
        if method not in ("POST", "PUT", "PATCH", "DELETE") and "Content-Length" in headers:
            del headers["Content-Length"]
        self._upstream = Upstream(self._on_headers, self._on_chunk)
        try:
            await self._upstream.open(
                url,
                method,
                headers,
                connect_timeout=self.ext.connect_timeout,
                header_timeout=self._header_timeout(),
            )
        except UpstreamUnavailable as e:
            self._upstream = None
            raise BackendUnavailable(
                f"pai-lab control plane at {self.ext.upstream_url} is unreachable: {e}"
            ) from None

    def _header_timeout(self) -> float | None:
        # A followed log of a job still queued may send nothing (not even headers) for a
        # long time: no limit there.
        if self.get_query_argument("follow", "0").lower() in ("1", "true", "yes"):
            return None
        return self.ext.response_timeout or None

    async def data_received(self, chunk: bytes) -> None:
        if self._upstream is None or self._body_error or self._deferred_error:
            return
        try:
            await self._upstream.write(chunk)
        except UpstreamUnavailable as e:
            self._body_error = str(e)

    def _on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> None:
        self.clear_header("Content-Type")
        self.set_status(code, reason or None)
        for name, value in headers.get_all():
            if name.lower() in RESPONSE_DROP:
                continue
            self.add_header(name, value)

    async def _on_chunk(self, chunk: bytes) -> None:
        if self._client_gone:
            raise ConnectionAbortedError("client went away")
        self.write(chunk)
        await self.flush()

    async def _relay(self) -> None:
        if self._deferred_error is not None:
            raise self._deferred_error
        up = self._upstream
        if up is None:  # pragma: no cover - prepare raised
            return
        if self._body_error:
            up.close()
            raise BackendUnavailable(
                f"pai-lab control plane at {self.ext.upstream_url} closed the connection "
                f"during the upload: {self._body_error}"
            )
        try:
            await up.finish_request_and_relay()
        except UpstreamUnavailable as e:
            if self._headers_written:
                return
            raise BackendUnavailable(
                f"pai-lab control plane at {self.ext.upstream_url} is unreachable: {e}"
            ) from None
        finally:
            up.close()
        if not self._finished and not self._client_gone:
            self.finish()

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._upstream is not None:
            self._upstream.close()

    def on_finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()

    async def get(self, rest: str = "") -> None:
        await self._relay()

    async def head(self, rest: str = "") -> None:
        await self._relay()

    async def post(self, rest: str = "") -> None:
        await self._relay()

    async def put(self, rest: str = "") -> None:
        await self._relay()

    async def patch(self, rest: str = "") -> None:
        await self._relay()

    async def delete(self, rest: str = "") -> None:
        await self._relay()


class StatusHandler(PaiBaseHandler):
    """``/pai/api/status``: how this server reaches the control plane (never the token)."""

    async def get(self) -> None:
        ext = self.ext
        ready = ext._ready.is_set()
        self.finish(
            json.dumps(
                {
                    "mode": ext.mode,
                    "control_url": ext.upstream_url,
                    "ready": ready and not ext.startup_error,
                    "error": ext.startup_error,
                    "workspace": ext.default_workspace,
                }
            )
        )


def _clean_relpath(path: Any, field: str) -> str:
    """A path relative to the notebook's folder that cannot leave the server root."""
    if not isinstance(path, str) or not path.strip():
        raise BadRequest(f"{field}: expected a non-empty relative path, got {path!r}")
    if "\x00" in path or "\\" in path:
        raise BadRequest(f"{field}: {path!r} contains a NUL or a backslash")
    if path.startswith("/"):
        raise BadRequest(f"{field}: {path!r} must be relative to the notebook's folder")
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise BadRequest(f"{field}: {path!r} must not contain '..'")
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean:
        raise BadRequest(f"{field}: {path!r} names no file")
    return clean


class NotebookJobHandler(PaiBaseHandler):
    """``POST /pai/api/notebook-jobs``: snapshot a notebook (+ siblings) and submit it.

    The browser may send the notebook's current ``content`` (unsaved edits included);
    otherwise the saved file is read through the contents manager, which also enforces
    the server's root directory and hidden-file rules for every sibling.
    """

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"")
        except ValueError as e:
            raise BadRequest(f"request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        allowed = {"path", "content", "files", "workspace", *_SPEC_PASSTHROUGH}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
        path = body.get("path")
        if not isinstance(path, str) or not path.strip():
            raise BadRequest("path: the notebook's path (relative to the server root) is required")
        path = _clean_relpath(path.lstrip("/"), "path")
        if not path.endswith(".ipynb"):
            raise BadRequest(f"path: {path!r} is not a notebook (.ipynb)")
        workspace = body.get("workspace")
        if workspace is not None and (not isinstance(workspace, str) or not workspace):
            raise BadRequest("workspace: expected a workspace name")

        cm = self.contents_manager
        content = body.get("content")
        if content is None:
            model = await self._get_model(path, content=True, type="notebook")
            content = model["content"]
        elif isinstance(content, str):
            try:
                content = json.loads(content)
            except ValueError as e:
                raise BadRequest(f"content: notebook is not JSON ({e})") from None
        if not isinstance(content, dict):
            raise BadRequest("content: expected the notebook as a JSON object")
        content = json.loads(json.dumps(content, default=str))  # nbformat nodes -> plain JSON

        files_in = body.get("files") or []
        if isinstance(files_in, str):
            files_in = [files_in]
        if not isinstance(files_in, list):
            raise BadRequest("files: expected a list of paths relative to the notebook's folder")
        nb_dir = posixpath.dirname(path)
        files: dict[str, str] = {}
        for i, rel in enumerate(files_in):
            rel = _clean_relpath(rel, f"files[{i}]")
            await self._collect(cm, nb_dir, rel, files)

        spec: dict[str, Any] = {k: body[k] for k in _SPEC_PASSTHROUGH if k in body}
        spec["source"] = {"notebook": posixpath.basename(path), "content": content}
        if files:
            spec["files"] = files
        try:
            await self.ext.wait_ready()
        except asyncio.TimeoutError:
            raise BackendUnavailable("the pai-lab control plane is still starting; retry") from None
        if self.ext.startup_error:
            raise BackendUnavailable(self.ext.startup_error)
        loop = asyncio.get_running_loop()
        job = await loop.run_in_executor(None, self._submit, spec, workspace)
        self.set_status(201)
        self.finish(json.dumps(job))

    def _submit(self, spec: dict, workspace: str | None) -> dict:
        try:
            client = self.ext.client(workspace)
            return client.submit_job(spec, workspace=workspace)
        except PaiError:
            raise
        except OSError as e:
            raise BackendUnavailable(
                f"pai-lab control plane at {self.ext.upstream_url} is unreachable: {e}"
            ) from None
        except Exception as e:
            # requests' ConnectionError is an OSError subclass; anything else is ours
            name = type(e).__name__
            if "Connection" in name or "Timeout" in name:
                raise BackendUnavailable(
                    f"pai-lab control plane at {self.ext.upstream_url} is unreachable: {e}"
                ) from None
            raise

    async def _get_model(self, path: str, **kw: Any) -> dict:
        try:
            return await ensure_async(self.contents_manager.get(path, **kw))
        except web.HTTPError as e:
            if e.status_code == 404:
                raise NotFound(f"{path}: no such file in this server's root directory") from None
            if e.status_code == 400:
                raise BadRequest(f"{path}: {e.log_message or e.reason}") from None
            raise

    async def _collect(self, cm, nb_dir: str, rel: str, out: dict[str, str]) -> None:
        full = posixpath.join(nb_dir, rel) if nb_dir else rel
        if await ensure_async(cm.dir_exists(full)):
            model = await self._get_model(full, content=True, type="directory")
            for entry in model.get("content") or []:
                child = rel + "/" + entry["name"]
                await self._collect(cm, nb_dir, child, out)
            return
        if not await ensure_async(cm.file_exists(full)):
            raise NotFound(f"files: {rel!r} does not exist next to the notebook ({full})")
        if len(out) >= MAX_SIBLING_FILES:
            raise BadRequest(f"files: more than {MAX_SIBLING_FILES} files")
        model = await self._get_model(full, content=True, type="file", format="base64")
        data = model.get("content") or ""
        out[rel] = (
            data.replace("\n", "") if isinstance(data, str) else base64.b64encode(data).decode()
        )


default_handlers = [
    (r"/pai/api/status", StatusHandler),
    (r"/pai/api/notebook-jobs", NotebookJobHandler),
    (r"/pai/api/v1/(?P<rest>.*)", ProxyHandler),
]
