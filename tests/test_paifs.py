"""``pai://`` in direct-store mode (how jobs use it), over file:// and S3 (moto)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from pai_lab.errors import BadRequest
from pai_lab.storage import ArtifactStore
from pai_lab.storage import paifs as paifs_mod
from pai_lab.storage.paifs import PaiFileSystem

pd = pytest.importorskip("pandas")

IRIS = b"sepal_length,species\n5.1,setosa\n7.0,versicolor\n6.3,virginica\n"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store_cfg(request, tmp_path) -> dict:
    if request.param == "file":
        return ArtifactStore(data_dir=str(tmp_path / "data")).to_dict()
    return request.getfixturevalue("s3_store")


@pytest.fixture
def env(store_cfg, monkeypatch) -> dict:
    """The environment a job gets, plus a seeded dataset; returns the job's env vars."""
    values = {
        "PAI_STORE_URL": store_cfg["url"],
        "PAI_STORE_OPTIONS": json.dumps(store_cfg["options"]),
        "PAI_WORKSPACE": "team-a",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(paifs_mod, "_default_fs", None)
    store = ArtifactStore.from_dict(store_cfg)
    store.workspace("team-a").write_bytes_sync("datasets/iris.csv", IRIS)
    store.workspace("team-b").write_bytes_sync("secret.txt", b"team b only")
    return values


@pytest.fixture
def store(store_cfg) -> ArtifactStore:
    return ArtifactStore.from_dict(store_cfg)


def test_pandas_and_fsspec_open(env, store):
    df = pd.read_csv("pai://datasets/iris.csv")
    assert list(df.columns) == ["sepal_length", "species"] and len(df) == 3

    df.assign(x=1).to_csv("pai://outputs/iris2.csv", index=False)
    assert (
        store.workspace("team-a")
        .read_bytes_sync("outputs/iris2.csv")
        .startswith(b"sepal_length,species,x\n5.1,setosa,1")
    )

    with fsspec.open("pai://datasets/iris.csv", "rt") as f:
        assert f.readline() == "sepal_length,species\n"
    with fsspec.open("pai:///notes/readme.txt", "wt") as f:  # pai:/// works too
        f.write("hello")
    assert store.workspace("team-a").read_bytes_sync("notes/readme.txt") == b"hello"


def test_listing_and_info(env):
    fs = fsspec.filesystem("pai")
    assert isinstance(fs, PaiFileSystem) and fs.mode == "direct"
    fs.pipe("pai://datasets/sub/a.bin", b"abc")
    assert fs.ls("pai://", detail=False) == ["datasets"]
    assert fs.ls("pai://datasets", detail=False) == ["datasets/sub", "datasets/iris.csv"]
    info = fs.info("pai://datasets/iris.csv")
    assert info["type"] == "file" and info["size"] == len(IRIS) and info["modified"]
    assert fs.ls("pai://datasets/iris.csv") == [info]  # fsspec convention for a file
    assert fs.isdir("pai://datasets") and fs.isfile("pai://datasets/sub/a.bin")
    assert fs.info("pai://")["type"] == "directory"
    assert fs.exists("datasets/iris.csv") and not fs.exists("datasets/nope.csv")
    assert fs.find("pai://") == ["datasets/iris.csv", "datasets/sub/a.bin"]
    assert fs.glob("pai://datasets/**/*.bin") == ["datasets/sub/a.bin"]
    assert fs.modified("datasets/iris.csv").tzinfo is not None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fs.info("pai://nope")
    with pytest.raises(FileNotFoundError):
        fs.ls("pai://nope")
    with pytest.raises(FileNotFoundError):
        pd.read_csv("pai://datasets/nope.csv")


def test_ranges_and_random_access(env):
    fs = PaiFileSystem()
    assert fs.cat_file("pai://datasets/iris.csv", 0, 12) == b"sepal_length"
    assert fs.cat_file("pai://datasets/iris.csv", -10) == IRIS[-10:]
    assert fs.cat_file("pai://datasets/iris.csv", 5, None) == IRIS[5:]
    with fs.open("pai://datasets/iris.csv", "rb", block_size=8) as f:
        f.seek(21)
        assert f.read(3) == b"5.1"
        f.seek(0)
        assert f.read() == IRIS


def test_write_rm_copy_get_put(env, store, tmp_path):
    fs = PaiFileSystem()
    ws = store.workspace("team-a")
    with fs.open("pai://models/m.bin", "wb") as f:
        f.write(b"x" * 100)
        f.write(b"y")
    assert ws.read_bytes_sync("models/m.bin") == b"x" * 100 + b"y"

    fs.cp_file("pai://models/m.bin", "pai://models/copy.bin")
    assert fs.cat("pai://models/copy.bin") == b"x" * 100 + b"y"

    fs.get("pai://datasets/iris.csv", str(tmp_path / "iris.csv"))
    assert (tmp_path / "iris.csv").read_bytes() == IRIS
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "one.txt").write_bytes(b"1")
    fs.put(str(tmp_path / "up" / "one.txt"), "pai://uploaded/one.txt")
    assert ws.read_bytes_sync("uploaded/one.txt") == b"1"

    with pytest.raises(BadRequest, match="not empty"):
        fs.rm("pai://models")
    fs.rm("pai://models/copy.bin")
    assert fs.ls("pai://models", detail=False) == ["models/m.bin"]
    fs.rm("pai://models", recursive=True)
    assert not fs.exists("pai://models")
    with pytest.raises(FileNotFoundError):
        fs.rm_file("pai://models/m.bin")
    with pytest.raises(IsADirectoryError):
        fs.open("pai://uploaded", "rb")
    with pytest.raises(FileNotFoundError):
        fs.open("pai://uploaded/nope", "rb")
    with pytest.raises(ValueError, match="'ab'"):
        fs.open("pai://x", "ab")


