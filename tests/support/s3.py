"""A real S3 endpoint for tests: moto's server over HTTP on a free loopback port.

This is how s3fs tests itself. One server per test session (starting it costs ~1 s);
each test gets its own key prefix so tests never see each other's objects. moto serves
~100 requests/s on 2 cores: keep S3 tests small and batch where the API allows.

Fixtures:
- ``s3_server``: ``{"endpoint_url", "bucket", "storage_options"}`` (session scope).
- ``s3_store``: ``{"url": "s3://<bucket>/<unique prefix>", "options": {...}}``, the shape
  of ``ArtifactStore.to_dict()``, so ``ArtifactStore.from_dict(s3_store)`` works.
"""

from __future__ import annotations

import uuid

import pytest

from .common import free_port

S3_BUCKET = "pai-test"
# Fixed fake credentials: moto accepts anything, and fixed values keep real ones out.
S3_KEY = "pai-test-key"
S3_SECRET = "pai-test-secret"


@pytest.fixture(scope="session")
def s3_server():
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # No region_name="us-east-1" here: moto then rejects bucket creation
    # (InvalidLocationConstraint).
    options = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.mkdir(S3_BUCKET)
        yield {"endpoint_url": endpoint, "bucket": S3_BUCKET, "storage_options": options}
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server) -> dict:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    return {
        "url": f"s3://{s3_server['bucket']}/{prefix}",
        "options": {
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": dict(s3_server["storage_options"]["client_kwargs"]),
        },
    }
