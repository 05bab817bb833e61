"""``pai-lab k8s render`` / ``z2jh-values``: every manifest validates, RBAC is least
privilege, NetworkPolicies isolate, bad values get one clear line, the CLI works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from pai_lab.errors import BadRequest
from pai_lab.k8s import objects as o
from pai_lab.k8s.render import CONFIG_FILE, render_objects
from pai_lab.k8s.values import (
    SCHEMA,
    effective_profiles,
    iter_options,
    load_values,
    values_from_yaml,
)
from pai_lab.k8s.z2jh import chart_schema_errors, hub_extra_config, z2jh_values

REPO = Path(__file__).resolve().parents[1]
PER_WORKSPACE = {
    "jobs": {"namespace": "pai-{workspace}"},
    "workspaces": [
        {"name": "team-a", "gpu": 4, "cpu": "32", "memory": "128Gi"},
        {"name": "team-b", "pods": 50},
    ],
    "database": {"podLabels": {"app.kubernetes.io/name": "postgresql"}},
    "serving": {"backend": "deployment"},
}
VARIANTS = [
    {},
    PER_WORKSPACE,
    {"networkPolicy": {"enabled": False}, "images": {"pullSecrets": ["regcred"]}},
]


def by_kind(objs, kind):
    return [x for x in objs if x["kind"] == kind]


@pytest.mark.parametrize("given", VARIANTS, ids=["defaults", "per-workspace", "no-netpol"])
def test_every_rendered_object_validates_strictly(given):
    values = load_values(given)
    objs = render_objects(values)
    assert objs[0]["kind"] == "Namespace"
    for obj in objs:
        kubernetes_validate.validate(obj, values["kubernetesVersion"], strict=True)
    names = [(x["kind"], x["metadata"].get("namespace"), x["metadata"]["name"]) for x in objs]
    assert len(names) == len(set(names)), "duplicate objects"


def test_the_cli_validator_accepts_the_whole_stream(tmp_path):
    """The same check with the kubernetes-validate command, on the YAML `render` prints."""
    out = tmp_path / "pai-lab.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.k8s.commands", "k8s", "render", "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) > 8
    r = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.37.0", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INFO" in r.stdout and "ERROR" not in r.stdout


def test_rbac_is_least_privilege():
    values = load_values(PER_WORKSPACE | {"serving": {"backend": "kserve"}})
    objs = render_objects(values)
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    allowed = {
        ("batch", "jobs"),
        ("kubeflow.org", "pytorchjobs"),
        ("", "pods"),
        ("", "pods/log"),
        ("serving.kserve.io", "inferenceservices"),
    }
    roles = by_kind(objs, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {
        "pai-team-a",
        "pai-team-b",
        "pai-serving",
    }
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    assert (group, res) in allowed, (role["metadata"]["namespace"], group, res)
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if rule["resources"] in (["pods"], ["pods/log"]):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}
    jobs_role = next(r for r in roles if r["metadata"]["namespace"] == "pai-team-a")
    assert not any("inferenceservices" in r["resources"] for r in jobs_role["rules"])
    serving_role = next(r for r in roles if r["metadata"]["namespace"] == "pai-serving")
    assert not any("jobs" in r["resources"] for r in serving_role["rules"])
    for binding in by_kind(objs, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {
            "kind": "ServiceAccount",
            "name": "pai-lab-control",
            "namespace": "pai-lab",
        }
    # job pods get a service account with no token at all
    job_sas = [s for s in by_kind(objs, "ServiceAccount") if s["metadata"]["name"] == "pai-job"]
    assert len(job_sas) == 2 and all(s["automountServiceAccountToken"] is False for s in job_sas)


def test_deployment_mode_rbac_swaps_inferenceservices_for_deployments():
    rules = o.control_plane_rules("deployment", jobs=False, serving=True)
    resources = {r for rule in rules for r in rule["resources"]}
    assert "inferenceservices" not in resources
    assert {"deployments", "services", "horizontalpodautoscalers"} <= resources
    assert "secrets" not in resources


def test_control_plane_deployment_reads_secrets_by_reference_only():
    objs = render_objects(load_values({}))
    (dep,) = by_kind(objs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PAI_LAB_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "pai-lab-db",
        "key": "url",
    }
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.pai.apiToken",
    }
    assert c["envFrom"] == [{"secretRef": {"name": "pai-lab-store"}}]
    assert spec["serviceAccountName"] == "pai-lab-control"
    assert (
        c["securityContext"]["runAsNonRoot"]
        and not c["securityContext"]["allowPrivilegeEscalation"]
    )
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # never two queue owners
    # Z2JH's hub NetworkPolicy lets it call the hub API (token and OAuth checks)
    assert (
        dep["spec"]["template"]["metadata"]["labels"]["hub.jupyter.org/network-access-hub"]
        == "true"
    )
    text = yaml.safe_dump_all(objs)
    assert "password" not in text.lower() and "AWS_SECRET_ACCESS_KEY:" not in text


def test_control_plane_config_is_python_that_configures_the_backends(monkeypatch):
    values = load_values(
        {"storage": {"url": "s3://models/pai", "endpointUrl": "http://minio.minio:9000"}}
    )
    (cm,) = [x for x in render_objects(values) if x["kind"] == "ConfigMap"]
    code = cm["data"][CONFIG_FILE]
    monkeypatch.setenv("PAI_LAB_DB_URL", "postgresql://pai@db/pai")
    c = Config()
    exec(compile(code, CONFIG_FILE, "exec"), {"c": c})
    assert c.PaiControl.job_backend == "kubernetes"
    assert c.PaiControl.db_url == "postgresql://pai@db/pai"
    assert c.ArtifactStore.url == "s3://models/pai"
    assert c.ArtifactStore.storage_options == {
        "client_kwargs": {"endpoint_url": "http://minio.minio:9000"}
    }
    assert c.KubernetesJobBackend.namespace == "pai-jobs"
    assert (
        c.PaiControl.public_url
        == "http://pai-lab-control.pai-lab.svc.cluster.local:8090/services/pai/"
    )
    assert c.PaiControl.base_url == "/services/pai/" and c.PaiControl.ip == "0.0.0.0"
    gpu = next(p for p in c.Profiles.profiles if p["gpu"])
    assert gpu["image"] == values["images"]["singleuserGpu"]
    # and the traits it sets exist on our backends
    from pai_lab.jobs.kubernetes import KubernetesJobBackend
    from pai_lab.serving.kubernetes import KubernetesServingBackend

    for cls, section in (
        (KubernetesJobBackend, "KubernetesJobBackend"),
        (KubernetesServingBackend, "KubernetesServingBackend"),
    ):
        for key in c[section]:
            assert cls.class_traits(config=True).get(key) is not None, (
                f"{section}.{key} is not a trait"
            )


def test_network_policies_isolate():
    objs = render_objects(load_values(PER_WORKSPACE))
    pols = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p
        for p in by_kind(objs, "NetworkPolicy")
    }
    control = pols[("pai-lab", "pai-lab-control")]["spec"]
    assert control["policyTypes"] == ["Ingress"]
    (rule,) = control["ingress"]
    peers = [p.get("podSelector", {}).get("matchLabels") for p in rule["from"]]
    assert o.Z2JH_HUB in peers and o.Z2JH_PROXY in peers and o.Z2JH_SINGLEUSER in peers
    job_peers = [p for p in rule["from"] if "namespaceSelector" in p]
    assert {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in job_peers
    } == {"pai-team-a", "pai-team-b"}
    assert rule["ports"] == [{"port": 8090, "protocol": "TCP"}]
    # the database admits the control plane only
    db = pols[("pai-lab", "pai-lab-database")]["spec"]
    assert db["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgresql"}
    assert db["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": o.selector("control-plane")}}],
            "ports": [{"port": 5432, "protocol": "TCP"}],
        }
    ]
    # job pods admit only job pods of their own namespace (torch rendezvous)
    jobs = pols[("pai-team-a", "pai-lab-jobs")]["spec"]
    assert jobs["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": jobs["podSelector"]["matchLabels"]}}]}
    ]
    # user pods: Z2JH's singleuser policy stays on and gets one egress hole, to the control plane
    z = z2jh_values(load_values(PER_WORKSPACE))
    assert z["singleuser"]["networkPolicy"]["enabled"] is True
    (egress,) = z["singleuser"]["networkPolicy"]["egress"]
    assert egress["to"][0]["podSelector"]["matchLabels"] == o.selector("control-plane")
    assert egress["ports"] == [{"port": 8090, "protocol": "TCP"}]


def test_workspace_quotas():
    objs = render_objects(load_values(PER_WORKSPACE))
    quotas = {q["metadata"]["namespace"]: q["spec"]["hard"] for q in by_kind(objs, "ResourceQuota")}
    assert quotas == {
        "pai-team-a": {
            "requests.cpu": "32",
            "requests.memory": "128Gi",
            "requests.nvidia.com/gpu": "4",
        },
        "pai-team-b": {"pods": "50"},
    }


@pytest.mark.parametrize(
    "given, message",
    [
        (
            {"storage": {"endpont": "x"}},
            "unknown key 'storage.endpont' (did you mean storage.endpointUrl?)",
        ),
        (
            {"controlPlane": {"port": "8090"}},
            "controlPlane.port must be an integer, got str '8090'",
        ),
        ({"controlPlane": {"replicas": True}}, "controlPlane.replicas must be an integer"),
        ({"serving": {"backend": "seldon"}}, "serving.backend must be one of kserve, deployment"),
        ({"auth": {"type": "generic", "clientId": "x"}}, "auth.authorizeUrl is required"),
        ({"storage": {"url": "file:///data"}}, "file:// cannot be shared"),
        ({"workspaces": [{"name": "a", "gpu": 1}]}, "set jobs.namespace to e.g. 'pai-{workspace}'"),
        ({"namespace": "Not_DNS"}, "namespace 'Not_DNS' is not a valid DNS label"),
        ({"singleuser": {"profiles": [{"slug": "x"}]}}, "singleuser.profiles[0]"),
        ("/no/such/values.yaml", "cannot read '/no/such/values.yaml'"),
    ],
)
def test_bad_values_get_one_clear_message(given, message):
    with pytest.raises(BadRequest) as e:
        load_values(given)
    assert message in e.value.message


def test_values_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "v.yaml"
    bad.write_text("storage: [unclosed\n")
    with pytest.raises(BadRequest, match=f"values: {bad} is not valid YAML"):
        load_values(str(bad))
    with pytest.raises(BadRequest, match="top level must be a mapping"):
        values_from_yaml("- a list\n")


def test_cli_reports_bad_values_without_a_traceback(tmp_path):
    bad = tmp_path / "v.yaml"
    bad.write_text("storage:\n  endpont: http://minio:9000\n")
    r = subprocess.run(
        [sys.executable, "-m", "pai_lab.k8s.commands", "k8s", "render", "--values", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.strip()
        == "pai-lab k8s render: values: unknown key 'storage.endpont' (did you mean storage.endpointUrl?)"
    )


def test_cli_z2jh_values_writes_a_file_and_prints_its_path(tmp_path):
    values = tmp_path / "my-values.yaml"
    values.write_text(
        "auth:\n  type: github\n  clientId: abc\n  allowedOrganizations: [my-org]\ningress:\n  clusterIssuer: letsencrypt\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pai_lab.k8s.commands",
            "k8s",
            "z2jh-values",
            "--values",
            str(values),
            "-o",
            str(tmp_path / "z.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / "z.yaml"
    z = yaml.safe_load(path.read_text())
    assert z["hub"]["config"]["GitHubOAuthenticator"]["allowed_organizations"] == ["my-org"]
    assert z["hub"]["extraEnv"] == [
        {
            "name": "OAUTH_CLIENT_SECRET",
            "valueFrom": {"secretKeyRef": {"name": "pai-lab-oauth", "key": "client-secret"}},
        }
    ]
    assert z["ingress"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert z["ingress"]["tls"] == [{"hosts": ["pai.example.org"], "secretName": "pai-lab-tls"}]


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"auth": {"type": "github", "clientId": "x"}, "hub": {"adminUsers": ["ops"]}},
        {
            "auth": {
                "type": "generic",
                "clientId": "x",
                "authorizeUrl": "https://idp/a",
                "tokenUrl": "https://idp/t",
                "userdataUrl": "https://idp/u",
            },
            "ingress": {"enabled": False},
            "images": {"pullSecrets": ["regcred"]},
            "singleuser": {"storageClass": None},
        },
    ],
    ids=["native", "github", "generic"],
)
def test_z2jh_values_match_the_charts_schema(given):
    z = z2jh_values(load_values(given))
    assert chart_schema_errors(z) == []
    assert z["hub"]["image"] == {"name": "ghcr.io/pai-lab/hub", "tag": "0.1.0"}
    assert (
        z["hub"]["services"]["pai"]["url"]
        == "http://pai-lab-control.pai-lab.svc.cluster.local:8090"
    )
    # a typo would be caught by the same check
    z["hub"]["extraConfg"] = {}
    assert any("extraConfg" in p for p in chart_schema_errors(z))


def test_z2jh_extra_config_sets_up_kubespawner_from_the_values():
    values = load_values({"singleuser": {"storageCapacity": "50Gi", "storageClass": "ssd"}})
    z = z2jh_values(values)
    c = Config()
    c.Profiles.profiles = z["hub"]["config"]["Profiles"][
        "profiles"
    ]  # what the chart does with hub.config
    c.JupyterHub.services = [{"name": "pai", "url": z["hub"]["services"]["pai"]["url"]}]
    exec(compile(hub_extra_config(values), "extraConfig", "exec"), {"c": c})
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.KubeSpawner.storage_capacity == "50Gi" and c.KubeSpawner.storage_class == "ssd"
    gpu = next(p for p in c.KubeSpawner.profile_list if p["slug"] == "gpu")
    assert gpu["kubespawner_override"]["image"] == "ghcr.io/pai-lab/singleuser-gpu:0.1.0"
    assert gpu["kubespawner_override"]["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert len(c.JupyterHub.services) == 1


def test_effective_profiles_fill_images_and_gpu_placement():
    values = load_values(
        {
            "singleuser": {"profiles": [{"slug": "a100", "display_name": "A100", "gpu": 2}]},
            "gpu": {"nodeSelector": {"pool": "a100"}},
        }
    )
    (p,) = effective_profiles(values)
    assert p["image"] == values["images"]["singleuserGpu"] and p["node_selector"] == {
        "pool": "a100"
    }


def test_docs_explain_every_values_option():
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    missing = [key for key, _ in iter_options(SCHEMA) if f"`{key}`" not in doc]
    assert missing == [], f"docs/kubernetes.md does not document: {missing}"
