"""The artifact store, one suite run against file:// and against S3 (moto over HTTP)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest
from traitlets import TraitError
from traitlets.config import Config

from pai_lab.errors import (
    BackendUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
)
from pai_lab.storage import ArtifactStore, WorkspaceStore, check_workspace_name, safe_path
from pai_lab.storage.paths import TMP_PREFIX


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    if request.param == "file":
        s = ArtifactStore(data_dir=str(tmp_path / "data"))
    else:
        s = ArtifactStore.from_dict(request.getfixturevalue("s3_store"))
    yield s
    s.close()


@pytest.fixture
def ws(store) -> WorkspaceStore:
    return store.workspace("team-a")


@pytest.fixture
def local_store(tmp_path):
    s = ArtifactStore(data_dir=str(tmp_path / "data"))
    yield s
    s.close()


async def agen(*chunks, fail_after=None):
    for i, c in enumerate(chunks):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("client went away")
        yield c
        await asyncio.sleep(0)


async def collect(aiter) -> bytes:
    return b"".join([c async for c in aiter])


def names(entries):
    return [e["name"] for e in entries]


# -- basics -------------------------------------------------------------------------


async def test_new_workspace_root_lists_empty(ws):
    assert await ws.list("") == []
    assert await ws.exists("")
    info = await ws.info("")
    assert info["type"] == "directory" and info["path"] == ""


async def test_write_read_list_info(ws):
    await ws.write_bytes("datasets/iris.csv", b"a,b\n1,2\n")
    await ws.write_bytes("datasets/more/x.bin", b"\x00\x01")
    await ws.write_bytes("top.txt", b"hello")

    root = await ws.list("")
    assert names(root) == ["datasets", "top.txt"]  # folders first
    assert root[0]["type"] == "directory" and root[0]["path"] == "datasets"
    top = root[1]
    assert top == {
        "name": "top.txt",
        "path": "top.txt",
        "type": "file",
        "size": 5,
        "modified": top["modified"],
    }
    modified = dt.datetime.fromisoformat(top["modified"])
    assert modified.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - modified).total_seconds()) < 3600

    sub = await ws.list("datasets/")
    assert [(e["name"], e["path"], e["type"]) for e in sub] == [
        ("more", "datasets/more", "directory"),
        ("iris.csv", "datasets/iris.csv", "file"),
    ]
    assert sub[1]["size"] == 8

    info = await ws.info("datasets/iris.csv")
    assert info["type"] == "file" and info["size"] == 8 and info["name"] == "iris.csv"
    assert (await ws.info("datasets"))["type"] == "directory"
    assert await ws.read_bytes("datasets/iris.csv") == b"a,b\n1,2\n"
    assert await ws.read_bytes("./datasets/more/x.bin") == b"\x00\x01"
    assert await ws.exists("datasets/iris.csv")
    assert not await ws.exists("datasets/nope.csv")
    assert await ws.find("") == ["datasets/iris.csv", "datasets/more/x.bin", "top.txt"]
    assert await ws.find("datasets/more") == ["datasets/more/x.bin"]

    # overwrite replaces
    await ws.write_bytes("top.txt", b"bye")
    assert await ws.read_bytes("top.txt") == b"bye"


async def test_errors_name_the_path(ws):
    await ws.write_bytes("d/f.txt", b"x")
    with pytest.raises(NotFound, match="'missing' does not exist"):
        await ws.list("missing")
    with pytest.raises(NotFound, match="'d/f.txt' is a file") as e:
        await ws.list("d/f.txt")
    assert e.value.code == "not_a_directory" and e.value.status == 404
    with pytest.raises(NotFound, match="'d/nope'"):
        await ws.info("d/nope")
    with pytest.raises(NotFound, match="'d/nope'"):
        await ws.read_bytes("d/nope")
    with pytest.raises(BadRequest, match="'d' is a folder"):
        await ws.read_bytes("d")
    with pytest.raises(BadRequest, match="'d' is a folder"):
        await ws.write_bytes("d", b"x")
    with pytest.raises(BadRequest):
        await ws.write_bytes("", b"x")
    with pytest.raises(NotFound):
        await ws.delete("d/nope")
    # the messages never reveal where the store lives
    with pytest.raises(NotFound) as e:
        await ws.info("zzz")
    assert ws.root not in e.value.message


async def test_iter_read_streams_in_chunks(ws):
    data = os.urandom(300_000)
    await ws.write_bytes("blob.bin", data)
    chunks = [c async for c in ws.iter_read("blob.bin", chunk=100_000)]
    assert [len(c) for c in chunks] == [100_000, 100_000, 100_000]
    assert b"".join(chunks) == data
    with pytest.raises(NotFound):
        [c async for c in ws.iter_read("nope.bin")]
    # stopping early is fine and leaves nothing open that breaks later writes
    it = ws.iter_read("blob.bin", chunk=1000)
    assert len(await it.__anext__()) == 1000
    await it.aclose()
    await ws.write_bytes("blob.bin", b"new")
    assert await ws.read_bytes("blob.bin") == b"new"
    assert await ws.read_range("blob.bin", 1, 3) == b"ew"


async def test_write_stream(ws):
    size = await ws.write_stream("s/out.bin", agen(b"ab", bytearray(b"cd"), b"", b"ef"))
    assert size == 6
    assert await ws.read_bytes("s/out.bin") == b"abcdef"

    async def reusing_one_buffer():
        buf = bytearray(4)
        for b in (b"1111", b"2222", b"3333"):
            buf[:] = b
            yield buf

    await ws.write_stream("s/reused.bin", reusing_one_buffer())
    assert await ws.read_bytes("s/reused.bin") == b"111122223333"


# -- atomic writes --------------------------------------------------------------------


async def test_write_stream_failure_keeps_old_content(ws):
    await ws.write_bytes("models/m.bin", b"old")
    with pytest.raises(RuntimeError, match="client went away"):
        await ws.write_stream("models/m.bin", agen(b"new1", b"new2", b"new3", fail_after=2))
    assert await ws.read_bytes("models/m.bin") == b"old"
    assert names(await ws.list("models")) == ["m.bin"]  # no temp file left behind

    with pytest.raises(RuntimeError):
        await ws.write_stream("fresh/dir/n.bin", agen(b"x", b"y", fail_after=1))
    assert not await ws.exists("fresh/dir/n.bin")
    assert names(await ws.list("")) == ["models"]  # the new folders are gone too
    assert await ws.find("") == ["models/m.bin"]


async def test_write_stream_failure_after_large_upload_started(store, ws):
    """Past one part, s3fs has begun a multipart upload: a failure must abort it, and a
    success must complete it."""
    store.upload_part_size = 5 << 20  # S3's minimum part size
    bucket = store.root.split("/", 1)[0]
    key_prefix = ws.root.split("/", 1)[-1]

    def uploads_in_progress() -> list:
        if store.protocol != "s3":
            return []
        found = store.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
        return [u["Key"] for u in found if u["Key"].startswith(key_prefix)]

    await ws.write_bytes("big.bin", b"old")
    part = os.urandom(3 << 20)
    seen_in_flight = []

    async def failing():
        yield part
        yield part
        seen_in_flight.extend(await asyncio.to_thread(uploads_in_progress))
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await ws.write_stream("big.bin", failing())
    if store.protocol == "s3":
        assert seen_in_flight == [f"{key_prefix}/big.bin"]  # the test did reach multipart
    assert await ws.read_bytes("big.bin") == b"old"
    assert names(await ws.list("")) == ["big.bin"]
    assert await asyncio.to_thread(uploads_in_progress) == []

    assert await ws.write_stream("big.bin", agen(part, part, part)) == 9 << 20
    assert await ws.read_bytes("big.bin") == part * 3


async def test_write_stream_cancelled_keeps_old_content(ws):
    await ws.write_bytes("c.bin", b"old")
    started = asyncio.Event()
    never = asyncio.Event()

    async def slow():
        yield b"partial"
        started.set()
        await never.wait()
        yield b"never"

    task = asyncio.ensure_future(ws.write_stream("c.bin", slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ws.read_bytes("c.bin") == b"old"
    assert names(await ws.list("")) == ["c.bin"]


async def test_write_stream_max_bytes(ws):
    with pytest.raises(PayloadTooLarge, match="'up.bin' is larger than the limit of 5 bytes"):
        await ws.write_stream("up.bin", agen(b"abc", b"def"), max_bytes=5)
    assert not await ws.exists("up.bin")
    assert await ws.write_stream("up.bin", agen(b"abc", b"de"), max_bytes=5) == 5


async def test_write_stream_rejects_non_bytes(ws):
    with pytest.raises(BadRequest, match="must be bytes"):
        await ws.write_stream("t.txt", agen(b"ok", "text"))
    assert not await ws.exists("t.txt")


def test_sync_twins(ws, tmp_path):
    ws.write_bytes_sync("a/b.txt", b"hi")
    assert ws.read_bytes_sync("a/b.txt") == b"hi"
    assert ws.exists_sync("a/b.txt")
    assert names(ws.list_sync("a")) == ["b.txt"]
    assert ws.info_sync("a/b.txt")["size"] == 2
    assert b"".join(ws.iter_read_sync("a/b.txt", 1)) == b"hi"

    def bad():
        yield b"half"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        ws.write_stream_sync("a/b.txt", bad())
    assert ws.read_bytes_sync("a/b.txt") == b"hi"
    assert ws.find_sync("") == ["a/b.txt"]
    ws.delete_sync("a", recursive=True)
    assert ws.list_sync("") == []


# -- delete -----------------------------------------------------------------------------


async def test_delete(ws):
    await ws.write_bytes("d/one.txt", b"1")
    await ws.write_bytes("d/sub/two.txt", b"2")
    await ws.write_bytes("keep.txt", b"k")
    await ws.write_bytes("d2.txt", b"sibling with the same prefix")
    await ws.write_bytes("dx/three.txt", b"3")

    await ws.delete("d/one.txt")
    assert not await ws.exists("d/one.txt")

    with pytest.raises(BadRequest, match="folder 'd' is not empty"):
        await ws.delete("d")
    assert await ws.read_bytes("d/sub/two.txt") == b"2"

    await ws.delete("d", recursive=True)
    assert names(await ws.list("")) == ["dx", "d2.txt", "keep.txt"]
    assert await ws.find("d") == []
    assert await ws.find("") == ["d2.txt", "dx/three.txt", "keep.txt"]
    with pytest.raises(NotFound):
        await ws.delete("d")
    with pytest.raises(BadRequest, match="workspace root"):
        await ws.delete("", recursive=True)
    assert await ws.exists("keep.txt")


async def test_delete_empty_local_folder(local_store):
    ws = local_store.workspace("w")
    os.makedirs(os.path.join(ws.root, "empty"))
    assert names(await ws.list("")) == ["empty"]
    await ws.delete("empty")
    assert await ws.list("") == []


# -- files and folders to and from local disk ---------------------------------------------


async def test_put_get_file_and_dirs(ws, tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"A")
    (src / "nested" / "b.txt").write_bytes(b"B")
    (src / "nested" / "c.bin").write_bytes(b"C" * 1000)

    written = await ws.put_dir(src, "jobs/j1/files")
    assert written == [
        "jobs/j1/files/a.txt",
        "jobs/j1/files/nested/b.txt",
        "jobs/j1/files/nested/c.bin",
    ]
    assert await ws.find("jobs/j1") == written

    await ws.put_file(src / "a.txt", "single/a.txt")
    await ws.get_file("single/a.txt", tmp_path / "out" / "a.txt")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"A"

    got = await ws.get_dir("jobs/j1/files", tmp_path / "back")
    assert sorted(os.path.relpath(p, tmp_path / "back") for p in got) == [
        "a.txt",
        os.path.join("nested", "b.txt"),
        os.path.join("nested", "c.bin"),
    ]
    assert (tmp_path / "back" / "nested" / "c.bin").read_bytes() == b"C" * 1000

    await ws.copy("jobs/j1/files/nested", "models/m/1")
    assert await ws.find("models") == ["models/m/1/b.txt", "models/m/1/c.bin"]

    with pytest.raises(NotFound):
        await ws.put_file(tmp_path / "nope", "x")
    with pytest.raises(NotFound):
        await ws.get_file("nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    assert [p for p in os.listdir(tmp_path) if TMP_PREFIX in p] == []


# -- confinement ----------------------------------------------------------------------------

EVIL_PATHS = [
    "../x",
    "..",
    "a/../../x",
    "a/..",
    "/etc/passwd",
    "//etc/passwd",
    "a%2f..%2f..",
    "a%2F..%2F..%2Fteam-b",
    "%2e%2e/x",
    "%2E%2E/x",
    ".%2e/x",
    "%252e%252e/x",
    "a%5cb",
    "a%5C..%5Cb",
    "a%00b",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a//b",
    "a/\n/b",
    f"a/{TMP_PREFIX}123",
    "d*",
    "q?.txt",
    "a/[ab]",
    "x" * 300,
]


@pytest.mark.parametrize("evil", EVIL_PATHS)
async def test_traversal_attempts_are_rejected(store, evil):
    a, b = store.workspace("team-a"), store.workspace("team-b")
    await b.write_bytes("secret.txt", b"b's secret")
    for op in (
        a.list(evil),
        a.info(evil),
        a.exists(evil),
        a.read_bytes(evil),
        a.write_bytes(evil, b"pwned"),
        a.delete(evil, recursive=True),
        a.write_stream(evil, agen(b"pwned")),
        a.find(evil),
    ):
        with pytest.raises(BadRequest) as e:
            await op
        assert e.value.status == 400 and e.value.message
    with pytest.raises(BadRequest):
        [c async for c in a.iter_read(evil)]
    with pytest.raises(BadRequest):
        a.write_bytes_sync(evil, b"pwned")
    assert await b.read_bytes("secret.txt") == b"b's secret"
    assert await b.find("") == ["secret.txt"]
    assert await a.find("") == []


@pytest.mark.parametrize(
    "rel,canonical",
    [
        ("", ""),
        (".", ""),
        ("./", ""),
        ("a", "a"),
        ("a/b/", "a/b"),
        ("./a/./b", "a/b"),
        ("100%.txt", "100%.txt"),
        ("a%20b.txt", "a%20b.txt"),
        ("..foo", "..foo"),
        ("foo..", "foo.."),
        ("数据/iris.csv", "数据/iris.csv"),
    ],
)
def test_safe_path_accepts(rel, canonical):
    assert safe_path(rel) == canonical


def test_safe_path_messages():
    with pytest.raises(BadRequest, match=r"'\.\./x' contains '\.\.'"):
        safe_path("../x")
    with pytest.raises(BadRequest, match="absolute"):
        safe_path("/etc/passwd")
    with pytest.raises(BadRequest, match="percent-encoded separator"):
        safe_path("a%2f..%2f..")
    with pytest.raises(BadRequest, match=r"percent-encoded '\.' or '\.\.'"):
        safe_path("%2e%2e/x")
    with pytest.raises(BadRequest, match="NUL"):
        safe_path("a\x00b")
    with pytest.raises(BadRequest, match="backslash"):
        safe_path("a\\b")
    with pytest.raises(BadRequest, match="empty segment"):
        safe_path("a//b")
    with pytest.raises(BadRequest, match="wildcard"):
        safe_path("d*")
    with pytest.raises(BadRequest, match="must be a string"):
        safe_path(None)
    with pytest.raises(BadRequest, match="empty"):
        safe_path("", allow_root=False)


def test_symlinks_escaping_the_workspace_are_forbidden(local_store, tmp_path):
    ws = local_store.workspace("team-a")
    ws.write_bytes_sync("inside/ok.txt", b"ok")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    os.symlink(outside, os.path.join(ws.root, "escape"))
    os.symlink(outside / "secret.txt", os.path.join(ws.root, "secret-link"))
    os.symlink(os.path.join(ws.root, "inside"), os.path.join(ws.root, "alias"))

    for op, args in [
        (ws.read_bytes_sync, ("escape/secret.txt",)),
        (ws.read_bytes_sync, ("secret-link",)),
        (ws.list_sync, ("escape",)),
        (ws.info_sync, ("escape/secret.txt",)),
        (ws.write_bytes_sync, ("escape/new.txt", b"x")),
        (ws.write_bytes_sync, ("secret-link", b"overwritten")),
        (ws.delete_sync, ("escape/secret.txt",)),
        (ws.get_dir_sync, ("escape", tmp_path / "stolen")),
    ]:
        with pytest.raises(Forbidden, match="outside the workspace") as e:
            op(*args)
        assert e.value.status == 403
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    # links out of the workspace are not listed; a link inside it works
    assert names(ws.list_sync("")) == ["alias", "inside"]
    assert ws.read_bytes_sync("alias/ok.txt") == b"ok"


async def test_workspace_isolation(store):
    a, b = store.workspace("team-a"), store.workspace("team-b")
    await a.write_bytes("datasets/a.csv", b"a")
    await b.write_bytes("datasets/b.csv", b"b")
    assert await a.find("") == ["datasets/a.csv"]
    assert await b.find("") == ["datasets/b.csv"]
    assert names(await b.list("datasets")) == ["b.csv"]
    with pytest.raises(NotFound):
        await b.read_bytes("datasets/a.csv")
    # a workspace named like a prefix of another sees nothing of it
    assert await store.workspace("team").list("") == []
    assert a.url("datasets/a.csv").endswith("/workspaces/team-a/datasets/a.csv")


@pytest.mark.parametrize("bad", ["", "..", ".", "a/b", "../team-b", "-x", "a b", "a\x00", "x" * 64])
def test_workspace_names(local_store, bad):
    with pytest.raises(BadRequest, match="workspace name"):
        local_store.workspace(bad)
    assert check_workspace_name("team_a.1-x") == "team_a.1-x"


async def test_parent_is_a_file_conflicts(local_store):
    ws = local_store.workspace("w")
    await ws.write_bytes("a.txt", b"x")
    with pytest.raises(Conflict, match="'a.txt/b.txt'"):
        await ws.write_bytes("a.txt/b.txt", b"y")
    assert await ws.read_bytes("a.txt") == b"x"


# -- the event loop stays free --------------------------------------------------------------


async def test_async_calls_do_not_block_the_loop(ws):
    """A ticker task must get turns while store calls are in flight. If a call ran its
    blocking work on the loop, the awaiting coroutine would never yield and the ticker
    would not advance during it."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    payload = os.urandom(4 << 20)
    try:
        for call in (
            lambda: ws.write_bytes("big/blob.bin", payload),
            lambda: ws.read_bytes("big/blob.bin"),
            lambda: ws.list("big"),
            lambda: ws.info("big/blob.bin"),
            lambda: collect(ws.iter_read("big/blob.bin", chunk=1 << 20)),
            lambda: ws.write_stream("big/s.bin", agen(payload[: 2 << 20], payload[2 << 20 :])),
            lambda: ws.delete("big", recursive=True),
        ):
            before = ticks
            await call()
            assert ticks > before
    finally:
        stop.set()
        await t


