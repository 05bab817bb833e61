"""JupyterHub integration (profiles, spawners, authenticator, culler, control-plane service)."""
