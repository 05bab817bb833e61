"""GPU pool accounting with a fake device list, across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pai_lab.gpus import GpuPool, discover_devices, parse_device_list


def test_fake_device_list_from_env(monkeypatch, data_dir):
    monkeypatch.setenv("PAI_LAB_GPUS", "1, 0")
    assert discover_devices() == [0, 1]
    assert GpuPool(data_dir).devices() == [0, 1]
    monkeypatch.setenv("PAI_LAB_GPUS", "")
    assert GpuPool(data_dir).devices() == []


def test_bad_device_list_names_the_entry():
    with pytest.raises(ValueError, match="'x'"):
        parse_device_list("0,x")


def test_acquire_release_never_double_books(data_dir):
    pool = GpuPool(data_dir, devices=[0, 1])
    assert pool.acquire("job:a:1", 1) == [0]
    assert pool.acquire("server:alice", 1) == [1]
    assert pool.acquire("job:b:1", 1) is None
    assert pool.free() == []
    assert pool.describe_shortage(1) == "waiting for a free GPU (0 of 2 free)"
    # idempotent for an owner that already holds GPUs
    assert pool.acquire("job:a:1", 1) == [0]
    assert pool.release("job:a:1") == [0]
    assert pool.free() == [0]
    assert pool.acquire("job:b:1", 1) == [0]
    assert pool.owners() == {"job:b:1": [0], "server:alice": [1]}
    # a second pool object over the same dir (another process in real life) agrees
    other = GpuPool(data_dir, devices=[0, 1])
    assert other.owners() == pool.owners()
    assert other.release_where(lambda o: o.startswith("job:")) == ["job:b:1"]
    assert pool.free() == [0]


def test_zero_gpus_and_impossible_requests(data_dir):
    pool = GpuPool(data_dir, devices=[0])
    assert pool.acquire("job:x:1", 0) == []
    assert pool.owners() == {}
    assert pool.describe_shortage(2) == "2 GPUs requested but this machine has only 1"
    assert (
        GpuPool(data_dir, devices=[]).describe_shortage(1)
        == "this machine has no GPUs (1 requested)"
    )


def test_corrupt_pool_file_is_reset(data_dir):
    (data_dir / "gpus.json").write_text("{not json")
    pool = GpuPool(data_dir, devices=[0])
    assert pool.acquire("job:a:1", 1) == [0]
    assert json.loads((data_dir / "gpus.json").read_text()) == {"owners": {"job:a:1": [0]}}


_COMPETITOR = """
import json, sys
from pai_lab.gpus import GpuPool
pool = GpuPool(sys.argv[1], devices=[0, 1, 2])
got = []
for i in range(40):
    owner = f"{sys.argv[2]}:{i}"
    ids = pool.acquire(owner, 1)
    if ids is not None:
        got.append((owner, ids))
print(json.dumps(got))
"""


def test_processes_competing_get_disjoint_gpus(data_dir):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COMPETITOR, str(data_dir), f"p{n}"], stdout=subprocess.PIPE
        )
        for n in range(4)
    ]
    results = [json.loads(p.communicate()[0]) for p in procs]
    granted = [g for r in results for g in r]
    assert len(granted) == 3  # exactly as many owners as devices
    assert sorted(ids[0] for _, ids in granted) == [0, 1, 2]
    assert GpuPool(data_dir, devices=[0, 1, 2]).owners() == {o: ids for o, ids in granted}
