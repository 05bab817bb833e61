"""``%pai register / deploy / predict`` against a real control plane, job and endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pai_lab import magics
from pai_lab.magics import PaiMagicError, run_line

NB = Path(__file__).parent / "notebooks" / "iris.ipynb"


@pytest.fixture
def pai_env(control, monkeypatch):
    monkeypatch.setenv("PAI_LAB_URL", control.url)
    monkeypatch.setenv("PAI_LAB_TOKEN", control.token)
    monkeypatch.delenv("PAI_JOB_ID", raising=False)
    monkeypatch.setattr(magics, "STATE", magics._State())
    return control


def test_register_deploy_predict(pai_env, capsys):
    c = pai_env.client()
    job = c.wait_job(c.submit_file(NB, outputs=["model.joblib"])["id"])
    assert job["state"] == "succeeded"
    run_line(f"register iris --from-job {job['id']} --path outputs/model.joblib")
    out = capsys.readouterr().out
    assert "registered iris version 1 (sklearn): accuracy=" in out
    run_line("deploy iris-svc --model iris:1")
    out = capsys.readouterr().out
    assert "deployment iris-svc" in out and "token (shown once" in out
    try:
        run_line("predict iris-svc --data '[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]'")
        out = capsys.readouterr().out
        assert "[0, 2]" in out.replace(" ", "").replace(",", ", ") or json.dumps([0, 2]) in out
        with pytest.raises(PaiMagicError, match="no token for 'other'"):
            run_line("predict other --data '[[1, 2, 3, 4]]'")
    finally:
        c.delete_deployment("iris-svc")


@pytest.mark.parametrize(
    "line,message",
    [
        ("register iris", "give --from-job JOB_ID --path PATH, or --artifact PATH"),
        ("register iris --from-job jnope", "not found"),
        ("predict x --data '{oops'", "--data is not JSON"),
        ("predict x", "give --data"),
    ],
)
def test_bad_input_is_one_line(pai_env, line, message):
    with pytest.raises(PaiMagicError, match=message):
        run_line(line)
