"""Workspace files: list a folder, stream a download, stream an upload (atomic), delete."""

from __future__ import annotations

import asyncio
import mimetypes
from urllib.parse import quote

from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from ...errors import BadRequest, PayloadTooLarge
from ...storage import safe_path
from .base import BaseHandler

_END = object()


class _UploadAborted(Exception):
    pass


@stream_request_body
class FilesHandler(BaseHandler):
    _queue: asyncio.Queue | None = None
    _writer: asyncio.Task | None = None
    _received = 0

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method == "PUT":
            ws, path = self.path_args
            await self.require(ws, "developer", "upload_file", path)
            if not path or path.endswith("/"):
                raise BadRequest("path: give a file path to upload to, not a folder")
            limit = self.control.max_upload_bytes
            self.request.connection.set_max_body_size(limit)
            clen = self.request.headers.get("Content-Length")
            if clen and clen.isdigit() and int(clen) > limit:
                raise PayloadTooLarge(f"upload is {clen} bytes; the limit is {limit}")
            self._queue = asyncio.Queue(maxsize=8)
            wstore = self.control.store.workspace(ws)
            # Validate the path before accepting any bytes.
            safe_path(path, allow_root=False)
            self._writer = asyncio.ensure_future(wstore.write_stream(path, self._chunks()))

    async def _chunks(self):
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def data_received(self, chunk: bytes) -> None:
        if self._queue is not None and not self._writer.done():
            self._received += len(chunk)
            await self._queue.put(chunk)

    def on_connection_close(self) -> None:
        if self._queue is not None and self._writer is not None and not self._writer.done():
            self._queue.put_nowait(_UploadAborted("client disconnected during upload"))

    def on_finish(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._queue.put_nowait(_UploadAborted("request ended before upload completed"))

    def write_error(self, status_code: int, **kwargs) -> None:
        if self.request.method == "PUT":
            # The body was not read: tell the client this connection cannot be reused.
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    async def put(self, ws: str, path: str) -> None:
        await self._queue.put(_END)
        size = await self._writer
        await self.audit(ws, "upload_file", "file", path, size=size)
        self.send({"path": path, "size": size}, 201)

    async def get(self, ws: str, path: str) -> None:
        await self.require(ws, "viewer", "read_file", path)
        wstore = self.control.store.workspace(ws)
        path = path.rstrip("/")
        info = await wstore.info(path) if path else {"type": "directory", "path": ""}
        if info["type"] == "directory":
            self.send({"path": path, "entries": await wstore.list(path)})
            return
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.set_header("Content-Type", ctype)
        if info.get("size") is not None:
            self.set_header("Content-Length", str(info["size"]))
        name = path.rsplit("/", 1)[-1]
        disp = "attachment" if self.get_query_argument("download", "0") == "1" else "inline"
        self.set_header("Content-Disposition", f"{disp}; filename*=UTF-8''{quote(name)}")
        try:
            async for chunk in wstore.iter_read(path):
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return
        self.finish()

    async def delete(self, ws: str, path: str) -> None:
        await self.require(ws, "developer", "delete_file", path)
        if not path.strip("/"):
            raise BadRequest("path: refusing to delete the workspace root")
        recursive = self.get_query_argument("recursive", "0") in ("1", "true")
        await self.control.store.workspace(ws).delete(path.rstrip("/"), recursive=recursive)
        await self.audit(ws, "delete_file", "file", path, recursive=recursive)
        self.set_status(204)
        self.finish()
