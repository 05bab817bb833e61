"""LocalJobBackend driven directly: real runner processes, real kernels, a real file store.

The control plane is replaced by a recording ``report`` callback; everything below it is
real (papermill, ipykernel, the artifact store, process groups, signals).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pai_lab.jobs.base import JobRun
from pai_lab.jobs.local import LocalJobBackend
from pai_lab.jobs.runner import proc_start_time
from pai_lab.jobs.spec import parse_job_spec
from pai_lab.storage import ArtifactStore

NB_DIR = Path(__file__).parent / "notebooks"
WAIT = 180  # hang guard only: no test asserts on timing


class Recorder:
    """The control plane's side of ``report``: keeps every call, and the latest fields."""

    def __init__(self):
        self.calls: list[tuple[str, int, dict]] = []

    async def __call__(self, job_id, attempt, **fields):
        self.calls.append((job_id, attempt, fields))

    def states(self, job_id, attempt=1):
        return [
            f["state"] for j, a, f in self.calls if j == job_id and a == attempt and "state" in f
        ]

    def last(self, job_id, attempt=1, key="state"):
        vals = [f[key] for j, a, f in self.calls if j == job_id and a == attempt and key in f]
        return vals[-1] if vals else None


@pytest.fixture
def store(data_dir):
    return ArtifactStore(data_dir=str(data_dir))


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
async def backend(data_dir, store, recorder):
    b = LocalJobBackend(
        store=store, report=recorder, data_dir=str(data_dir), warm_pool_size=0, cancel_grace=5
    )
    yield b
    await b.shutdown()


def notebook_body(path: Path, **extra) -> dict:
    return {"source": {"notebook": path.name, "content": json.loads(path.read_text())}, **extra}


def make_notebook(*sources: str) -> dict:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return json.loads(nbformat.writes(nb))


async def submit(backend, store, body: dict, attempt: int = 1, job_id: str | None = None):
    """What the control plane does: validate, store the input, start one attempt."""
    spec, files = parse_job_spec(body)
    job_id = job_id or uuid.uuid4().hex[:12]
    ws = store.workspace("default")
    for rel, data in files.items():
        ws.write_bytes_sync(f"jobs/{job_id}/{rel}", data)
    run = JobRun(
        id=job_id,
        workspace="default",
        owner="alice",
        attempt=attempt,
        spec=spec.to_dict(),
        profile={"slug": "cpu-small", "gpu": 0},
        env={"PAI_LAB_URL": "http://127.0.0.1:1"},
    )
    run.backend_ref = await backend.start(run)
    return run


async def wait_for_log(backend, run, text: str) -> bytes:
    for _ in range(WAIT * 10):
        it = await backend.live_logs(run, 0)
        data = b"".join([c async for c in it]) if it is not None else b""
        if text.encode() in data:
            return data
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the live logs")


def read_store(store, job_id, rel) -> bytes:
    return store.workspace("default").read_bytes_sync(f"jobs/{job_id}/{rel}")


