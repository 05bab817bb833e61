"""The model registry end to end: a real control plane, a real iris training job, the real
store. Every client response is checked against the OpenAPI document."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests

from pai_lab.errors import BadRequest, Forbidden, GateFailed, NotFound

NB = Path(__file__).parent / "notebooks"
WS = "team-r"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def cp(shared_control):
    return shared_control


@pytest.fixture(scope="module")
def users(cp):
    """Tokens of an operator, a developer, a viewer and an outsider of workspace team-r."""
    admin = cp.client()
    admin.create_workspace(WS, "registry tests")
    tokens = {}
    for user, role in (
        ("olga", "operator"),
        ("dev", "developer"),
        ("vic", "viewer"),
        ("out", None),
    ):
        tokens[user] = admin.create_user_token(user)
        if role:
            admin.set_member(user, role, WS)
    return tokens


@pytest.fixture
def as_user(cp, users, openapi):
    def make(user: str | None = None):
        c = cp.client(token=users[user] if user else None, workspace=WS)
        c.session.hooks["response"].append(openapi.hook)
        return c

    return make


@pytest.fixture(scope="module")
def trained(cp, users) -> dict:
    """One iris training job (by the developer) reused by every test of the module."""
    c = cp.client(token=users["dev"], workspace=WS)
    nb = json.loads((NB / "iris.ipynb").read_text())
    job = c.submit_job(
        {"source": {"notebook": "iris.ipynb", "content": nb}, "outputs": ["model.joblib"]}
    )
    job = c.wait_job(job["id"])
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def v1(cp, users, trained) -> dict:
    c = cp.client(token=users["dev"], workspace=WS)
    return c.register_model(
        "iris", from_job=trained["id"], path="outputs/model.joblib", framework="sklearn"
    )


def audit(cp, **filters) -> list[dict]:
    return cp.client(workspace=WS).audit(WS, limit=200, **filters)["events"]


def test_register_from_job_copies_files_with_metrics_lineage_signature(as_user, trained, v1):
    c = as_user("dev")
    acc = {m["name"]: m["value"] for m in trained["metrics"]}["accuracy"]
    assert v1["model"] == "iris" and v1["version"] == 1 and v1["framework"] == "sklearn"
    assert v1["metrics"] == {"accuracy": acc}
    assert v1["source_job"] == trained["id"] and v1["created_by"] == "dev"
    assert v1["lineage"]["notebook_sha256"] == trained["environment"]["notebook_sha256"]
    assert v1["lineage"]["environment"]["python"] == trained["environment"]["python"]
    assert v1["lineage"]["class"].endswith("LogisticRegression")
    assert v1["signature"]["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert {o["name"] for o in v1["signature"]["outputs"]} == {"predict", "predict_proba"}
    assert v1["path"] == "models/iris/1/" and v1["artifact_uri"].endswith("/models/iris/1")

    names = {e["name"] for e in c.list_files("models/iris/1")}
    assert names == {"model.joblib", "model.json"}
    meta = json.loads(c.read_file("models/iris/1/model.json"))
    assert meta["signature"] == v1["signature"] and meta["metrics"] == v1["metrics"]
    assert meta["lineage"]["source_job"] == trained["id"]
    assert meta["env"]["notebook_sha256"] == trained["environment"]["notebook_sha256"]
    model = joblib.load(io.BytesIO(c.read_file("models/iris/1/model.joblib")))
    assert list(model.predict(ROWS)) == [0, 2, 1]

    m = c.get_model("iris")
    assert m["latest_version"] == 1 and m["aliases"] == {} and m["gate"] == ""
    assert [v["version"] for v in m["versions"]] == [1]
    assert c.get_version("iris", 1) == {**v1}
    assert [m["name"] for m in c.list_models()] == ["iris"]


def test_register_is_audited(cp, v1):
    events = audit(cp, action="register_model")
    assert any(e["object_id"] == "iris:1" and e["actor"] == "dev" for e in events)


def test_versions_are_immutable_copies(cp, as_user, trained, v1):
    c = as_user("dev")
    sig = {"inputs": [{"name": "x", "datatype": "fp32", "shape": [-1, 4]}]}
    v2 = c.register_model("iris", from_job=trained["id"], description="second", signature=sig)
    assert v2["version"] == 2 and v2["description"] == "second"
    # a given signature is kept as given (normalised), not inferred
    assert v2["signature"] == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [],
    }
    # the job's output may go away; the version keeps its own copy
    src = f"jobs/{trained['id']}/outputs/model.joblib"
    data = c.read_file(src)
    c.delete_file(src)
    try:
        assert c.read_file("models/iris/2/model.joblib") == data
        with pytest.raises(BadRequest, match="does not exist"):
            c.register_model("iris", from_job=trained["id"])
    finally:
        c.upload(src, data)
    # no route changes a version
    h = {"Authorization": f"Bearer {cp.token}"}
    url = f"{cp.url}api/v1/workspaces/{WS}/models/iris/versions/2"
    for method in ("PUT", "PATCH", "DELETE"):
        r = requests.request(method, url, headers=h, data="{}")
        assert r.status_code == 405 and "error" in r.json(), (method, r.text)
    assert c.get_version("iris", 2)["metrics"] == v1["metrics"]


def test_register_from_a_workspace_artifact_has_no_metrics(as_user, v1):
    c = as_user("dev")
    c.upload("uploads/m.joblib", c.read_file("models/iris/1/model.joblib"))
    v = c.register_model("iris-up", artifact="pai://uploads/m.joblib", tags={"team": "r"})
    assert v["version"] == 1 and v["metrics"] == {} and v["source_job"] is None
    assert v["lineage"]["source"] == "uploads/m.joblib" and v["tags"] == {"team": "r"}
    assert v["signature"]["inputs"][0]["shape"] == [-1, 4]


@pytest.mark.parametrize(
    "body,message",
    [
        ({}, "give either 'from_job'"),
        ({"from_job": "JOB", "artifact": "x.joblib"}, "give either 'from_job'"),
        ({"from_job": "jnope"}, "from_job: job 'jnope' not found"),
        ({"from_job": "JOB", "path": "../../x.joblib"}, ".."),
        ({"from_job": "JOB", "path": "outputs/missing.joblib"}, "does not exist"),
        ({"from_job": "JOB", "framework": "torch"}, "a torch model file ends with"),
        ({"from_job": "JOB", "framework": "tensorflow"}, "framework: expected one of"),
        ({"from_job": "JOB", "metrics": {"accuracy": 1.0}}, "unknown field(s): metrics"),
        ({"from_job": "JOB", "path": "input.ipynb"}, "cannot tell it from 'input.ipynb'"),
        ({"artifact": "jobs/JOB/input.ipynb", "framework": "sklearn"}, "ends with"),
        ({"from_job": "JOB", "signature": {"inputs": [{"name": "x"}]}}, "signature.inputs[0]"),
        ({"from_job": "JOB", "tags": "x"}, "tags: expected"),
    ],
)
def test_bad_registrations_are_400_and_create_nothing(as_user, trained, v1, body, message):
    c = as_user("dev")
    body = json.loads(json.dumps(body).replace("JOB", trained["id"]))
    before = c.get_model("iris")["version_count"]
    with pytest.raises(BadRequest) as e:
        c._json("POST", f"/workspaces/{WS}/models/iris/versions", body)
    assert message in e.value.message
    assert c.get_model("iris")["version_count"] == before
    folders = {e["name"] for e in c.list_files("models/iris")}
    assert folders == {str(n) for n in range(1, before + 1)}


def test_bad_names(as_user, trained):
    c = as_user("dev")
    with pytest.raises(BadRequest, match="model names are"):
        c.register_model("bad name", from_job=trained["id"])
    with pytest.raises(NotFound, match="model 'nope' not found"):
        c.get_model("nope")
    with pytest.raises(NotFound, match="no version 9"):
        c.get_version("iris", 9)
    with pytest.raises(BadRequest, match="version: expected a version number"):
        c.get_version("iris", "x")


def test_gate_refuses_and_passes_and_every_move_is_audited(cp, as_user, v1):
    op = as_user("olga")
    with pytest.raises(BadRequest, match="function calls are not allowed"):
        op.set_gate("iris", "__import__('os').system('id') > 0")
    assert op.get_model("iris")["gate"] == ""

    acc = v1["metrics"]["accuracy"]
    op.set_gate("iris", "accuracy >= 0.999 and latency_p99_ms < 20")
    with pytest.raises(GateFailed) as e:
        op.promote("iris", 1)
    assert "accuracy >= 0.999 [FAILED" in e.value.message
    assert "latency_p99_ms=missing" in e.value.message
    verdict = e.value.gate
    assert verdict["passed"] is False
    assert [c["passed"] for c in verdict["checks"]] == [False, False]
    assert verdict["checks"][0]["values"] == {"accuracy": acc}
    assert "production" not in op.get_model("iris")["aliases"]
    refused = audit(cp, action="set_alias", outcome="refused")
    assert refused[0]["actor"] == "olga" and refused[0]["object_id"] == "iris@production"
    assert refused[0]["detail"]["to_version"] == 1 and refused[0]["detail"]["from_version"] is None
    assert refused[0]["detail"]["gate"]["passed"] is False

    op.set_gate("iris", "accuracy >= 0.9")
    m = op.promote("iris", 1)
    assert m["aliases"]["production"] == 1 and m["gate_result"]["passed"] is True
    assert "accuracy >= 0.9 [ok: accuracy=" in m["gate_result"]["summary"]
    m = op.set_alias("iris", "production", "2")
    assert m["aliases"]["production"] == 2
    moves = [e for e in audit(cp, action="set_alias", outcome="ok") if e["actor"] == "olga"]
    assert [(e["detail"]["from_version"], e["detail"]["to_version"]) for e in moves[:2]] == [
        (1, 2),
        (None, 1),
    ]
    assert all(e["time"] for e in moves)
    assert op.get_version("iris", 2)["aliases"] == ["production"]
    gate_changes = audit(cp, action="update_model")
    assert gate_changes[0]["detail"]["changes"]["gate"][1] == "accuracy >= 0.9"


def test_roles_on_the_registry_and_denials_audited(cp, as_user, trained, v1):
    dev, viewer, outsider = as_user("dev"), as_user("vic"), as_user("out")
    assert viewer.get_model("iris")["name"] == "iris"
    with pytest.raises(Forbidden, match="needs role 'developer', has viewer"):
        viewer.register_model("iris", from_job=trained["id"])
    with pytest.raises(Forbidden):
        viewer.set_alias("iris", "staging", 1)
    m = dev.set_alias("iris", "staging", 1)
    assert m["aliases"]["staging"] == 1
    with pytest.raises(Forbidden, match="needs role 'operator', has developer"):
        dev.set_alias("iris", "production", 1)
    with pytest.raises(Forbidden, match="needs role 'operator'"):
        dev.set_gate("iris", "")
    dev.update_model("iris", description="iris classifier")  # descriptions are developers'
    with pytest.raises(Forbidden, match="has none"):
        outsider.get_model("iris")
    with pytest.raises(Forbidden, match="has none"):
        outsider.set_alias("iris", "production", 1)
    assert dev.delete_alias("iris", "staging")["aliases"].get("staging") is None
    with pytest.raises(NotFound, match="no alias 'staging'"):
        dev.delete_alias("iris", "staging")
    denied = {(e["actor"], e["action"], e["object_id"]) for e in audit(cp, outcome="denied")}
    assert ("vic", "register_model", "iris") in denied
    assert ("dev", "set_alias", "iris@production") in denied
    assert ("dev", "update_model", "iris") in denied
    assert ("out", "read_model", "iris") in denied
    assert ("out", "set_alias", "iris@production") in denied


def test_cli_model_commands(cp, users, v1):
    env = {**cp.cli_env(users["olga"]), "PAI_LAB_WORKSPACE": WS}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "pai_lab.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    r = cli("model", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert "iris" in {m["name"] for m in json.loads(r.stdout)}
    r = cli("model", "show", "iris")
    assert r.returncode == 0 and "gate:" in r.stdout and "VERSION" in r.stdout
    r = cli("model", "gate", "iris", "accuracy > 1")
    assert r.returncode == 0 and "accuracy > 1" in r.stdout
    r = cli("model", "promote", "iris", "1", "--alias", "candidate")
    assert r.returncode == 1
    assert "refused" in r.stderr and "accuracy > 1 [FAILED: accuracy=" in r.stderr
    r = cli("model", "gate", "iris", "accuracy >= 0.9")
    r = cli("model", "promote", "iris", "1", "--alias", "candidate")
    assert r.returncode == 0, r.stderr
    assert "iris@candidate -> version 1" in r.stdout and "passed" in r.stdout
    r = cli("model", "register", "iris", "--from-job", "jnope")
    assert r.returncode == 1 and "from_job: job 'jnope' not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_batch_scoring_runs_as_a_job(cp, as_user, v1):
    dev = as_user("dev")
    dev.promote("iris", 1, alias="scoring")
    csv = "id,a,b,c,d\n" + "".join(f"{i},{','.join(map(str, r))}\n" for i, r in enumerate(ROWS))
    dev.upload("datasets/x.csv", csv.encode())
    job = dev.score(
        "iris@scoring",
        "pai://datasets/x.csv",
        "pai://scores/x.csv",
        proba=True,
        columns=["a", "b", "c", "d"],
    )
    assert job["spec"]["source"]["command"][:3] == ["python", "-m", "pai_lab.control.scoring"]
    assert "--version" in job["spec"]["source"]["command"]
    job = dev.wait_job(job["id"])
    assert job["state"] == "succeeded", "".join(dev.iter_logs(job["id"]))
    import pandas as pd

    out = pd.read_csv(io.BytesIO(dev.read_file("scores/x.csv")))
    assert list(out["prediction"]) == [0, 2, 1]
    assert list(out["id"]) == [0, 1, 2]
    assert np.allclose(out[["proba_0", "proba_1", "proba_2"]].sum(axis=1), 1.0)
    assert {m["name"]: m["value"] for m in job["metrics"]}["rows_scored"] == 3

    # an extra numeric column makes the features ambiguous: a clear failure, no output
    bad = dev.wait_job(dev.score("iris:1", "datasets/x.csv", "scores/y.csv")["id"])
    assert bad["state"] == "failed"
    assert "name the features with --columns" in "".join(dev.iter_logs(bad["id"]))
    with pytest.raises(NotFound):
        dev.read_file("scores/y.csv")
