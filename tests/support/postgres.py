"""A throw-away PostgreSQL server (Debian's binaries) on a free loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

import pytest

from .common import free_port


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="session")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    root = os.geteuid() == 0
    base = tempfile.mkdtemp(prefix="pai-pg-")
    data = os.path.join(base, "data")
    port = free_port()

    def as_pg(cmd: list[str]) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if root else cmd
        subprocess.run(full, check=True, capture_output=True, timeout=120)

    if root:
        shutil.chown(base, "postgres")
    as_pg([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "pai", "--no-sync"])
    as_pg(
        [
            f"{bindir}/pg_ctl",
            "-D",
            data,
            "-l",
            os.path.join(base, "pg.log"),
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "start",
        ]
    )
    try:
        as_pg([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "pai", "pailab"])
        yield f"postgresql+psycopg2://pai@127.0.0.1:{port}/pailab"
    finally:
        as_pg([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(base, ignore_errors=True)
