"""The ``pai-lab`` command as a user runs it: real processes, real control plane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NB = Path(__file__).parent / "notebooks"


def pai(cp, *args, token=None, check=None, cwd=None):
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.cli", *args],
        capture_output=True,
        text=True,
        env=cp.cli_env(token),
        cwd=cwd,
        timeout=300,
    )
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def cp(shared_control):
    return shared_control


def test_submit_wait_list_logs_files(cp, tmp_path):
    r = pai(cp, "job", "submit", str(NB / "iris.ipynb"), "--param", "C=0.5", "--output", "model.joblib", "--wait", check=0)
    assert "queued" in r.stdout and "succeeded" in r.stdout
    assert "C=0.5 accuracy=" in r.stdout  # live log lines are shown
    jobs = json.loads(pai(cp, "job", "list", "--json", check=0).stdout)["jobs"]
    job_id = jobs[0]["id"]
    assert jobs[0]["state"] == "succeeded"
    assert "saved model.joblib" in pai(cp, "job", "logs", job_id, check=0).stdout
    ls = pai(cp, "files", "ls", f"jobs/{job_id}/outputs", check=0).stdout
    assert "model.joblib" in ls
    dest = tmp_path / "model.joblib"
    pai(cp, "files", "cp", f"pai://jobs/{job_id}/outputs/model.joblib", str(dest), check=0)
    assert dest.stat().st_size > 100
    pai(cp, "files", "cp", str(dest), "pai://models/scratch/", check=0)
    assert "model.joblib" in pai(cp, "files", "ls", "models/scratch", check=0).stdout
    show = json.loads(pai(cp, "job", "show", job_id, "--json", check=0).stdout)
    assert show["metrics"][0]["name"] == "accuracy"


def test_failed_job_exits_non_zero(cp):
    r = pai(cp, "job", "submit", str(NB / "raises.ipynb"), "--wait", check=1)
    assert "failed: ZeroDivisionError" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["job", "submit", "missing.ipynb"], "missing.ipynb: no such file"),
        (["job", "submit", str(NB / "iris.ipynb"), "--param", "C"], "expected NAME=VALUE"),
        (["job", "submit", str(NB / "iris.ipynb"), "--max-runtime", "forever"], "is not a duration"),
        (["job", "show", "jnope"], "not found"),
        (["files", "ls", "../etc"], "error:"),
        (["files", "cp", "a", "b"], "exactly one of SRC and DST"),
        (["-w", "nope", "job", "list"], None),
    ],
)
def test_bad_input_is_one_clear_line(cp, args, message):
    # -w must come after the subcommand; argparse rejects it before: exit 2 with usage.
    r = pai(cp, *args)
    assert r.returncode != 0
    if message:
        assert message in r.stderr, r.stderr
        assert r.stderr.startswith("error:")


def test_unknown_workspace_and_unreachable_server(cp):
    r = pai(cp, "job", "list", "-w", "nope", check=1)
    assert "workspace 'nope' does not exist" in r.stderr
    env = {**cp.cli_env(), "PAI_LAB_URL": "http://127.0.0.1:9/"}
    r = subprocess.run([sys.executable, "-m", "pai_lab.cli", "me"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "cannot reach the pai-lab control plane" in r.stderr
    r = pai(cp, "me", token="bad-token", check=1)
    assert "authentication required" in r.stderr