def test_failed_write_uploads_nothing(env, store):
    fs = PaiFileSystem()
    ws = store.workspace("team-a")
    with pytest.raises(RuntimeError):
        with fs.open("pai://datasets/iris.csv", "wb") as f:
            f.write(b"half a file")
            raise RuntimeError("training crashed")
    assert ws.read_bytes_sync("datasets/iris.csv") == IRIS
    assert ws.find_sync("") == ["datasets/iris.csv"]


@pytest.mark.parametrize(
    "evil",
    [
        "pai://../team-b/secret.txt",
        "pai://a/../../team-b/secret.txt",
        "pai://%2e%2e/team-b/secret.txt",
        "pai://a%2f..%2f..%2fteam-b%2fsecret.txt",
        "pai://a\\..\\secret.txt",
    ],
)
def test_cannot_leave_the_workspace(env, store, evil):
    fs = PaiFileSystem()
    with pytest.raises(BadRequest):
        fs.cat(evil)
    with pytest.raises(BadRequest):
        fs.pipe(evil, b"pwned")
    with pytest.raises(BadRequest):
        fs.exists(evil)
    assert store.workspace("team-b").read_bytes_sync("secret.txt") == b"team b only"
    assert store.workspace("team-b").find_sync("") == ["secret.txt"]


def test_workspace_comes_from_env_or_argument(env, monkeypatch):
    assert not PaiFileSystem().exists("pai://secret.txt")
    assert PaiFileSystem(workspace="team-b").cat("pai://secret.txt") == b"team b only"
    monkeypatch.setenv("PAI_WORKSPACE", "team-b")
    assert fsspec.filesystem("pai").cat("pai://secret.txt") == b"team b only"


def test_pai_lab_fs_is_lazy_and_shared(env):
    import pai_lab

    assert paifs_mod._default_fs is None
    fs = pai_lab.fs
    assert isinstance(fs, PaiFileSystem) and fs is pai_lab.fs is paifs_mod.fs
    assert fs.cat("pai://datasets/iris.csv") == IRIS


def test_bad_store_options(env, monkeypatch):
    monkeypatch.setenv("PAI_STORE_OPTIONS", "{not json")
    with pytest.raises(BadRequest, match="PAI_STORE_OPTIONS is not valid JSON"):
        PaiFileSystem().ls("pai://")


