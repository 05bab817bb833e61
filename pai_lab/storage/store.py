"""The artifact store: one fsspec filesystem, split into workspace-confined views.

``file://`` (the default, under the data dir) and ``s3://bucket/prefix`` (s3fs: AWS, MinIO,
Alibaba OSS through ``endpoint_url``) are the supported backends; any other fsspec URL is
passed through untested. Every public method exists twice: an ``async`` one for the
tornado control plane, which runs the blocking fsspec call in a thread pool so the event
loop never waits on disk or network, and a ``_sync`` twin for the job runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import posixpath
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import fsspec
from traitlets import Dict, Int, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..errors import (
    BackendUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PaiError,
    PayloadTooLarge,
)
from .paths import TMP_PREFIX, check_workspace_name, safe_path

T = TypeVar("T")

#: Object stores where a single PUT / CompleteMultipartUpload is already atomic.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "oss"}
_COPY_CHUNK = 1 << 20


def _iso(value: Any) -> str | None:
    """fsspec backends report times as epoch floats or datetimes; the API speaks ISO 8601."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).isoformat()
    return str(value)


def _modified(info: dict) -> str | None:
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        if info.get(key) is not None:
            return _iso(info[key])
    return None


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "NoCredentialsError",
        }
    )


class ArtifactStore(LoggingConfigurable):
    """Where workspaces keep datasets, job files and models.

    Construct with ``ArtifactStore(data_dir=...)`` for the local default, or configure
    ``c.ArtifactStore.url = "s3://bucket/prefix"`` and ``storage_options``. ``to_dict()``
    gives what a job needs to rebuild the same store in another process.
    """

    url = Unicode(
        "",
        help="""Root of the artifact store as an fsspec URL.

        "" (default) means file://<data_dir>/store. Use "s3://bucket/prefix" for S3 or any
        S3-compatible service (MinIO, Alibaba Cloud OSS, ...) and set the endpoint and
        credentials in storage_options. Workspaces live under <url>/workspaces/<name>/.
        """,
    ).tag(config=True)

    storage_options = Dict(
        help="""Options passed to the fsspec filesystem for `url`.

        For s3: {"key": "...", "secret": "...", "endpoint_url": "http://minio:9000",
        "region": "cn-hangzhou"} (endpoint_url and region may also be given inside
        "client_kwargs" as s3fs expects). Leave credentials out to use the usual AWS
        environment variables / instance roles.
        """,
    ).tag(config=True)

    data_dir = Unicode(
        "",
        help="Data directory of pai-lab; the default store is <data_dir>/store.",
    ).tag(config=True)

    max_workers = Int(
        8,
        help="""Threads running blocking storage calls for the async API. Bounds how many
        store operations run at once without ever blocking the event loop.""",
    ).tag(config=True)

    upload_part_size = Int(
        8 << 20,
        help="""Bytes buffered per part when streaming a write to an object store (S3 needs
        at least 5 MiB). Larger parts mean fewer requests but more memory per upload.""",
    ).tag(config=True)

    @validate("url")
    def _check_url(self, proposal: Any) -> str:
        url = proposal["value"].strip()
        if "://" in url:
            proto = url.split("://", 1)[0].lower()
            if proto not in fsspec.available_protocols():
                raise TraitError(
                    f"ArtifactStore.url {url!r}: unknown storage protocol {proto!r} "
                    "(use file://..., s3://bucket/prefix, or another fsspec protocol)"
                )
            if proto in ("s3", "s3a") and not url.split("://", 1)[1].strip("/"):
                raise TraitError(f"ArtifactStore.url {url!r}: name a bucket (s3://bucket/prefix)")
        return url

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.abspath(os.path.expanduser("~/.pai-lab"))

    def __init__(self, data_dir: str | os.PathLike | None = None, **kwargs: Any):
        if data_dir is not None:
            kwargs["data_dir"] = os.fspath(data_dir)
        super().__init__(**kwargs)
        self._fs = None
        self._executor: ThreadPoolExecutor | None = None

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, **kwargs: Any) -> ArtifactStore:
        """Rebuild a store from ``to_dict()`` output (e.g. ``job.json["store"]``)."""
        return cls(url=d["url"], storage_options=dict(d.get("options") or {}), **kwargs)

    def to_dict(self) -> dict:
        """``{"url", "options"}`` with the resolved URL, for job.json / PAI_STORE_URL."""
        return {"url": self.resolved_url, "options": dict(self.storage_options)}

    @property
    def resolved_url(self) -> str:
        if self.url:
            if "://" not in self.url:  # a bare local path
                return "file://" + os.path.abspath(os.path.expanduser(self.url))
            return self.url.rstrip("/")
        return "file://" + os.path.join(os.path.abspath(self.data_dir), "store")

    @property
    def protocol(self) -> str:
        return self.resolved_url.split("://", 1)[0].lower()

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def _fs_options(self) -> dict:
        opts = dict(self.storage_options)
        if self.is_local:
            opts.setdefault("auto_mkdir", True)
        elif self.protocol in ("s3", "s3a"):
            client_kwargs = dict(opts.pop("client_kwargs", None) or {})
            region = opts.pop("region", None) or opts.pop("region_name", None)
            if region:
                client_kwargs.setdefault("region_name", region)
            endpoint = opts.pop("endpoint_url", None)
            if endpoint:
                client_kwargs.setdefault("endpoint_url", endpoint)
            if client_kwargs:
                opts["client_kwargs"] = client_kwargs
            # Jobs write from other processes: a cached listing would hide their files.
            opts.setdefault("use_listings_cache", False)
        return opts

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            try:
                self._fs = fsspec.filesystem(self.protocol, **self._fs_options())
            except ImportError as e:
                extra = " (pip install 'pai-lab[s3]')" if self.protocol in ("s3", "s3a") else ""
                raise BackendUnavailable(
                    f"the artifact store needs support for {self.protocol}:// that is not "
                    f"installed{extra}: {e}"
                ) from None
        return self._fs

    @property
    def root(self) -> str:
        """The store root as a path of ``fs`` (no protocol)."""
        if self.is_local:
            path = self.resolved_url.split("://", 1)[1]
            return os.path.abspath(path).replace(os.sep, "/").rstrip("/") or "/"
        return self.fs._strip_protocol(self.resolved_url).rstrip("/")

    # -- workspaces -----------------------------------------------------------------

    def workspace(self, ws: str) -> WorkspaceStore:
        """A view of ``workspaces/<ws>/``; no path given to it can reach outside."""
        return WorkspaceStore(self, check_workspace_name(ws))

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix="pai-store"
            )
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in the store's threads (never on the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor(), partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class _AtomicWriter:
    """One write that either fully replaces the target or leaves everything as it was.

    Local files: write ``<dir>/.pai-tmp-<uuid>`` then ``os.replace`` (atomic on POSIX).
    Object stores: write straight to the key; the object only appears when the PUT or
    the multipart upload completes, and ``discard`` aborts the multipart upload.
    Other backends: temp key then ``mv``.
    """

    def __init__(self, ws: WorkspaceStore, rel: str, max_bytes: int | None):
        self.ws, self.rel, self.max_bytes = ws, rel, max_bytes
        self.written = 0
        self._f = None
        self._tmp: str | None = None
        self._created_dirs: list[str] = []

    def open(self) -> None:
        ws, rel = self.ws, self.rel
        if rel == "":
            raise BadRequest("cannot write to the workspace root; name a file")
        full = ws._full(rel)
        self.full = full
        with ws._errors(rel):
            if ws._fs.isdir(full):
                raise BadRequest(f"'{rel}' is a folder; cannot overwrite it with a file")
            if ws._local:
                parent = os.path.dirname(full)
                d = parent
                while not os.path.exists(d):
                    self._created_dirs.append(d)
                    d = os.path.dirname(d)
                self._tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
                for attempt in range(3):
                    os.makedirs(parent, exist_ok=True)
                    try:
                        self._f = open(self._tmp, "xb")
                        break
                    except FileNotFoundError:
                        # A failed concurrent write removed the folder it had created.
                        if attempt == 2:
                            raise
            elif ws._store.protocol in _OBJECT_STORES:
                self._f = ws._fs.open(full, "wb", block_size=ws._store.upload_part_size)
            else:
                self._tmp = posixpath.join(posixpath.dirname(full), TMP_PREFIX + uuid.uuid4().hex)
                self._f = ws._fs.open(self._tmp, "wb")

    def write(self, chunk: bytes) -> None:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise BadRequest(f"data for '{self.rel}' must be bytes, not {type(chunk).__name__}")
        self.written += len(chunk)
        if self.max_bytes is not None and self.written > self.max_bytes:
            raise PayloadTooLarge(
                f"'{self.rel}' is larger than the limit of {self.max_bytes} bytes"
            )
        with self.ws._errors(self.rel):
            self._f.write(chunk)

    def write_many(self, chunks: list) -> None:
        for chunk in chunks:
            self.write(chunk)

    def commit(self) -> None:
        with self.ws._errors(self.rel):
            f, self._f = self._f, None
            f.close()
            if self.ws._local:
                os.replace(self._tmp, self.full)
            elif self._tmp is not None:
                self.ws._fs.mv(self._tmp, self.full)
            self._tmp = None

    def abort(self) -> None:
        """Best effort, never raises: the caller is already handling the real error."""
        f, self._f = self._f, None
        try:
            if f is not None:
                if self.ws._local:
                    f.close()
                else:
                    f.discard()
                    f.closed = True  # so __del__ does not upload what was buffered
        except Exception:  # pragma: no cover - cleanup must not mask the cause
            self.ws._store.log.warning("could not discard partial write of %s", self.rel)
        try:
            if self._tmp is not None:
                if self.ws._local:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._tmp)
                elif self.ws._fs.exists(self._tmp):
                    self.ws._fs.rm(self._tmp)
        except OSError:
            pass
        for d in self._created_dirs:  # deepest first; a non-empty one stays (in use)
            with contextlib.suppress(OSError):
                os.rmdir(d)


