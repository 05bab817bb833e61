"""``pai://``: the workspace's artifacts as an fsspec filesystem.

Why: notebook and job code should say ``pd.read_csv("pai://datasets/iris.csv")`` and not
care whether the store is a local folder or a bucket, nor hold store credentials.
``pai://<path>`` is always relative to the current workspace.

Two ways to reach the files, chosen when first used:

* **direct** (inside jobs): ``PAI_STORE_URL`` (+ ``PAI_STORE_OPTIONS``, JSON) names the
  artifact store; paths go through ``ArtifactStore.workspace(PAI_WORKSPACE)`` with the
  same confinement checks as the control plane.
* **REST** (notebooks, laptops): through the control plane with ``pai_lab.client.PaiClient``
  (``PAI_LAB_URL``, ``PAI_LAB_TOKEN``, workspace from ``PAI_WORKSPACE`` or
  ``PAI_LAB_WORKSPACE``); the server applies the user's role.

``pai_lab.fs`` is a ready instance. The protocol is registered by the ``fsspec.specs``
entry point of the installed package and again whenever this module is imported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from ..errors import BadRequest, NotFound
from .paths import safe_path
from .store import ArtifactStore, WorkspaceStore

_SPOOL_IN_MEMORY = 16 << 20
_CHUNK = 1 << 20


def _fileobj_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while data := f.read(_CHUNK):
        yield data


class _DirectBackend:
    """Straight to the artifact store (a job's own workspace)."""

    mode = "direct"

    def __init__(self, ws: WorkspaceStore):
        self.ws = ws

    def ls(self, path: str) -> list[dict]:
        try:
            return self.ws.list_sync(path)
        except NotFound as e:
            if e.code != "not_a_directory":
                raise
            return [self.ws.info_sync(path)]

    def info(self, path: str) -> dict:
        return self.ws.info_sync(path)

    def cat(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        if start is None and end is None:
            return self.ws.read_bytes_sync(path)
        if (start or 0) < 0 or (end is not None and end < 0):
            start, end = _clamp(start, end, self.ws.info_sync(path)["size"])
        return self.ws.read_range_sync(path, start or 0, end)

    def iter_read(self, path: str) -> Iterator[bytes]:
        return self.ws.iter_read_sync(path, _CHUNK)

    def upload(self, path: str, data: bytes | IO[bytes]) -> None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            self.ws.write_bytes_sync(path, bytes(data))
        else:
            self.ws.write_stream_sync(path, _fileobj_chunks(data))

    def put_file(self, local: str, path: str) -> None:
        self.ws.put_file_sync(local, path)

    def delete(self, path: str, recursive: bool) -> None:
        self.ws.delete_sync(path, recursive=recursive)

    def copy(self, src: str, dst: str) -> None:
        self.ws.copy_sync(src, dst)


class _RestBackend:
    """Through the control plane's REST API (the only place that builds its URLs)."""

    mode = "rest"

    def __init__(self, client: Any, workspace: str | None):
        self.client = client
        self.workspace = workspace

    def ls(self, path: str) -> list[dict]:
        safe_path(path)  # HTTP stacks normalise '..' away: refuse it before sending
        try:
            return self.client.list_files(path, workspace=self.workspace)
        except BadRequest:
            info = self.info(path)  # raises NotFound if missing
            if info.get("type") == "file":
                return [info]
            raise

    def info(self, path: str) -> dict:
        safe_path(path)
        return self.client.file_info(path, workspace=self.workspace)

    def cat(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        safe_path(path, allow_root=False)
        data = self.client.read_file(path, workspace=self.workspace)
        if start is None and end is None:
            return data
        start, end = _clamp(start, end, len(data))
        return data[start:end]

    def iter_read(self, path: str) -> Iterator[bytes]:
        safe_path(path, allow_root=False)
        return self.client.iter_download(path, workspace=self.workspace)

    def upload(self, path: str, data: bytes | IO[bytes]) -> None:
        safe_path(path, allow_root=False)
        self.client.upload(path, data, workspace=self.workspace)

    def put_file(self, local: str, path: str) -> None:
        safe_path(path, allow_root=False)
        with open(local, "rb") as f:
            self.client.upload(path, f, workspace=self.workspace)

    def delete(self, path: str, recursive: bool) -> None:
        safe_path(path, allow_root=False)
        self.client.delete_file(path, recursive=recursive, workspace=self.workspace)

    def copy(self, src: str, dst: str) -> None:
        if self.info(src).get("type") == "directory":
            raise BadRequest(f"copying folder '{src}' through the API is not supported")
        self.upload(dst, self.cat(src))


def _clamp(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    start = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
    end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
    return start, end


@contextlib.contextmanager
def _not_found_as_oserror(path: str) -> Iterator[None]:
    """fsspec callers (pandas, ...) expect FileNotFoundError for a missing path."""
    try:
        yield
    except NotFound as e:
        raise FileNotFoundError(errno.ENOENT, e.message, f"pai://{path}") from None


def _fs_info(entry: dict) -> dict:
    """A store/API entry in the shape fsspec expects (``name`` is the full fs path)."""
    return {
        "name": entry.get("path", ""),
        "size": entry.get("size") or 0,
        "type": entry.get("type", "file"),
        "modified": entry.get("modified"),
    }


class PaiFileSystem(AbstractFileSystem):
    """fsspec filesystem for ``pai://<path in the current workspace>``.

    ``PaiFileSystem(workspace=..., url=..., token=...)`` (REST) or
    ``PaiFileSystem(store_url=..., store_options=..., workspace=...)`` (direct) override
    the environment. Instances are not cached, so a changed environment is honoured.
    """

    protocol = "pai"
    root_marker = ""
    cachable = False
    async_impl = False

    def __init__(
        self,
        workspace: str | None = None,
        url: str | None = None,
        token: str | None = None,
        store_url: str | None = None,
        store_options: dict | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self._workspace = workspace
        self._url = url
        self._token = token
        self._store_url = store_url
        self._store_options = store_options
        self._backend_obj: _DirectBackend | _RestBackend | None = None

    # -- backend -----------------------------------------------------------------------

    @property
    def workspace(self) -> str | None:
        return (
            self._workspace
            or os.environ.get("PAI_WORKSPACE")
            or os.environ.get("PAI_LAB_WORKSPACE")
            or None
        )

    @property
    def _backend(self) -> _DirectBackend | _RestBackend:
        if self._backend_obj is None:
            store_url = self._store_url or os.environ.get("PAI_STORE_URL")
            if store_url:
                options = self._store_options
                if options is None:
                    raw = os.environ.get("PAI_STORE_OPTIONS") or "{}"
                    try:
                        options = json.loads(raw)
                    except ValueError as e:
                        raise BadRequest(f"PAI_STORE_OPTIONS is not valid JSON: {e}") from None
                store = ArtifactStore(url=store_url, storage_options=options)
                self._backend_obj = _DirectBackend(store.workspace(self.workspace or "default"))
            else:
                from ..client import PaiClient

                client = PaiClient(url=self._url, token=self._token, workspace=self.workspace)
                self._backend_obj = _RestBackend(client, self.workspace)
        return self._backend_obj

    @property
    def mode(self) -> str:
        """``"direct"`` or ``"rest"``: how this instance reaches the files."""
        return self._backend.mode

    # -- paths -------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path) if not isinstance(path, str) else path
        if path.startswith("pai://"):
            path = path[len("pai://") :]
        elif path.startswith("pai:"):
            path = path[len("pai:") :]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"pai://{name}"

    # -- fsspec API --------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        with _not_found_as_oserror(path):
            entries = [_fs_info(e) for e in self._backend.ls(path)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict:
        path = self._strip_protocol(path)
        if path == "":
            return {"name": "", "size": 0, "type": "directory", "modified": None}
        with _not_found_as_oserror(path):
            return _fs_info(self._backend.info(path))

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
            return True
        except FileNotFoundError:
            return False

    def modified(self, path: str) -> dt.datetime:
        value = self.info(path).get("modified")
        if not value:
            raise NotImplementedError(f"no modification time for {path!r}")
        return dt.datetime.fromisoformat(value)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        path = self._strip_protocol(path)
        with _not_found_as_oserror(path):
            return self._backend.cat(path, start, end)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        self._backend.upload(self._strip_protocol(path), value)

    def put_file(self, lpath: str, rpath: str, callback=None, mode="overwrite", **kwargs) -> None:
        if os.path.isdir(lpath):
            return  # folders appear with their files
        self._backend.put_file(os.fspath(lpath), self._strip_protocol(rpath))

    def get_file(self, rpath: str, lpath: str, callback=None, outfile=None, **kwargs) -> None:
        rpath = self._strip_protocol(rpath)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        if outfile is not None:
            for chunk in self._backend.iter_read(rpath):
                outfile.write(chunk)
            return
        lpath = os.fspath(lpath)
        tmp = f"{lpath}.pai-part"
        try:
            with open(tmp, "wb") as f:
                for chunk in self._backend.iter_read(rpath):
                    f.write(chunk)
            os.replace(tmp, lpath)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self._backend.copy(self._strip_protocol(path1), self._strip_protocol(path2))

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        with _not_found_as_oserror(path):
            self._backend.delete(path, recursive=False)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: str | list, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files, or folders with ``recursive=True``, in one call each."""
        for p in path if isinstance(path, list) else [path]:
            p = self._strip_protocol(p)
            with _not_found_as_oserror(p):
                self._backend.delete(p, recursive=recursive)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Folders exist through their files (as in object stores): nothing to do."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """See ``mkdir``."""

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict | None = None,
        **kwargs: Any,
    ) -> PaiFile:
        if mode not in ("rb", "wb"):
            raise ValueError(f"pai:// files open as 'rb' or 'wb', not {mode!r}")
        path = self._strip_protocol(path)
        if mode == "rb":
            info = self.info(path)  # FileNotFoundError for a missing file
            if info["type"] == "directory":
                raise IsADirectoryError(errno.EISDIR, "is a folder", f"pai://{path}")
            kwargs["size"] = info["size"]
        cache_type = kwargs.pop("cache_type", None)
        if cache_type is None:
            # The REST API has no range reads: fetch the whole file once.
            cache_type = "all" if mode == "rb" and self._backend.mode == "rest" else "readahead"
        return PaiFile(
            self,
            path,
            mode=mode,
            block_size=block_size or "default",
            autocommit=autocommit,
            cache_type=cache_type,
            cache_options=cache_options,
            **kwargs,
        )


class PaiFile(AbstractBufferedFile):
    """Reads by range through the filesystem; writes spool locally and upload once on
    close (atomically on the store side). Used as ``with fs.open(p, "wb") as f:`` an
    exception inside the block uploads nothing."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start, end)

    def _initiate_upload(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)

    def _upload_chunk(self, final: bool = False) -> bool:
        self._spool.write(self.buffer.getbuffer())
        if final:
            self._spool.seek(0)
            try:
                self.fs._backend.upload(self.path, self._spool)
            finally:
                self._spool.close()
        return True

    def discard(self) -> None:
        spool = getattr(self, "_spool", None)
        if spool is not None:
            spool.close()
        self.buffer = io.BytesIO()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.mode == "wb" and not self.closed:
            self.discard()
            self.closed = True
            return
        self.close()


fsspec.register_implementation("pai", PaiFileSystem, clobber=True)

_default_fs: PaiFileSystem | None = None


def __getattr__(name: str) -> Any:
    if name == "fs":  # ``pai_lab.fs``: created on first use, configured from the env
        global _default_fs
        if _default_fs is None:
            _default_fs = PaiFileSystem()
        return _default_fs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PaiFileSystem", "PaiFile", "fs"]  # noqa: F822 (fs comes from __getattr__)
