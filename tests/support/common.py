"""Small fixtures every layer uses: free loopback ports and isolated data dirs."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "pai-data"
    d.mkdir()
    return d