# -- configuration ----------------------------------------------------------------------


def test_default_url_and_config(tmp_path):
    s = ArtifactStore(data_dir=str(tmp_path))
    assert s.resolved_url == f"file://{tmp_path}/store"
    assert s.to_dict() == {"url": f"file://{tmp_path}/store", "options": {}}
    s.workspace("w").write_bytes_sync("x.txt", b"1")
    assert (tmp_path / "store" / "workspaces" / "w" / "x.txt").read_bytes() == b"1"

    again = ArtifactStore.from_dict(s.to_dict())
    assert again.workspace("w").read_bytes_sync("x.txt") == b"1"

    c = Config()
    c.ArtifactStore.url = str(tmp_path / "elsewhere")
    s2 = ArtifactStore(config=c)
    assert s2.resolved_url == f"file://{tmp_path}/elsewhere"
    with pytest.raises(TraitError, match="unknown storage protocol 'nosuch'"):
        ArtifactStore(url="nosuch://x")
    with pytest.raises(TraitError, match="name a bucket"):
        ArtifactStore(url="s3://")
    for trait in ("url", "storage_options", "data_dir", "max_workers", "upload_part_size"):
        assert s.traits()[trait].help


@pytest.mark.s3
def test_s3_options_are_normalised(s3_server):
    s = ArtifactStore(
        url=f"s3://{s3_server['bucket']}/cfg",
        storage_options={
            "key": "pai-test-key",
            "secret": "pai-test-secret",
            "endpoint_url": s3_server["endpoint_url"],
            "region": "us-west-2",
        },
    )
    opts = s._fs_options()
    assert opts["client_kwargs"] == {
        "endpoint_url": s3_server["endpoint_url"],
        "region_name": "us-west-2",
    }
    assert opts["use_listings_cache"] is False
    ws = s.workspace("w")
    ws.write_bytes_sync("x.txt", b"over s3")
    assert ws.read_bytes_sync("x.txt") == b"over s3"
    assert ws.url("x.txt") == f"s3://{s3_server['bucket']}/cfg/workspaces/w/x.txt"


@pytest.mark.s3
async def test_unreachable_s3_is_503_without_internals():
    from tests.support.common import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    s = ArtifactStore(
        url="s3://hidden-bucket/hidden-prefix",
        storage_options={
            "key": "k",
            "secret": "s",
            "endpoint_url": endpoint,
            "config_kwargs": {"retries": {"max_attempts": 1}},
        },
    )
    s.fs.retries = 1  # s3fs's own retry loop; keeps the test short
    ws = s.workspace("w")
    for call in (ws.list(""), ws.read_bytes("x"), ws.write_bytes("x", b"1")):
        with pytest.raises(BackendUnavailable) as e:
            await call
        assert e.value.status == 503
        assert "hidden" not in e.value.message and endpoint not in e.value.message
    s.close()
