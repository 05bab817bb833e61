"""Artifact storage: workspace-confined files over fsspec (``file://``, ``s3://``) and the
``pai://`` protocol for notebooks and jobs (``pai_lab.storage.paifs``).

``safe_path`` and ``check_workspace_name`` are pure and cheap; the store classes (which
import fsspec and traitlets) load on first use, so the client and CLI can validate paths
without paying for them.
"""

from .paths import check_workspace_name, safe_path

__all__ = ["ArtifactStore", "WorkspaceStore", "safe_path", "check_workspace_name"]


def __getattr__(name: str):
    if name in ("ArtifactStore", "WorkspaceStore"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