def test_rest_mode_is_chosen_without_a_store_url(monkeypatch):
    monkeypatch.delenv("PAI_STORE_URL", raising=False)
    monkeypatch.setenv("PAI_LAB_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("PAI_WORKSPACE", "team-a")
    fs = PaiFileSystem()
    assert fs.mode == "rest"
    assert fs._backend.client.api == "http://127.0.0.1:9/api/v1"
    assert fs._backend.workspace == "team-a"


def test_inside_a_job_process(tmp_path):
    """A fresh interpreter with only a job's environment reads and writes pai://.
    (file:// only: an S3 child costs ~10 s of imports; S3 env handling is tested above.)"""
    store = ArtifactStore(data_dir=str(tmp_path / "data"))
    store.workspace("team-a").write_bytes_sync("datasets/iris.csv", IRIS)
    code = (
        "import pai_lab.storage.paifs, pandas as pd\n"
        "df = pd.read_csv('pai://datasets/iris.csv')\n"
        "df.head(1).to_csv('pai://outputs/first.csv', index=False)\n"
        "print(len(df))\n"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_")}
    child_env.update(
        PYTHONPATH=str(ROOT),
        PAI_STORE_URL=store.to_dict()["url"],
        PAI_STORE_OPTIONS="{}",
        PAI_WORKSPACE="team-a",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
    assert store.workspace("team-a").read_bytes_sync("outputs/first.csv") == (
        b"sepal_length,species\n5.1,setosa\n"
    )


def test_entry_point_is_declared():
    """fsspec finds ``pai`` through this entry point in any interpreter once installed."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."fsspec.specs"]', 1)[1].split("\n[", 1)[0]
    target = re.search(r'^pai\s*=\s*"([^"]+)"', section, re.M).group(1)
    module, _, attr = target.partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is PaiFileSystem
    assert fsspec.get_filesystem_class("pai") is PaiFileSystem


# -- REST mode: through a real control plane ---------------------------------------------


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    """The real control plane (tests/support/control.py), without warm job runners:
    these tests run no jobs."""
    from tests.support.common import free_port
    from tests.support.control import ControlPlane

    d = tmp_path_factory.mktemp("control")
    cp = ControlPlane(d, free_port(), ["--LocalJobBackend.warm_pool_size=0"]).start()
    yield cp
    cp.stop()


@pytest.fixture
def rest_env(control_plane, monkeypatch) -> dict:
    from pai_lab.client import PaiClient

    for k in ("PAI_STORE_URL", "PAI_STORE_OPTIONS", "PAI_LAB_WORKSPACE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PAI_LAB_URL", control_plane.url)
    monkeypatch.setenv("PAI_LAB_TOKEN", control_plane.token)
    monkeypatch.setenv("PAI_WORKSPACE", "default")
    monkeypatch.setattr(paifs_mod, "_default_fs", None)
    client = PaiClient(workspace="default")
    for e in client.list_files(""):
        client.delete_file(e["path"], recursive=True)
    client.upload("datasets/iris.csv", IRIS)
    return {"client": client}


def test_rest_pandas_and_listing(rest_env):
    client = rest_env["client"]
    fs = fsspec.filesystem("pai")
    assert fs.mode == "rest"
    df = pd.read_csv("pai://datasets/iris.csv")
    assert len(df) == 3
    df.to_csv("pai://outputs/iris2.csv", index=False)
    assert client.read_file("outputs/iris2.csv").startswith(b"sepal_length,species\n5.1")

    assert fs.ls("pai://", detail=False) == ["datasets", "outputs"]
    info = fs.info("pai://datasets/iris.csv")
    assert info["type"] == "file" and info["size"] == len(IRIS)
    assert fs.ls("pai://datasets/iris.csv") == [info]
    assert fs.isdir("pai://outputs") and not fs.exists("pai://nope.csv")
    assert fs.find("pai://") == ["datasets/iris.csv", "outputs/iris2.csv"]
    with pytest.raises(FileNotFoundError):
        fs.cat("pai://nope.csv")
    with fs.open("pai://datasets/iris.csv", "rb") as f:
        f.seek(21)
        assert f.read(3) == b"5.1"
    assert fs.cat_file("pai://datasets/iris.csv", 0, 12) == b"sepal_length"


def test_rest_write_delete_and_confinement(rest_env):
    client = rest_env["client"]
    fs = PaiFileSystem()
    with pytest.raises(RuntimeError):
        with fs.open("pai://datasets/iris.csv", "wb") as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert client.read_file("datasets/iris.csv") == IRIS

    fs.pipe("pai://m/a.bin", b"a")
    fs.pipe("pai://m/b.bin", b"b")
    with pytest.raises(BadRequest, match="not empty"):
        fs.rm("pai://m")
    fs.rm("pai://m/a.bin")
    fs.rm("pai://m", recursive=True)
    assert not fs.exists("pai://m")

    for evil in ("pai://../x", "pai://a/../../x", "pai://%2e%2e/x", "pai://a\\b"):
        with pytest.raises(BadRequest):
            fs.cat(evil)
        with pytest.raises(BadRequest):
            fs.pipe(evil, b"pwned")

    client.create_workspace("team-b")
    PaiFileSystem(workspace="team-b").pipe("pai://only-b.txt", b"b")
    assert client.read_file("only-b.txt", workspace="team-b") == b"b"
    assert not fs.exists("pai://only-b.txt")


def test_rest_inside_a_real_job(rest_env, control_plane, tmp_path):
    """A script job reads and writes ``pai://`` with only what the job runner gives it
    (job token, control plane URL, workspace). Submitted by a developer member: the job
    token acts as its owner inside the job's workspace."""
    from pai_lab.client import PaiClient

    admin = rest_env["client"]
    admin.set_member("alice", "developer")
    client = PaiClient(control_plane.url, token=admin.create_user_token("alice"))
    script = tmp_path / "use_pai.py"
    script.write_text(
        "import pai_lab.storage.paifs  # registered by entry point once installed\n"
        "import pandas as pd\n"
        "df = pd.read_csv('pai://datasets/iris.csv')\n"
        "df.tail(1).to_csv('pai://outputs/from-job.csv', index=False)\n"
        "print('rows', len(df))\n"
    )
    job = client.submit_file(script, name="paifs-in-job")
    job = client.wait_job(job["id"])
    logs = "".join(client.iter_logs(job["id"]))
    assert job["state"] == "succeeded", (job, logs)
    assert "rows 3" in logs
    assert client.read_file("outputs/from-job.csv") == b"sepal_length,species\n6.3,virginica\n"
