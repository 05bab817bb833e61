"""Path checks that keep every store access inside one workspace.

A path reaches the store from an HTTP URL, a CLI argument or a notebook, so it is
hostile until proven otherwise. ``safe_path`` is purely syntactic (no I/O) and returns the
one canonical spelling of a path; the symlink check needs the filesystem and lives in
``WorkspaceStore``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ..errors import BadRequest

#: Basename prefix of in-flight atomic writes; hidden from listings and not writable by users.
TMP_PREFIX = ".pai-tmp-"

MAX_PATH_LENGTH = 1024  # S3's key limit (bytes)
MAX_SEGMENT_LENGTH = 255  # common filesystem limit (bytes)

_WORKSPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_GLOB_RE = re.compile(r"[*?\[]")


def _fully_decoded(path: str) -> str:
    """Undo percent-encoding repeatedly, so ``%252e`` is seen as ``.`` just like ``%2e``."""
    for _ in range(5):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return path


def safe_path(rel: str, *, allow_root: bool = True) -> str:
    """Return the canonical workspace-relative form of ``rel`` or raise ``BadRequest``.

    Why so strict: the same string is used as a local path and as an S3 key, and is
    often decoded once more by some proxy on the way. Anything that could mean a
    different location to any of those layers (``..``, absolute paths, NUL, backslashes,
    percent-encoded separators or dots, empty segments, fsspec wildcards ``* ? [``) is
    refused rather than "fixed".
    ``""`` (or ``"/"``-free ``"."``) is the workspace root. A trailing ``/`` is allowed so
    directory URLs work.
    """
    if not isinstance(rel, str):
        raise BadRequest(f"path must be a string, not {type(rel).__name__}")
    shown = rel if len(rel) <= 200 else rel[:200] + "..."
    if "\x00" in rel:
        raise BadRequest(f"path {shown!r} contains a NUL byte")
    if "\\" in rel:
        raise BadRequest(f"path {shown!r} contains a backslash; use '/' as separator")
    if _CONTROL_RE.search(rel):
        raise BadRequest(f"path {shown!r} contains a control character")
    if _GLOB_RE.search(rel):
        # fsspec expands these as wildcards in rm/copy/put/get: deleting "d*" would
        # delete "d/" and "dx/" too. Refused everywhere so no backend can be tricked.
        raise BadRequest(
            f"path {shown!r} contains a wildcard character ('*', '?' or '['), "
            "which file names may not use"
        )
    if rel.startswith("/"):
        raise BadRequest(f"path {shown!r} is absolute; paths are relative to the workspace")
    decoded = _fully_decoded(rel)
    if decoded != rel:
        if decoded.count("/") != rel.count("/") or "\\" in decoded or "\x00" in decoded:
            raise BadRequest(f"path {shown!r} contains a percent-encoded separator or NUL")
        if any(seg in (".", "..") for seg in decoded.split("/")) and not any(
            seg in (".", "..") for seg in rel.split("/")
        ):
            raise BadRequest(f"path {shown!r} contains a percent-encoded '.' or '..' segment")
    if len(rel.encode()) > MAX_PATH_LENGTH:
        raise BadRequest(f"path {shown!r} is longer than {MAX_PATH_LENGTH} bytes")
    body = rel[:-1] if rel.endswith("/") else rel
    if body in ("", "."):
        if not allow_root:
            raise BadRequest("path is empty; name a file or folder inside the workspace")
        return ""
    parts = body.split("/")
    out = []
    for seg in parts:
        if seg == "":
            raise BadRequest(f"path {shown!r} has an empty segment ('//')")
        if seg == "..":
            raise BadRequest(f"path {shown!r} contains '..'; it may not leave the workspace")
        if seg == ".":
            continue
        if seg.startswith(TMP_PREFIX):
            raise BadRequest(f"path {shown!r} uses the reserved name prefix {TMP_PREFIX!r}")
        if len(seg.encode()) > MAX_SEGMENT_LENGTH:
            raise BadRequest(f"path {shown!r} has a name longer than {MAX_SEGMENT_LENGTH} bytes")
        out.append(seg)
    if not out:
        if not allow_root:
            raise BadRequest("path is empty; name a file or folder inside the workspace")
        return ""
    return "/".join(out)


def check_workspace_name(ws: str) -> str:
    """Workspace names become a path segment of every key, so they are a strict slug."""
    if not isinstance(ws, str) or not _WORKSPACE_RE.match(ws) or ws in (".", ".."):
        raise BadRequest(
            f"workspace name {ws!r} is invalid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return ws