async def test_iris_notebook_succeeds_with_outputs_metrics_env_logs(data_dir, store, recorder):
    # the warm pool path: a pre-started runner with a kernel takes the job
    backend = LocalJobBackend(
        store=store, report=recorder, data_dir=str(data_dir), warm_pool_size=1
    )
    try:
        body = notebook_body(NB_DIR / "iris.ipynb", parameters={"C": 0.5}, outputs=["model.joblib"])
        run = await submit(backend, store, body)
        assert run.backend_ref["warm"] is True
        assert await backend.wait(run, WAIT)
        assert recorder.states(run.id)[0] == "running"
        assert recorder.last(run.id) == "succeeded", recorder.calls
        metrics = recorder.last(run.id, key="metrics")
        assert [m["name"] for m in metrics] == ["accuracy"] and metrics[0]["value"] > 0.9
        env = recorder.last(run.id, key="environment")
        assert env["python"].count(".") == 2 and "papermill" in env["packages"]
        import hashlib

        stored_input = read_store(store, run.id, "input.ipynb")
        assert env["notebook_sha256"] == hashlib.sha256(stored_input).hexdigest()
        # the model is a real sklearn model
        import io

        import joblib

        model = joblib.load(io.BytesIO(read_store(store, run.id, "outputs/model.joblib")))
        assert model.C == 0.5
        logs = read_store(store, run.id, "logs.txt").decode()
        assert "C=0.5 accuracy=" in logs and "saved model.joblib" in logs
        out = json.loads(read_store(store, run.id, "output.ipynb"))
        sources = ["".join(c["source"]) for c in out["cells"]]
        assert any("C = 0.5" in s for s in sources)  # papermill's injected parameters
        assert json.loads(read_store(store, run.id, "metrics.json"))[0]["name"] == "accuracy"
        assert json.loads(read_store(store, run.id, "environment.json"))["hostname"]
        job_json = Path(run.backend_ref["run_dir"]) / "job.json"
        assert job_json.stat().st_mode & 0o777 == 0o600
        # the warm runner (and its kernel) is gone; a fresh one replaced it
        assert proc_start_time(run.backend_ref["pid"]) is None or not _alive(run.backend_ref["pid"])
    finally:
        await backend.shutdown()
    # shutdown stops idle warm runners: no kernel left behind
    assert not _kernels_under(data_dir)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _kernels_under(data_dir) -> list[int]:
    """ipykernel processes started for this data dir (by cwd)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"ipykernel" in cmd and cwd.startswith(str(data_dir)) and _alive(int(pid)):
            found.append(int(pid))
    return found


async def test_raising_notebook_fails_with_exception_and_saves_output(backend, store, recorder):
    run = await submit(backend, store, notebook_body(NB_DIR / "raises.ipynb"))
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "failed"
    assert recorder.last(run.id, key="exit_reason") == "ZeroDivisionError: division by zero"
    out = json.loads(read_store(store, run.id, "output.ipynb"))
    errors = [o for c in out["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "ZeroDivisionError"
    logs = read_store(store, run.id, "logs.txt").decode()
    assert "about to divide" in logs and "ZeroDivisionError" in logs
    assert "never reached" not in logs


async def test_max_runtime_times_out(backend, store, recorder):
    run = await submit(backend, store, notebook_body(NB_DIR / "sleeper.ipynb", max_runtime=3))
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "timed_out"
    assert "max_runtime" in recorder.last(run.id, key="exit_reason")
    # The cell never printed (its source may appear in the interrupt's traceback).
    lines = [ln.strip() for ln in read_store(store, run.id, "logs.txt").decode().splitlines()]
    assert "woke up" not in lines
    assert read_store(store, run.id, "output.ipynb")
    assert not _alive(run.backend_ref["pid"])


async def test_cancel_stops_the_process_group_and_kernel(backend, store, recorder, data_dir):
    run = await submit(backend, store, notebook_body(NB_DIR / "sleeper.ipynb"))
    live = await wait_for_log(backend, run, "sleeping")
    assert live.startswith(b"[pai-lab] job ")
    # offset continues where a reader left off
    it = await backend.live_logs(run, len(live))
    assert b"".join([c async for c in it]) == b""
    await backend.cancel(run)
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "cancelled"
    # The cell never printed (its source may appear in the interrupt's traceback).
    lines = [ln.strip() for ln in read_store(store, run.id, "logs.txt").decode().splitlines()]
    assert "woke up" not in lines
    assert read_store(store, run.id, "output.ipynb")
    assert not _alive(run.backend_ref["pid"])
    assert not _kernels_under(data_dir)


async def test_script_job_with_env_and_declared_output(backend, store, recorder):
    body = {
        "source": {"script": "train.py", "content": (NB_DIR / "train.py").read_text()},
        "env": {"C": "0.25"},
        "outputs": ["model.joblib"],
    }
    run = await submit(backend, store, body)
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "succeeded", recorder.calls
    assert "C=0.25 accuracy=" in read_store(store, run.id, "logs.txt").decode()
    assert read_store(store, run.id, "outputs/model.joblib")
    assert recorder.last(run.id, key="metrics")[0]["name"] == "accuracy"
    assert "script_sha256" in recorder.last(run.id, key="environment")


async def test_command_jobs(backend, store, recorder):
    backend.keep_work_files = False
    ok = await submit(
        backend,
        store,
        {
            "source": {
                "command": [
                    sys.executable,
                    "-c",
                    "import os, pathlib; print('job', os.environ['PAI_JOB_ID']);"
                    "pathlib.Path(os.environ['PAI_OUTPUT_DIR'], 'note.txt').write_text('hi')",
                ]
            }
        },
    )
    raising = await submit(
        backend, store, {"source": {"command": [sys.executable, "-c", "raise KeyError('nope')"]}}
    )
    code3 = await submit(
        backend, store, {"source": {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]}}
    )
    missing = await submit(backend, store, {"source": {"command": ["no-such-program-pai"]}})
    for run in (ok, raising, code3, missing):
        assert await backend.wait(run, WAIT)
    assert recorder.last(ok.id) == "succeeded"
    assert f"job {ok.id}" in read_store(store, ok.id, "logs.txt").decode()
    assert read_store(store, ok.id, "outputs/note.txt") == b"hi"
    run_dir = Path(ok.backend_ref["run_dir"])
    assert (run_dir / "logs.txt").exists() and not (run_dir / "work").exists()
    assert recorder.last(raising.id, key="exit_reason") == "KeyError: 'nope'"
    assert recorder.last(code3.id, key="exit_reason") == "exited with code 3"
    assert recorder.last(missing.id, key="exit_reason") == "command not found: no-such-program-pai"
    assert {recorder.last(r.id) for r in (raising, code3, missing)} == {"failed"}


async def test_missing_declared_output_fails_the_job(backend, store, recorder):
    run = await submit(
        backend,
        store,
        {"source": {"command": [sys.executable, "-c", "print(1)"]}, "outputs": ["model.joblib"]},
    )
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "failed"
    assert (
        recorder.last(run.id, key="exit_reason")
        == "declared output 'model.joblib' was not produced"
    )


async def test_reattach_after_control_plane_death(data_dir, store):
    first = Recorder()
    a = LocalJobBackend(store=store, report=first, data_dir=str(data_dir), warm_pool_size=0)
    body = {
        "source": {
            "notebook": "slow.ipynb",
            "content": make_notebook(
                "import time\nprint('before', flush=True)",
                "time.sleep(4)\nprint('after')",
            ),
        }
    }
    run = await submit(a, store, body)
    ref = run.backend_ref
    await wait_for_log(a, run, "before")
    await a.shutdown()  # the control plane goes away; the job keeps running
    assert _alive(ref["pid"])
    assert first.last(run.id) == "running"

    second = Recorder()
    b = LocalJobBackend(store=store, report=second, data_dir=str(data_dir), warm_pool_size=0)
    try:
        await b.reattach(run)
        assert b.is_active(run)
        assert await b.wait(run, WAIT)
        assert second.last(run.id) == "succeeded", second.calls
        logs = read_store(store, run.id, "logs.txt").decode()
        assert "before" in logs and "after" in logs
        # reattach again (e.g. another restart) reports the final state from result.json
        third = Recorder()
        c = LocalJobBackend(store=store, report=third, data_dir=str(data_dir), warm_pool_size=0)
        await c.reattach(run)
        await c.wait(run, WAIT)
        assert third.last(run.id) == "succeeded"
        await c.shutdown()
    finally:
        await b.shutdown()


async def test_reattach_reports_lost_for_vanished_or_reused_pid(backend, recorder, data_dir):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    st = proc_start_time(gone.pid)
    gone.wait()
    run = JobRun(
        id="vanished",
        workspace="default",
        owner="alice",
        attempt=1,
        spec={"source": {"command": ["x"]}},
        profile={},
        backend_ref={
            "pid": gone.pid,
            "start_time": st,
            "run_dir": str(data_dir / "runs/vanished/1"),
        },
    )
    await backend.reattach(run)
    assert recorder.last("vanished") == "lost"
    # a live pid that belongs to another process (pid reuse) is not the job
    me = JobRun(
        id="reused",
        workspace="default",
        owner="alice",
        attempt=1,
        spec={"source": {"command": ["x"]}},
        profile={},
        backend_ref={"pid": os.getpid(), "start_time": 12345, "run_dir": str(data_dir / "nope")},
    )
    await backend.reattach(me)
    assert recorder.last("reused") == "lost"
    assert "vanished" in recorder.last("reused", key="exit_reason")


async def test_killed_runner_fails_with_signal(backend, store, recorder):
    run = await submit(
        backend,
        store,
        {
            "source": {
                "command": [
                    sys.executable,
                    "-c",
                    "import time; print('up', flush=True); time.sleep(60)",
                ]
            }
        },
    )
    await wait_for_log(backend, run, "up")
    os.killpg(run.backend_ref["pgid"], signal.SIGKILL)
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "failed"
    assert recorder.last(run.id, key="exit_reason").startswith("runner exited with signal 9")


async def test_gpu_pool_accounting(monkeypatch, data_dir, store, recorder):
    monkeypatch.setenv("PAI_LAB_GPUS", "")
    none = LocalJobBackend(store=store, report=recorder, data_dir=str(data_dir), warm_pool_size=0)
    gpu_run = JobRun(
        id="g0",
        workspace="default",
        owner="alice",
        attempt=1,
        spec={"source": {"command": ["true"]}, "resources": {}},
        profile={"gpu": 1},
    )
    assert "has none" in none.unavailable_reason(gpu_run)
    await none.shutdown()

    monkeypatch.setenv("PAI_LAB_GPUS", "0")
    from pai_lab.gpus import GpuPool

    GpuPool(data_dir).acquire("job:ghost:1", 1)  # its runner is long gone
    b = LocalJobBackend(store=store, report=recorder, data_dir=str(data_dir), warm_pool_size=0)
    try:
        assert b.gpu_pool.owners() == {}  # released when the backend starts
        assert b.unavailable_reason(gpu_run) is None
        b.gpu_pool.acquire("server:bob", 1)  # a notebook server holds the only GPU
        assert b.wait_reason(gpu_run) == "waiting for a free GPU (0 of 1 free)"
        b.gpu_pool.release("server:bob")
        assert b.wait_reason(gpu_run) is None
        body = {
            "source": {
                "command": [
                    sys.executable,
                    "-c",
                    "import os; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'])",
                ]
            },
            "resources": {"gpu": 1},
        }
        run = await submit(b, store, body)
        assert run.backend_ref["gpus"] == [0]
        assert b.gpu_pool.owners() == {f"job:{run.id}:1": [0]}
        assert await b.wait(run, WAIT)
        assert "CVD=0" in read_store(store, run.id, "logs.txt").decode()
        assert b.gpu_pool.owners() == {}
    finally:
        await b.shutdown()


async def test_checkpoints_survive_a_retry(backend, store, recorder):
    script = (
        "import os, pai_lab\n"
        "d = pai_lab.checkpoint_dir()\n"
        "p = os.path.join(d, 'step.txt')\n"
        "step = int(open(p).read()) if os.path.exists(p) else 0\n"
        "print('resumed from', step, flush=True)\n"
        "open(p, 'w').write(str(step + 5))\n"
        "if step == 0:\n"
        "    raise RuntimeError('crash after checkpoint')\n"
    )
    body = {"source": {"script": "ckpt.py", "content": script}}
    first = await submit(backend, store, body)
    assert await backend.wait(first, WAIT)
    assert recorder.last(first.id) == "failed"
    assert recorder.last(first.id, key="exit_reason") == "RuntimeError: crash after checkpoint"
    second = await submit(backend, store, body, attempt=2, job_id=first.id)
    assert await backend.wait(second, WAIT)
    assert recorder.last(first.id, attempt=2) == "succeeded"
    assert "resumed from 5" in read_store(store, first.id, "logs.txt").decode()
    assert read_store(store, first.id, "checkpoints/step.txt") == b"10"


async def test_two_worker_notebook_job_prefixes_and_merges_rank_logs(backend, store, recorder):
    body = {
        "source": {
            "notebook": "dist.ipynb",
            "content": make_notebook(
                "import os\nr, w = os.environ['RANK'], os.environ['WORLD_SIZE']\n"
                "print(f'rank={r} of {w} local={os.environ[\"LOCAL_RANK\"]} '\n"
                '      f\'master={os.environ["MASTER_ADDR"]}:{int(os.environ["MASTER_PORT"]) > 0}\')',
                "open('who.txt', 'w').write(r)",
            ),
        },
        "workers": 2,
        "outputs": ["who.txt"],
    }
    run = await submit(backend, store, body)
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "succeeded", recorder.calls
    logs = read_store(store, run.id, "logs.txt").decode()
    assert "[rank 0] rank=0 of 2 local=0 master=127.0.0.1:True" in logs
    assert "[rank 1] rank=1 of 2 local=1 master=127.0.0.1:True" in logs
    assert read_store(store, run.id, "outputs/who.txt") == b"0"  # rank 0 owns outputs
    assert recorder.last(run.id, key="environment")["workers"] == 2


async def test_a_failing_rank_fails_the_job_with_its_error(backend, store, recorder):
    code = (
        "import os, time\n"
        "r = os.environ['RANK']\n"
        "print('up', r, flush=True)\n"
        "if r == '1':\n"
        "    raise ValueError('rank one broke')\n"
        "time.sleep(60)\n"
    )
    run = await submit(
        backend, store, {"source": {"script": "d.py", "content": code}, "workers": 2}
    )
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "failed"
    assert recorder.last(run.id, key="exit_reason") == "rank 1: ValueError: rank one broke"
    logs = read_store(store, run.id, "logs.txt").decode()
    assert "[rank 1] ValueError: rank one broke" in logs


@pytest.mark.torch
async def test_two_rank_gloo_all_reduce(backend, store, recorder):
    pytest.importorskip("torch")
    code = (
        "import torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1.0])\n"
        "dist.all_reduce(t)\n"
        "print('sum', t.item(), 'world', dist.get_world_size(), flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    run = await submit(
        backend, store, {"source": {"script": "ddp.py", "content": code}, "workers": 2}
    )
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "succeeded", read_store(store, run.id, "logs.txt").decode()
    logs = read_store(store, run.id, "logs.txt").decode()
    assert "[rank 0] sum 3.0 world 2" in logs and "[rank 1] sum 3.0 world 2" in logs


FAKE_SMI = """#!/bin/sh
# a stand-in for nvidia-smi on a machine without GPUs: the same CLI, fixed answers
case "$*" in
  *-L*) echo "GPU 0: Fake GPU (UUID: GPU-0)";;
  *memory.total*) echo "0, Fake GPU, 16384";;
  *utilization.gpu*) echo "0, 37, 1024";;
