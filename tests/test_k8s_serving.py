"""Kubernetes deployment backend: manifests, KServe canary steps, the fake API, the pod entry."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import joblib
import kubernetes_validate
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from pai_lab.errors import BadRequest, NotFound
from pai_lab.serving.kubernetes import KubernetesServingBackend, check_deployment
from pai_lab.serving.testing import http, stop_process, wait_ready
from pai_lab.storage import ArtifactStore
from tests.support.common import free_port

REPO = Path(__file__).resolve().parents[1]


def deployment(**over):
    d = {
        "workspace": "team-a",
        "name": "iris",
        "token": "s3cret",
        "variants": [
            {
                "name": "stable",
                "model": "iris",
                "version": "1",
                "model_uri": "models/iris/1",
                "framework": "sklearn",
                "traffic": 90,
                "min_replicas": 1,
                "max_replicas": 3,
            },
            {
                "name": "canary",
                "model": "iris",
                "version": "2",
                "model_uri": "models/iris/2",
                "framework": "sklearn",
                "traffic": 10,
            },
        ],
    }
    d.update(over)
    return d


def backend(**kw) -> KubernetesServingBackend:
    return KubernetesServingBackend(
        store_url="s3://bucket/pai", poll_interval=0.05, ready_timeout=30, **kw
    )


def check_isvc(obj: dict) -> None:
    """Structural check of an InferenceService (no CRD schema ships with kubernetes-validate)."""
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1" and obj["kind"] == "InferenceService"
    assert len(obj["metadata"]["name"]) <= 45
    assert set(obj["spec"]) == {"predictor"}
    pred = obj["spec"]["predictor"]
    assert set(pred) <= {
        "minReplicas",
        "maxReplicas",
        "canaryTrafficPercent",
        "containers",
        "imagePullSecrets",
        "serviceAccountName",
    }
    assert isinstance(pred["minReplicas"], int) and isinstance(pred["maxReplicas"], int)
    if "canaryTrafficPercent" in pred:
        assert (
            isinstance(pred["canaryTrafficPercent"], int)
            and 0 <= pred["canaryTrafficPercent"] <= 100
        )
    # the predictor is a PodSpec extension: its containers validate as a Pod's
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": pred["containers"]},
    }
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    assert pred["containers"][0]["name"] == "kserve-container"


def test_kserve_canary_is_two_steps_from_scratch_and_one_after():
    b = backend()
    dep = check_deployment(deployment())
    steps = b.kserve_steps(dep, current_variant=None)
    for s in steps:
        check_isvc(s)
    assert [s["metadata"]["annotations"]["pai-lab.io/variant"] for s in steps] == [
        "stable",
        "canary",
    ]
    assert "canaryTrafficPercent" not in steps[0]["spec"]["predictor"]
    assert steps[1]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    env = {e["name"]: e["value"] for e in steps[1]["spec"]["predictor"]["containers"][0]["env"]}
    assert env["PAI_MODEL_URI"] == "models/iris/2" and env["PAI_MODEL_VERSION"] == "2"
    assert env["PAI_SERVING_TOKEN"] == "s3cret"

    again = b.kserve_steps(dep, current_variant="stable")
    assert len(again) == 1 and again[0]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    # canary already live, split moved to 50/50: same revision, new percentage
    half = check_deployment(
        deployment(variants=[dict(v, traffic=50) for v in deployment()["variants"]])
    )
    moved = b.kserve_steps(half, current_variant="canary")
    assert [s["metadata"]["annotations"]["pai-lab.io/variant"] for s in moved] == ["canary"]
    # promote: canary takes all traffic -> full rollout, no canaryTrafficPercent
    promoted = check_deployment(
        deployment(variants=[dict(deployment()["variants"][1], traffic=100)])
    )
    (full,) = b.kserve_steps(promoted, current_variant="stable")
    assert "canaryTrafficPercent" not in full["spec"]["predictor"]


def test_deployment_mode_objects_validate():
    b = backend(mode="deployment")
    objs = b.deployment_objects(check_deployment(deployment()))
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == [
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "HorizontalPodAutoscaler",
        "Service",
        "Service",
        "Service",
    ]
    for o in objs:
        kubernetes_validate.validate(o, "1.37.0", strict=True)
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 3
    main_svc = next(
        o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "team-a-iris"
    )
    assert main_svc["spec"]["selector"] == {
        "pai-lab.io/deployment": "team-a-iris",
        "pai-lab.io/serves": "true",
    }


@pytest.mark.parametrize(
    "bad, match",
    [
        (
            {"variants": [{"model": "iris", "model_uri": "m", "shadow": True, "traffic": 100}]},
            "mirroring",
        ),
        ({"variants": [{"model": "iris", "model_uri": "m", "traffic": 60}]}, "add up to 100"),
        ({"variants": [{"model": "iris"}]}, "model_uri"),
        ({"name": "no spaces please"}, "name"),
        ({"variants": [{"model": "iris", "model_uri": "m", "replicas": 0}]}, "replicas"),
    ],
)
def test_bad_deployments_name_the_problem(bad, match):
    with pytest.raises(BadRequest, match=match):
        check_deployment(deployment(**bad))


def test_kserve_refuses_three_live_variants():
    three = deployment(
        variants=[
            {"name": n, "model": "iris", "model_uri": f"models/iris/{i}", "traffic": t}
            for i, (n, t) in enumerate([("a", 50), ("b", 30), ("c", 20)])
        ]
    )
    with pytest.raises(BadRequest, match="two revisions"):
        backend().kserve_steps(check_deployment(three), None)


async def test_kserve_backend_against_the_fake_api(fake_k8s):
    b = backend(api_url=fake_k8s.url)
    try:
        creating = asyncio.ensure_future(b.create(deployment()))
        # the stable revision is created first; the canary waits until it is Ready
        while not fake_k8s.find("inferenceservices", "pai-serving"):
            await asyncio.sleep(0.02)
        (isvc,) = fake_k8s.find("inferenceservices", "pai-serving")
        assert isvc["metadata"]["annotations"]["pai-lab.io/variant"] == "stable"
        assert not creating.done()
        await fake_k8s._set_condition("inferenceservices", isvc, "Ready", "Ready")
        status = await creating
        (isvc,) = fake_k8s.find("inferenceservices", "pai-serving")
        check_isvc({k: isvc[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        assert isvc["metadata"]["annotations"]["pai-lab.io/variant"] == "canary"
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
        assert status["variant"] == "canary" and status["canary_percent"] == 10

        # promote the canary: one patch, the percentage goes away
        await b.update(deployment(variants=[dict(deployment()["variants"][1], traffic=100)]))
        (isvc,) = fake_k8s.find("inferenceservices", "pai-serving")
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]

        await b.delete("iris", "team-a")
        assert fake_k8s.deletions[-1]["propagationPolicy"] == "Foreground"
        with pytest.raises(NotFound):
            await b.status("iris", "team-a")
    finally:
        await b.close()


async def test_deployment_mode_backend_against_the_fake_api(fake_k8s):
    b = backend(api_url=fake_k8s.url, mode="deployment")
    try:
        await b.create(deployment())
        assert len(fake_k8s.find("deployments", "pai-serving")) == 2
        assert len(fake_k8s.find("horizontalpodautoscalers", "pai-serving")) == 2
        # drop the canary: its objects go away
        await b.update(deployment(variants=[dict(deployment()["variants"][0], traffic=100)]))
        names = [d["metadata"]["name"] for d in fake_k8s.find("deployments", "pai-serving")]
        assert names == ["team-a-iris-stable"]
        status = await b.status("iris", "team-a")
        assert status["state"] == "starting" and status["variants"][0]["name"] == "stable"
        await b.delete("iris", "team-a")
        assert (
            fake_k8s.find("deployments", "pai-serving") == []
            and fake_k8s.find("services", "pai-serving") == []
        )
    finally:
        await b.close()


def test_model_server_pod_entry_serves_a_model_from_the_store(tmp_path):
    """The container command, run for real: fetch from the store, serve, answer OIP V2."""
    store = ArtifactStore(data_dir=str(tmp_path / "data"))
    X, y = load_iris(return_X_y=True)
    model = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), model)
    store.workspace("team-a").put_file_sync(model, "models/iris/1/model.joblib")

    c = backend().inference_service(
        check_deployment(deployment()), check_deployment(deployment())["variants"][0]
    )
    container = c["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = free_port()
    env.update(
        PAI_STORE_URL=store.to_dict()["url"],
        PAI_MODEL_DIR=str(tmp_path / "pod-model"),
        PAI_SERVING_HOST="127.0.0.1",
        PAI_SERVING_PORT=str(port),
        PATH=os.environ["PATH"],
        PYTHONPATH=str(REPO),
        HOME=str(tmp_path),
    )
    argv = [sys.executable if a == "python" else a for a in container["command"]]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, timeout=120)
        body = {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "data": [5.1, 3.5, 1.4, 0.2],
                }
            ]
        }
        status, out, _ = http("POST", f"{url}/v2/models/iris/infer", body, token="s3cret")
        assert status == 200, out
        assert out["outputs"][0]["data"][0] == 0  # setosa
        status, _, _ = http("POST", f"{url}/v2/models/iris/infer", body, token="wrong")
        assert status == 401
    finally:
        stop_process(proc)


def test_model_server_pod_entry_says_why_it_cannot_start(tmp_path):
    store = ArtifactStore(data_dir=str(tmp_path / "data"))
    env = dict(
        PAI_STORE_URL=store.to_dict()["url"],
        PAI_WORKSPACE="team-a",
        PAI_MODEL_URI="models/missing/1",
        PAI_MODEL_DIR=str(tmp_path / "m"),
        PATH=os.environ["PATH"],
        PYTHONPATH=str(REPO),
    )
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.serving.kubernetes", "serve"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 3
    assert "cannot fetch 'models/missing/1'" in r.stderr and "Traceback" not in r.stderr
