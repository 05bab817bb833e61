"""Artifact storage: workspace-confined files over fsspec (``file://``, ``s3://``) and the
``pai://`` protocol for notebooks and jobs (``pai_lab.storage.paifs``)."""

from .paths import check_workspace_name, safe_path
from .store import ArtifactStore, WorkspaceStore

__all__ = ["ArtifactStore", "WorkspaceStore", "safe_path", "check_workspace_name"]
