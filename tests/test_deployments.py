"""Deployments end to end: a real control plane deploys registry versions with the local
backend (router + model-server processes) and clients call them over the Open Inference
Protocol with the deployment's token. Every control-plane response is checked against the
OpenAPI document."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from pai_lab.errors import BadRequest, Conflict, Forbidden, NotFound

NB = Path(__file__).parent / "notebooks"
WS = "team-d"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def _stop_routers(data_dir: Path) -> None:
    """Routers outlive the control plane by design; a test run must not leave them."""
    pids = []
    for info in data_dir.glob("deployments/*/*/router.json"):
        try:
            pid = int(json.loads(info.read_text())["pid"])
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError, KeyError):
            pass
    deadline = time.monotonic() + 20
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cp(shared_control):
    yield shared_control
    _stop_routers(shared_control.data_dir)


@pytest.fixture(scope="module")
def users(cp):
    admin = cp.client()
    admin.create_workspace(WS, "deployment tests")
    admin.create_workspace("team-x", "another team")
    tokens = {}
    for user, role in (("olga", "operator"), ("dev", "developer"), ("vic", "viewer")):
        tokens[user] = admin.create_user_token(user)
        admin.set_member(user, role, WS)
    tokens["xavier"] = admin.create_user_token("xavier")
    admin.set_member("xavier", "admin", "team-x")  # admin elsewhere, nothing here
    return tokens


@pytest.fixture
def as_user(cp, users, openapi):
    def make(user: str):
        c = cp.client(token=users[user], workspace=WS)
        c.session.hooks["response"].append(openapi.hook)
        return c

    return make


@pytest.fixture(scope="module")
def versions(cp, users) -> dict:
    """One training job; versions 1 and 2 registered from it; production -> 1."""
    dev = cp.client(token=users["dev"], workspace=WS)
    nb = json.loads((NB / "iris.ipynb").read_text())
    job = dev.wait_job(
        dev.submit_job(
            {"source": {"notebook": "iris.ipynb", "content": nb}, "outputs": ["model.joblib"]}
        )["id"]
    )
    assert job["state"] == "succeeded", job
    v1 = dev.register_model("iris", from_job=job["id"])
    # an explicit signature skips the (subprocess) inference v1 already exercised
    v2 = dev.register_model("iris", from_job=job["id"], signature=v1["signature"])
    cp.client(token=users["olga"], workspace=WS).promote("iris", 1)
    return {"job": job, "v1": v1, "v2": v2}


def infer(url: str, token: str | None, model: str = "iris", rows=ROWS) -> requests.Response:
    body = {
        "inputs": [
            {"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": sum(rows, [])}
        ]
    }
    h = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, headers=h, timeout=30)


def wait_ready(c, name: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = c.get_deployment(name)
        if d["state"] == "ready" and all(
            v["ready_replicas"] == v["replicas"] for v in d["variants"]
        ):
            return d
        time.sleep(0.3)
    raise AssertionError(f"deployment {name} never became ready: {d}")


def denied(cp) -> set[tuple[str, str, str]]:
    events = cp.client().audit(WS, limit=500, outcome="denied")["events"]
    return {(e["actor"], e["action"], e["object_id"]) for e in events}


def test_production_deployment_with_canary_split(cp, as_user, versions):
    op, dev, vic, xavier = as_user("olga"), as_user("dev"), as_user("vic"), as_user("xavier")

    with pytest.raises(Forbidden, match="deploying 'production' needs role 'operator'"):
        dev.create_deployment("iris-svc", "iris@production", 2)
    with pytest.raises(Forbidden, match="has none"):
        xavier.create_deployment("iris-svc", "iris@production", 2)

    d = op.create_deployment("iris-svc", "iris@production", replicas=2)
    token = d["token"]
    assert token.startswith("pdt_") and d["token_hint"] == token[:8] + "…"
    assert d["state"] == "ready" and d["production"] is True
    assert d["url"].startswith("http://127.0.0.1:")
    assert d["health"] == {"state": "ready", "ready": True, "ready_replicas": 2, "replicas": 2}
    [main] = d["variants"]
    assert (main["model"], main["version"], main["alias"], main["ref"]) == (
        "iris",
        1,
        "production",
        "iris@production",
    )
    assert main["replicas"] == 2 and d["traffic"] == {"main": 100}
    url = d["url"]

    r = infer(url, token)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == "1" and out["outputs"][0]["data"] == [0, 2]
    assert infer(url, None).status_code == 401
    assert infer(url, "pdt_wrong").status_code == 401
    assert infer(url, cp.token).status_code == 401  # the admin's API token is not it

    shown = vic.get_deployment("iris-svc")
    assert "token" not in shown and shown["token_hint"] == d["token_hint"]
    assert [x["name"] for x in vic.list_deployments()] == ["iris-svc"]

    # a production deployment is changed by operators only
    with pytest.raises(Forbidden, match="production deployment needs role 'operator'"):
        dev.set_canary("iris-svc", "iris:2", 10)
    with pytest.raises(Forbidden, match="has none"):
        xavier.set_canary("iris-svc", "iris:2", 10)
    with pytest.raises(Forbidden, match="has none"):
        xavier.delete_deployment("iris-svc")
    with pytest.raises(Forbidden, match="has viewer"):
        vic.delete_deployment("iris-svc")
    assert {
        ("dev", "create_deployment", "iris-svc"),
        ("xavier", "create_deployment", "iris-svc"),
        ("dev", "update_deployment", "iris-svc"),
        ("xavier", "update_deployment", "iris-svc"),
        ("xavier", "delete_deployment", "iris-svc"),
        ("vic", "delete_deployment", "iris-svc"),
    } <= denied(cp)

    with pytest.raises(BadRequest, match="canary.traffic: must be above 0 and below 100"):
        op.set_canary("iris-svc", "iris:2", 100)
    with pytest.raises(BadRequest, match="no version 7"):
        op.set_canary("iris-svc", "iris:7", 10)

    d = op.set_canary("iris-svc", "iris:2", 10)
    assert d["traffic"] == {"main": 90, "canary": 10}
    d = wait_ready(op, "iris-svc")
    assert [(v["name"], v["version"], v["ready_replicas"]) for v in d["variants"]] == [
        ("main", 1, 2),
        ("canary", 2, 1),
    ]
    n, canary = 300, 0
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {token}"
        for _ in range(n):
            r = s.post(
                f"{url}/v2/models/iris/infer",
                json={
                    "inputs": [
                        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROWS[0]}
                    ]
                },
                timeout=30,
            )
            assert r.status_code == 200, r.text
            variant = r.headers["X-Pai-Variant"]
            assert r.json()["model_version"] == {"main": "1", "canary": "2"}[variant]
            canary += variant == "canary"
    # Binomial(300, 0.1): mean 30, sd 5.2; [10, 55] is beyond 3.8 sd on each side.
    assert 10 <= canary <= 55, canary

    d = op.set_canary("iris-svc", None)
    assert d["traffic"] == {"main": 100} and len(d["variants"]) == 1
    updates = cp.client().audit(WS, action="update_deployment", outcome="ok")["events"]
    assert updates[1]["detail"]["after"] == ["iris:1=90", "iris:2=10"]
    assert updates[0]["actor"] == "olga"

    op.delete_deployment("iris-svc")
    with pytest.raises(NotFound):
        op.get_deployment("iris-svc")
    with pytest.raises(requests.ConnectionError):
        infer(url, token)
    assert not (cp.data_dir / "deployments" / WS / "iris-svc").exists()


def test_developer_deploys_a_version_and_it_survives_a_restart(cp, as_user, versions):
    dev, vic = as_user("dev"), as_user("vic")
    with pytest.raises(Forbidden, match="has viewer"):
        vic.create_deployment("iris-dev", "iris:2")
    d = dev.create_deployment("iris-dev", "iris:2")
    token, url = d["token"], d["url"]
    assert d["production"] is False and d["state"] == "ready" and d["replicas"] == 1
    with pytest.raises(Conflict, match="already exists"):
        dev.create_deployment("iris-dev", "iris:2")
    assert infer(url, token).json()["model_version"] == "2"
    # the deployment name works as the model name too
    assert infer(url, token, model="iris-dev").status_code == 200

    cp.stop()  # routers keep running while the control plane is down
    assert infer(url, token).status_code == 200
    # ... unless they die too (a reboot, say): the next start brings them back
    _stop_routers(cp.data_dir)
    with pytest.raises(requests.ConnectionError):
        infer(url, token)
    cp.start()
    dev = as_user("dev")
    d = dev.get_deployment("iris-dev")
    assert d["state"] == "ready" and d["production"] is False
    url = d["url"]  # a restarted router listens on a new port
    assert infer(url, token).json()["model_version"] == "2"
    d = dev.update_deployment("iris-dev", replicas=2)
    assert d["replicas"] == 2
    d = wait_ready(dev, "iris-dev")
    assert d["health"]["ready_replicas"] == 2
    assert infer(url, None).status_code == 401  # the update kept the token
    assert infer(url, token).status_code == 200

    # turning it into a production deployment needs an operator
    with pytest.raises(Forbidden, match="needs role 'operator'"):
        dev.update_deployment("iris-dev", model="iris@production")
    assert dev.get_deployment("iris-dev")["production"] is False
    dev.delete_deployment("iris-dev")
    assert dev.list_deployments() == []


@pytest.mark.parametrize(
    "body,message",
    [
        ({"name": "x", "model": "nope@production"}, "model: model 'nope' not found"),
        ({"name": "x", "model": "iris@staging"}, "has no alias 'staging'"),
        ({"name": "x", "model": "iris:9"}, "has no version 9"),
        ({"name": "x", "model": "iris:2", "replicas": 0}, "replicas: expected an integer"),
        (
            {"name": "x", "model": "iris:2", "replicas": 3, "min_replicas": 4, "max_replicas": 5},
            "min_replicas <= replicas",
        ),
        ({"name": "bad name", "model": "iris:2"}, "name: deployment names"),
        ({"name": "x"}, "give either 'model'"),
        ({"name": "x", "model": "iris:2", "token": "t"}, "unknown field(s): token"),
        (
            {"name": "x", "variants": [{"model": "iris:1", "traffic": 50}, {"model": "iris:2"}]},
            "adds up to 50, not 100",
        ),
        ({"name": "x", "variants": [{"model": "iris:1", "shadow": True}]}, "at least one"),
    ],
)
def test_bad_deployment_requests_are_400(cp, as_user, versions, body, message):
    dev = as_user("dev")
    with pytest.raises(BadRequest) as e:
        dev._json("POST", f"/workspaces/{WS}/deployments", body)
    assert message in e.value.message
    assert dev.list_deployments() == []
    assert not (cp.data_dir / "deployments" / WS / "x").exists()


def test_cli_deploy_commands(cp, users, versions):
    import subprocess
    import sys

    env = {**cp.cli_env(users["olga"]), "PAI_LAB_WORKSPACE": WS}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "pai_lab.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    r = cli("deploy", "create", "iris-cli", "--model", "iris@production")
    assert r.returncode == 0, r.stderr
    assert "shown once" in r.stdout and "pdt_" in r.stdout and "/v2/models/iris/infer" in r.stdout
    r = cli("deploy", "traffic", "iris-cli", "--canary", "iris:2=20")
    assert r.returncode == 0, r.stderr
    assert "main=80%, canary=20%" in r.stdout
    r = cli("deploy", "traffic", "iris-cli", "--canary", "iris:2")
    assert r.returncode == 1 and "expected MODEL:VERSION=PERCENT" in r.stderr
    r = cli("deploy", "list", "--json")
    assert [d["name"] for d in json.loads(r.stdout)] == ["iris-cli"]
    r = cli("deploy", "show", "iris-cli")
    assert "(production)" in r.stdout and "token:" in r.stdout and "health:" in r.stdout
    r = cli("deploy", "delete", "iris-cli")
    assert r.returncode == 0 and "deleted" in r.stdout
    r = cli("deploy", "show", "iris-cli")
    assert r.returncode == 1 and "not found" in r.stderr
