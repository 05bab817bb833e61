"""Training jobs: the spec, the backends that run them, and the runner inside a job."""