esac
"""


async def test_gpu_metrics_recorded_from_nvidia_smi(
    monkeypatch, tmp_path, data_dir, store, recorder
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PAI_LAB_GPUS", raising=False)  # discovered through nvidia-smi -L
    monkeypatch.setenv("PAI_GPU_SAMPLE_INTERVAL", "0.2")
    b = LocalJobBackend(store=store, report=recorder, data_dir=str(data_dir), warm_pool_size=0)
    try:
        assert b.gpu_pool.devices() == [0]
        body = {
            "source": {"command": [sys.executable, "-c", "import time; time.sleep(1.5)"]},
            "profile": "gpu",
        }
        spec, _ = parse_job_spec(body)
        run = JobRun(
            id="gpujob",
            workspace="default",
            owner="alice",
            attempt=1,
            spec=spec.to_dict(),
            profile={"slug": "gpu", "gpu": 1},
        )
        run.backend_ref = await b.start(run)
        assert await b.wait(run, WAIT)
        assert recorder.last("gpujob") == "succeeded"
        names = {m["name"]: m["value"] for m in recorder.last("gpujob", key="metrics")}
        assert names["gpu0_utilization"] == 37 and names["gpu0_memory_used_mib"] == 1024
        env = recorder.last("gpujob", key="environment")
        assert env["gpus"] == ["0"]
        assert env["gpu_devices"] == [{"index": "0", "name": "Fake GPU", "memory_total_mib": 16384}]
    finally:
        await b.shutdown()


_BACKEND_PROCESS = """
import asyncio, json, sys
from pai_lab.jobs.base import JobRun
from pai_lab.jobs.local import LocalJobBackend
from pai_lab.storage import ArtifactStore

