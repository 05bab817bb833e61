"""The job runner as a program, and the notebook helpers it provides (pai_lab.tracking)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pai_lab import tracking
from pai_lab.jobs.runner import LogSink, proc_start_time
from pai_lab.storage import ArtifactStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_job_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("PAI_") or k in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(tracking, "_metrics", [])


def test_log_metric_interactive_keeps_metrics_in_memory(no_job_env, capsys):
    rec = tracking.log_metric("loss", 0.5, step=1)
    tracking.log_metric("accuracy", 1)
    assert rec["name"] == "loss" and rec["value"] == 0.5 and rec["step"] == 1
    assert [m["name"] for m in tracking.metrics()] == ["loss", "accuracy"]
    assert capsys.readouterr().out == ""  # nothing noisy in the notebook


def test_log_metric_rejects_bad_input_clearly(no_job_env):
    with pytest.raises(ValueError, match="name"):
        tracking.log_metric("", 1.0)
    with pytest.raises(TypeError, match="value must be a number, got str"):
        tracking.log_metric("acc", "high")
    with pytest.raises(TypeError, match="step must be an integer"):
        tracking.log_metric("acc", 1.0, step="x")
    assert tracking.metrics() == []


def test_log_metric_in_a_job_appends_json_lines(no_job_env, monkeypatch, tmp_path):
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("PAI_METRICS_FILE", str(path))
    tracking.log_metric("loss", float("nan"), step=3)
    tracking.log_metric("acc", 0.9)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["name"] for x in lines] == ["loss", "acc"]
    assert lines[0]["value"] == "nan" and lines[0]["step"] == 3  # JSON has no NaN
    with open(path, "a") as f:
        f.write('{"name": "torn"')  # a write cut short by a kill
    assert [m["name"] for m in tracking.metrics()] == ["loss", "acc"]
    assert math.isclose(tracking.read_metrics_file(str(path))[1]["value"], 0.9)


def test_current_job_and_checkpoint_dir(no_job_env, monkeypatch, tmp_path):
    assert tracking.current_job() is None
    monkeypatch.setenv("PAI_JOB_ID", "j1")
    monkeypatch.setenv("PAI_WORKSPACE", "team-a")
    monkeypatch.setenv("PAI_ATTEMPT", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("PAI_CHECKPOINT_DIR", str(tmp_path / "ck"))
    job = tracking.current_job()
    assert job["id"] == "j1" and job["workspace"] == "team-a"
    assert (job["attempt"], job["rank"], job["world_size"]) == (2, 1, 2)
    assert tracking.checkpoint_dir() == str(tmp_path / "ck")
    assert (tmp_path / "ck").is_dir()


def test_log_sink_prefixes_every_line(tmp_path):
    sink = LogSink(tmp_path / "logs.txt", prefix="[rank 1] ")
    sink.write("a\nb")
    sink.write("c\n")
    sink.write("d\n")
    sink.close()
    assert (tmp_path / "logs.txt").read_text() == "[rank 1] a\n[rank 1] bc\n[rank 1] d\n"


def test_proc_start_time_detects_reuse():
    assert isinstance(proc_start_time(os.getpid()), int)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert proc_start_time(p.pid) is None


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for k in [k for k in env if k.startswith("PAI_")]:
        env.pop(k)
    return env


def test_runner_usage_error():
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.jobs.runner"], capture_output=True, text=True, env=_env()
    )
    assert r.returncode == 2 and "usage:" in r.stderr


def test_cold_runner_injects_parameters_and_writes_results(tmp_path):
    """No 'parameters' cell: papermill injects one at the top; the run dir gets it all."""
    store = ArtifactStore(data_dir=str(tmp_path))
    ws = store.workspace("default")
    nb = new_notebook(
        cells=[
            new_code_cell("import pai_lab, helper\nprint('lr is', lr, helper.VALUE)"),
            new_code_cell("pai_lab.log_metric('lr', lr)\nopen('out.txt', 'w').write(str(lr))"),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    ws.write_bytes_sync("jobs/j1/input.ipynb", nbformat.writes(nb).encode())
    ws.write_bytes_sync("jobs/j1/files/helper.py", b"VALUE = 42\n")
    run_dir = tmp_path / "runs" / "j1" / "1"
    run_dir.mkdir(parents=True)
    job = {
        "id": "j1",
        "workspace": "default",
        "owner": "alice",
        "attempt": 1,
        "spec": {
            "source": {"notebook": "train.ipynb"},
            "parameters": {"lr": 0.01},
            "outputs": ["out.txt"],
        },
        "profile": {},
        "store": store.to_dict(),
        "env": {},
    }
    (run_dir / "job.json").write_text(json.dumps(job))
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.jobs.runner", str(run_dir)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["state"] == "succeeded", (run_dir / "logs.txt").read_text()
    assert result["metrics"][0]["value"] == 0.01
    assert "lr is 0.01 42" in (run_dir / "logs.txt").read_text()
    out = json.loads(ws.read_bytes_sync("jobs/j1/output.ipynb"))
    tags = [c["metadata"].get("tags", []) for c in out["cells"]]
    assert "injected-parameters" in tags[0]
    assert ws.read_bytes_sync("jobs/j1/outputs/out.txt") == b"0.01"
    assert json.loads(ws.read_bytes_sync("jobs/j1/environment.json"))["notebook_sha256"]