class WorkspaceStore:
    """The files of one workspace; every path is relative to ``workspaces/<ws>/``."""

    def __init__(self, store: ArtifactStore, ws: str):
        self._store = store
        self.workspace = ws
        self._fs = store.fs
        self._local = store.is_local
        self.root = f"{store.root.rstrip('/')}/workspaces/{ws}"

    def __repr__(self) -> str:
        return f"<WorkspaceStore {self.workspace!r} at {self.url('')}>"

    # -- paths ----------------------------------------------------------------------

    def _full(self, rel: str, *, check_links: bool = True) -> str:
        rel = safe_path(rel)
        full = self.root if rel == "" else f"{self.root}/{rel}"
        if self._local and check_links:
            real_root = os.path.realpath(self.root)
            real = os.path.realpath(full)
            if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
                raise Forbidden(f"path '{rel}' resolves outside the workspace (symbolic link)")
        return full

    def url(self, rel: str = "") -> str:
        """Full fsspec URL of a workspace path (e.g. a model version's artifact URI)."""
        rel = safe_path(rel)
        full = self.root if rel == "" else f"{self.root}/{rel}"
        proto = self._store.protocol
        return f"file://{full}" if self._local else f"{proto}://{full}"

    def _rel(self, full_name: str) -> str:
        name = full_name.rstrip("/")
        if self._local:
            name = name.replace(os.sep, "/")
        if name == self.root:
            return ""
        prefix = self.root + "/"
        if name.startswith(prefix):
            return name[len(prefix) :]
        # s3fs may drop or add the protocol; compare without it.
        stripped = self._fs._strip_protocol(name)
        if stripped.startswith(prefix):
            return stripped[len(prefix) :]
        return name

    @contextlib.contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """Turn backend exceptions into typed errors that name the user's path only."""
        try:
            yield
        except PaiError:
            raise
        except FileNotFoundError:
            raise NotFound(f"'{rel}' does not exist in workspace '{self.workspace}'") from None
        except IsADirectoryError:
            raise BadRequest(f"'{rel}' is a folder, not a file") from None
        except (NotADirectoryError, FileExistsError):
            raise Conflict(f"'{rel}' conflicts with an existing file on its path") from None
        except PermissionError as e:
            # The store's own credentials or file modes, not the caller's role: say so,
            # and keep store internals (paths, bucket, endpoint) in the server log only.
            self._store.log.warning("artifact store denied access to %s: %s", rel, e)
            raise Forbidden(
                f"the artifact store denied access to '{rel}'; check its credentials"
            ) from None
        except Exception as e:
            if _is_unreachable(e):
                self._store.log.warning("artifact store unavailable (%s): %r", rel, e)
                raise BackendUnavailable(
                    f"the artifact store is unavailable ({type(e).__name__}); "
                    "see the control plane log"
                ) from None
            raise

    def _entry(self, info: dict) -> dict:
        rel = self._rel(info["name"])
        is_dir = info.get("type") == "directory"
        if self._local and info.get("islink"):  # fsspec types a listed link "other"
            is_dir = os.path.isdir(info["name"])
        return {
            "name": posixpath.basename(rel) if rel else self.workspace,
            "path": rel,
            "type": "directory" if is_dir else "file",
            "size": 0 if is_dir else int(info.get("size") or 0),
            "modified": _modified(info),
        }

    def _visible(self, info: dict, rel_dir: str) -> bool:
        rel = self._rel(info["name"])
        if rel == rel_dir or posixpath.basename(rel).startswith(TMP_PREFIX):
            return False
        if self._local and info.get("type") == "other" and not info.get("islink"):
            return False  # sockets, fifos: not artifacts, and reading a fifo would hang
        if self._local and info.get("islink"):
            real_root = os.path.realpath(self.root)
            real = os.path.realpath(info["name"])
            if not real.startswith(real_root.rstrip(os.sep) + os.sep):
                return False  # a link pointing out of the workspace is not shown
        return True

    # -- sync API (the job runner; also what the async API runs in threads) ---------

    def info_sync(self, path: str) -> dict:
        rel = safe_path(path)
        full = self._full(rel)
        with self._errors(rel):
            if rel == "":
                return {
                    "name": self.workspace,
                    "path": "",
                    "type": "directory",
                    "size": 0,
                    "modified": None,
                }
            return self._entry(self._fs.info(full))

    def exists_sync(self, path: str) -> bool:
        rel = safe_path(path)
        full = self._full(rel)
        if rel == "":
            return True
        with self._errors(rel):
            return bool(self._fs.exists(full))

    def list_sync(self, path: str = "") -> list[dict]:
        """Entries of a folder, folders first then by name. The root of a new workspace
        lists as empty; a missing folder is NotFound; a file is NotFound(not_a_directory)."""
        rel = safe_path(path)
        full = self._full(rel)
        with self._errors(rel):
            if rel == "":
                try:
                    infos = self._fs.ls(full, detail=True)
                except FileNotFoundError:
                    return []
            else:
                info = self._fs.info(full)
                if info.get("type") != "directory":
                    raise NotFound(f"'{rel}' is a file, not a folder", code="not_a_directory")
                infos = self._fs.ls(full, detail=True)
        entries = [self._entry(i) for i in infos if self._visible(i, rel)]
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"]))
        return entries

    def find_sync(self, path: str = "") -> list[str]:
        """All file paths under a folder (recursive), relative to the workspace."""
        rel = safe_path(path)
        full = self._full(rel)
        with self._errors(rel):
            try:
                found = self._fs.find(full, withdirs=False)
            except FileNotFoundError:
                found = []
        out = []
        for name in found:
            r = self._rel(name)
            if not posixpath.basename(r).startswith(TMP_PREFIX):
                out.append(r)
        return sorted(out)

    def read_bytes_sync(self, path: str) -> bytes:
        rel = safe_path(path, allow_root=False)
        full = self._full(rel)
        with self._errors(rel):
            try:
                return self._fs.cat_file(full)
            except FileNotFoundError:
                if rel and self._fs.isdir(full):
                    raise BadRequest(f"'{rel}' is a folder, not a file") from None
                raise

    def read_range_sync(self, path: str, start: int, end: int | None) -> bytes:
        """Bytes ``[start, end)`` of a file (for random access from ``pai://``)."""
        rel = safe_path(path, allow_root=False)
        full = self._full(rel)
        with self._errors(rel):
            return self._fs.cat_file(full, start=start, end=end)

    def _open_read(self, rel: str, chunk: int):
        full = self._full(rel)
        with self._errors(rel):
            if self._local:
                if os.path.isdir(full):
                    raise BadRequest(f"'{rel}' is a folder, not a file")
                return open(full, "rb")
            f = self._fs.open(full, "rb", block_size=chunk, cache_type="none")
            return f

    def _read_chunk(self, f, rel: str, chunk: int) -> bytes:
        with self._errors(rel):
            return f.read(chunk)

    def iter_read_sync(self, path: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        rel = safe_path(path, allow_root=False)
        f = self._open_read(rel, chunk)
        try:
            while True:
                data = self._read_chunk(f, rel, chunk)
                if not data:
                    return
                yield data
        finally:
            f.close()

    def write_bytes_sync(self, path: str, data: bytes) -> None:
        self.write_stream_sync(path, [data])

    def write_stream_sync(
        self, path: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> int:
        """Atomically replace ``path`` with the concatenated chunks; returns the size."""
        rel = safe_path(path, allow_root=False)
        w = _AtomicWriter(self, rel, max_bytes)
        try:
            w.open()
            for chunk in chunks:
                w.write(chunk)
            w.commit()
        except BaseException:
            w.abort()
            raise
        return w.written

    def delete_sync(self, path: str, recursive: bool = False) -> None:
        rel = safe_path(path)
        if rel == "":
            raise BadRequest("refusing to delete the workspace root")
        full = self._full(rel)
        with self._errors(rel):
            info = self._fs.info(full)
            if info.get("type") != "directory":
                self._fs.rm_file(full)
                return
            if not recursive:
                children = [i for i in self._fs.ls(full, detail=True) if self._visible(i, rel)]
                if children:
                    raise BadRequest(
                        f"folder '{rel}' is not empty; delete it recursively to remove "
                        f"its {len(children)} entries"
                    )
            if self._local and not recursive:
                os.rmdir(full)  # empty except maybe hidden temp files of running writes
            else:
                self._fs.rm(full, recursive=True)

    def copy_sync(self, src: str, dst: str) -> None:
        """Copy a file or folder inside the workspace (server-side on object stores)."""
        s, d = safe_path(src, allow_root=False), safe_path(dst, allow_root=False)
        fs, fd = self._full(s), self._full(d)
        with self._errors(s):
            info = self._fs.info(fs)
            if info.get("type") == "directory":
                self._fs.copy(fs + "/", fd + "/", recursive=True)
            else:
                self._fs.copy(fs, fd)

    def put_file_sync(self, local: str | os.PathLike, path: str) -> None:
        """Upload one local file (atomic, like ``write_stream``)."""
        rel = safe_path(path, allow_root=False)
        local = os.fspath(local)
        if not os.path.isfile(local):
            raise NotFound(f"local file '{local}' does not exist")
        if self._local or self._store.protocol not in _OBJECT_STORES:

            def chunks() -> Iterator[bytes]:
                with open(local, "rb") as f:
                    while data := f.read(_COPY_CHUNK):
                        yield data

            self.write_stream_sync(rel, chunks())
            return
        full = self._full(rel)
        with self._errors(rel):
            self._fs.put_file(local, full)

    def put_dir_sync(self, local_dir: str | os.PathLike, path: str) -> list[str]:
        """Upload every file under ``local_dir`` to folder ``path`` in one batched call.

        Returns the workspace paths written. On object stores the files go up
        concurrently (s3fs batches them), which matters at ~100 requests/s.
        """
        rel = safe_path(path)
        local_dir = os.fspath(local_dir)
        if not os.path.isdir(local_dir):
            raise NotFound(f"local folder '{local_dir}' does not exist")
        pairs: list[tuple[str, str]] = []
        for dirpath, _dirs, files in os.walk(local_dir):
            for fn in sorted(files):
                lp = os.path.join(dirpath, fn)
                sub = os.path.relpath(lp, local_dir).replace(os.sep, "/")
                target = safe_path(f"{rel}/{sub}" if rel else sub, allow_root=False)
                pairs.append((lp, target))
        if not pairs:
            return []
        if self._local or self._store.protocol not in _OBJECT_STORES:
            for lp, target in pairs:
                self.put_file_sync(lp, target)
        else:
            fulls = [self._full(t) for _, t in pairs]
            with self._errors(rel):
                self._fs.put([lp for lp, _ in pairs], fulls)
        return [t for _, t in pairs]

    def get_file_sync(self, path: str, local: str | os.PathLike) -> None:
        """Download to a local file; the local file appears complete or not at all."""
        rel = safe_path(path, allow_root=False)
        local = os.fspath(local)
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        tmp = f"{local}.{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as out:
                for data in self.iter_read_sync(rel, _COPY_CHUNK):
                    out.write(data)
            os.replace(tmp, local)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get_dir_sync(self, path: str, local_dir: str | os.PathLike) -> list[str]:
        """Download every file under folder ``path`` into ``local_dir`` (batched)."""
        rel = safe_path(path)
        local_dir = os.fspath(local_dir)
        files = self.find_sync(rel)
        pairs = []
        for f in files:
            sub = f[len(rel) + 1 :] if rel else f
            pairs.append((f, os.path.join(local_dir, *sub.split("/"))))
        if not pairs:
            return []
        if self._local:
            for f, lp in pairs:
                os.makedirs(os.path.dirname(lp), exist_ok=True)
                shutil.copyfile(self._full(f), lp)
        else:
            for _, lp in pairs:
                os.makedirs(os.path.dirname(lp), exist_ok=True)
            with self._errors(rel):
                self._fs.get([self._full(f) for f, _ in pairs], [lp for _, lp in pairs])
        return [lp for _, lp in pairs]

    # -- async API (control plane) ----------------------------------------------------

    async def info(self, path: str) -> dict:
        return await self._store.run(self.info_sync, path)

    async def exists(self, path: str) -> bool:
        return await self._store.run(self.exists_sync, path)

    async def list(self, path: str = "") -> list[dict]:
        return await self._store.run(self.list_sync, path)

    async def find(self, path: str = "") -> list[str]:
        return await self._store.run(self.find_sync, path)

    async def read_bytes(self, path: str) -> bytes:
        return await self._store.run(self.read_bytes_sync, path)

    async def read_range(self, path: str, start: int, end: int | None) -> bytes:
        return await self._store.run(self.read_range_sync, path, start, end)

    async def iter_read(self, path: str, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream a file in chunks; each read runs in a thread."""
        rel = safe_path(path, allow_root=False)
        f = await self._store.run(self._open_read, rel, chunk)
        try:
            while True:
                data = await self._store.run(self._read_chunk, f, rel, chunk)
                if not data:
                    return
                yield data
        finally:
            f.close()  # no I/O for read handles

    async def write_bytes(self, path: str, data: bytes) -> None:
        await self._store.run(self.write_bytes_sync, path, data)

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        max_bytes: int | None = None,
    ) -> int:
        """Atomically replace ``path`` with what ``chunks`` yields; returns the size.

        If the iterator raises, the task is cancelled or ``max_bytes`` is exceeded, the
        partial data is discarded and an existing file keeps its old content.
        """
        rel = safe_path(path, allow_root=False)
        w = _AtomicWriter(self, rel, max_bytes)
        try:
            await self._store.run(w.open)
            pending: list = []  # chunks handed to a thread together, without copying
            pending_len = 0
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise BadRequest(f"data for '{rel}' must be bytes, not {type(chunk).__name__}")
                if not isinstance(chunk, bytes):
                    chunk = bytes(chunk)  # the producer may reuse a mutable buffer
                pending.append(chunk)
                pending_len += len(chunk)
                if max_bytes is not None and w.written + pending_len > max_bytes:
                    raise PayloadTooLarge(f"'{rel}' is larger than the limit of {max_bytes} bytes")
                if pending_len >= _COPY_CHUNK:
                    batch, pending, pending_len = pending, [], 0
                    await self._store.run(w.write_many, batch)
            if pending:
                await self._store.run(w.write_many, pending)
            await self._store.run(w.commit)
        except BaseException:
            # Shielded: even if this task is being cancelled, the cleanup still runs.
            await asyncio.shield(self._store.run(w.abort))
            raise
        return w.written

    async def delete(self, path: str, recursive: bool = False) -> None:
        await self._store.run(self.delete_sync, path, recursive)

    async def copy(self, src: str, dst: str) -> None:
        await self._store.run(self.copy_sync, src, dst)

    async def put_file(self, local: str | os.PathLike, path: str) -> None:
        await self._store.run(self.put_file_sync, local, path)

    async def put_dir(self, local_dir: str | os.PathLike, path: str) -> list[str]:
        return await self._store.run(self.put_dir_sync, local_dir, path)

    async def get_file(self, path: str, local: str | os.PathLike) -> None:
        await self._store.run(self.get_file_sync, path, local)

    async def get_dir(self, path: str, local_dir: str | os.PathLike) -> list[str]:
        return await self._store.run(self.get_dir_sync, path, local_dir)
