"""Binder configuration and the example notebook, checked statically and by execution.

Installing binder/requirements.txt into a fresh venv is too slow for the unit suite; CI
runs ``binder/check.sh`` for that. Here: the files say what repo2docker needs, and the
notebook runs for real (papermill, a real kernel) against a file:// artifact store.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import joblib
import nbformat
import papermill

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"
NOTEBOOK = REPO / "examples" / "iris.ipynb"


def requirement_lines() -> list[str]:
    text = (BINDER / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_requirements_install_this_repository():
    lines = requirement_lines()
    # "." (or "-e ." / ".[extras]") makes repo2docker copy the repo and install pai-lab from it
    assert any(line.split("[")[0] in (".", "-e .") for line in lines), lines
    assert not any(line.startswith(("pai-lab", "pai_lab")) for line in lines), (
        "must not come from an index"
    )


def test_scripts_are_executable_bash_with_valid_syntax():
    for name in ("postBuild", "start", "check.sh"):
        path = BINDER / name
        assert path.stat().st_mode & stat.S_IXUSR, f"{name} is not executable"
        assert path.read_text().startswith("#!/bin/bash"), name
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
    assert 'exec "$@"' in (BINDER / "start").read_text()  # repo2docker's start contract
    assert (BINDER / "runtime.txt").read_text().strip().startswith("python-3.")


def test_notebook_is_valid_and_has_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "C = " in tagged[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit it without outputs"
    )


def test_notebook_runs_in_a_real_kernel_in_direct_store_mode(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("PAI_STORE_URL", f"file://{store}")
    monkeypatch.setenv("PAI_WORKSPACE", "default")
    monkeypatch.delenv("PAI_LAB_URL", raising=False)
    monkeypatch.delenv("PAI_METRICS_FILE", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"C": 0.5},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    saved = store / "workspaces" / "default" / "models" / "scratch" / "model.joblib"
    model = joblib.load(saved)
    assert model.C == 0.5  # the parameter reached the kernel
    text = "".join(
        o.get("text", "")
        for c in nbformat.read(out, as_version=4).cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "test accuracy: 0.9" in text or "test accuracy: 1.0" in text
    assert "setosa" in text or "versicolor" in text or "virginica" in text
