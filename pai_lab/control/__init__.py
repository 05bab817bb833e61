"""The control plane: a tornado service, the single source of truth (see ARCHITECTURE.md)."""