async def main():
    data = sys.argv[1]
    async def report(*a, **k):
        pass
    b = LocalJobBackend(store=ArtifactStore(data_dir=data), report=report, data_dir=data,
                        warm_pool_size=2)
    ref = await b.start(JobRun(**json.loads(sys.argv[2])))
    print(json.dumps(ref), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _warm_runners(data_dir) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--warm" in cmd and str(data_dir).encode() in b" ".join(cmd) and _alive(int(pid)):
                out.append(int(pid))
    return out


async def test_sigkilled_control_plane_keeps_jobs_and_leaks_no_warm_kernel(data_dir, store):
    """SIGKILL the process that owns the backend: the job (taken from the warm pool)
    finishes by itself; the idle warm runner and its kernel go away."""
    nb = make_notebook("import time\nprint('before', flush=True)", "time.sleep(3)\nprint('after')")
    spec, files = parse_job_spec({"source": {"notebook": "n.ipynb", "content": nb}})
    for rel, data in files.items():
        store.workspace("default").write_bytes_sync(f"jobs/orphan/{rel}", data)
    run = {
        "id": "orphan",
        "workspace": "default",
        "owner": "alice",
        "attempt": 1,
        "spec": spec.to_dict(),
        "profile": {},
    }
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cp = subprocess.Popen(
        [sys.executable, "-c", _BACKEND_PROCESS, str(data_dir), json.dumps(run)],
        stdout=subprocess.PIPE,
        env=env,
    )
    ref = json.loads(await asyncio.get_running_loop().run_in_executor(None, cp.stdout.readline))
    assert ref["warm"] is True
    run_dir = Path(ref["run_dir"])
    for _ in range(WAIT * 10):
        if (
            b"before" in (run_dir / "logs.txt").read_bytes()
            if (run_dir / "logs.txt").exists()
            else False
        ):
            break
        await asyncio.sleep(0.1)
    idle = [p for p in _warm_runners(data_dir) if p != ref["pid"]]
    assert len(idle) == 1
    cp.kill()
    cp.wait()
    for _ in range(WAIT * 10):
        if not _alive(idle[0]) and (run_dir / "result.json").exists():
            break
        await asyncio.sleep(0.1)
    assert not _alive(idle[0])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["state"] == "succeeded"
    assert "after" in read_store(store, "orphan", "logs.txt").decode()
    for _ in range(WAIT * 10):
        if not _kernels_under(data_dir):
            break
        await asyncio.sleep(0.1)
    assert not _kernels_under(data_dir)
    # a new control plane re-attaches and reports the outcome
    rec = Recorder()
    b = LocalJobBackend(store=store, report=rec, data_dir=str(data_dir), warm_pool_size=0)
    try:
        await b.reattach(JobRun(**run, backend_ref=ref))
        assert await b.wait(JobRun(**run, backend_ref=ref), WAIT)
        assert rec.last("orphan") == "succeeded"
    finally:
        await b.shutdown()


@pytest.mark.s3
async def test_job_against_s3_store(s3_store, data_dir, recorder):
    """The runner rebuilds the S3 store from job.json (url + options) in its own process."""
    s3 = ArtifactStore.from_dict(s3_store)
    b = LocalJobBackend(store=s3, report=recorder, data_dir=str(data_dir), warm_pool_size=0)
    try:
        code = (
            "import pathlib, helper, pai_lab\n"
            "pathlib.Path('model.bin').write_bytes(helper.DATA)\n"
            "pai_lab.log_metric('size', len(helper.DATA))\n"
        )
        body = {
            "source": {"script": "s.py", "content": code},
            "files": {"helper.py": "REFUQSA9IGIneHl6Jwo="},  # DATA = b'xyz'
            "outputs": ["model.bin"],
        }
        run = await submit(b, s3, body)
        assert await b.wait(run, WAIT)
        assert recorder.last(run.id) == "succeeded", recorder.calls
        ws = s3.workspace("default")
        assert ws.read_bytes_sync(f"jobs/{run.id}/outputs/model.bin") == b"xyz"
        assert json.loads(ws.read_bytes_sync(f"jobs/{run.id}/metrics.json"))[0]["value"] == 3
        assert b"attempt succeeded" in ws.read_bytes_sync(f"jobs/{run.id}/logs.txt")
    finally:
        await b.shutdown()


async def test_cancel_while_starting_still_stops_the_job(backend, store, recorder):
    spec, _ = parse_job_spec(
        {"source": {"command": [sys.executable, "-c", "import time; time.sleep(60)"]}}
    )
    run = JobRun(
        id="early", workspace="default", owner="alice", attempt=1, spec=spec.to_dict(), profile={}
    )
    ref, _ = await asyncio.gather(backend.start(run), backend.cancel(run))
    run.backend_ref = ref
    assert await backend.wait(run, WAIT)
    assert recorder.last("early") == "cancelled"
    assert not _alive(ref["pid"])


async def test_killing_one_rank_fails_the_job_clearly(backend, store, recorder):
    code = (
        "import os, signal, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    os.kill(os.getppid(), signal.SIGKILL)  # the rank's runner dies\n"
        "time.sleep(60)\n"
    )
    run = await submit(
        backend, store, {"source": {"script": "k.py", "content": code}, "workers": 2}
    )
    assert await backend.wait(run, WAIT)
    assert recorder.last(run.id) == "failed"
    assert recorder.last(run.id, key="exit_reason") == "rank 1: killed by signal SIGKILL"
    # nothing of the job is left running (the orphaned rank-1 script included)
    ps = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True)
    left = [
        line for line in ps.stdout.splitlines() if line.split()[0] == str(run.backend_ref["pgid"])
    ]
    assert not [x for x in left if not x.split()[1].startswith("Z")], left


