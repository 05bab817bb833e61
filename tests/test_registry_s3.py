"""The registry and a deployment over an S3 artifact store (moto's real S3 API over HTTP):
versions are copied server-side in the bucket, the signature is inferred from a
downloaded copy, and the model server gets a local copy of the version."""

from __future__ import annotations

import io
import json

import joblib
import pytest
import requests
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from .test_deployments import _stop_routers


@pytest.fixture
def s3_cp(control_factory, s3_store, tmp_path):
    cfg = tmp_path / "s3_config.py"
    cfg.write_text(
        f"c.ArtifactStore.url = {s3_store['url']!r}\n"
        f"c.ArtifactStore.storage_options = {s3_store['options']!r}\n"
    )
    cp = control_factory(args=[f"--config={cfg}"])
    yield cp
    _stop_routers(cp.data_dir)


def test_register_and_deploy_from_s3(s3_cp, openapi):
    c = s3_cp.client()
    c.session.hooks["response"].append(openapi.hook)
    x, y = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    c.upload("uploads/tree.joblib", buf.getvalue())

    v = c.register_model("tree", artifact="uploads/tree.joblib", description="from S3")
    assert v["artifact_uri"].startswith("s3://") and v["artifact_uri"].endswith("/models/tree/1")
    assert v["signature"]["inputs"][0]["shape"] == [-1, 4]
    assert v["lineage"]["class"].endswith("DecisionTreeClassifier")
    assert c.read_file("models/tree/1/tree.joblib") == buf.getvalue()
    assert json.loads(c.read_file("models/tree/1/model.json"))["file"] == "tree.joblib"

    d = c.create_deployment("tree-svc", "tree:1")
    assert d["state"] == "ready", d
    cache = s3_cp.data_dir / "model-cache" / "default" / "tree" / "1"
    assert (cache / "tree.joblib").read_bytes() == buf.getvalue()
    r = requests.post(
        f"{d['url']}/v2/models/tree/infer",
        json={
            "inputs": [
                {"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": [*x[0], *x[100]]}
            ]
        },
        headers={"Authorization": f"Bearer {d['token']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [int(y[0]), int(y[100])]
    c.delete_deployment("tree-svc")
    assert c.list_deployments() == []