async def test_source_names_cannot_leave_the_work_dir(backend, store, recorder):
    runs = [
        await submit(backend, store, {"source": {"script": name, "content": "print('ok here')"}})
        for name in ("..", "../../evil.py", "sub\\\\..\\\\x.py")
    ]
    for run in runs:
        assert await backend.wait(run, WAIT)
        assert recorder.last(run.id) == "succeeded", recorder.last(run.id, key="exit_reason")
        work = Path(run.backend_ref["run_dir"]) / "work"
        assert [p.name for p in work.iterdir()] in (["input.py"], ["evil.py"], ["x.py"])


async def test_warm_runner_whose_kernel_died_starts_a_new_one(data_dir, store, recorder):
    b = LocalJobBackend(store=store, report=recorder, data_dir=str(data_dir), warm_pool_size=1)
    try:
        for _ in range(WAIT * 10):  # the idle warm runner said "ready"
            if b._warm[0].poll_ready():
                break
            await asyncio.sleep(0.1)
        (kernel,) = _kernels_under(data_dir)
        os.kill(kernel, signal.SIGKILL)
        body = {"source": {"notebook": "k.ipynb", "content": make_notebook("print(6 * 7)")}}
        run = await submit(b, store, body)
        assert run.backend_ref["warm"] is True
        assert await b.wait(run, WAIT)
        assert recorder.last(run.id) == "succeeded", recorder.last(run.id, key="exit_reason")
        logs = read_store(store, run.id, "logs.txt").decode()
        assert "42" in logs and "starting a new one" in logs
    finally:
        await b.shutdown()
