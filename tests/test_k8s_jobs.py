"""KubernetesJobBackend against the fake API server (tests/support/fake_k8s.py).

The store is the real ArtifactStore on a temp dir; the one real end-to-end case runs the
pod's own container command (``python -m pai_lab.jobs.kubernetes pod`` -> the runner) as
a local process, standing in for the kubelet.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from pai_lab.errors import BackendUnavailable, BadRequest
from pai_lab.hub.profiles import Profiles
from pai_lab.jobs.base import JobRun
from pai_lab.jobs.kubernetes import KubernetesJobBackend, label_value, object_name
from pai_lab.jobs.spec import parse_job_spec
from pai_lab.storage import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.37.0"


class Reports:
    """Collects report(...) calls; ``wait_for`` waits until a state shows up."""

    def __init__(self):
        self.calls: list[tuple[str, int, dict]] = []
        self._event = asyncio.Event()

    async def __call__(self, job_id, attempt, **fields):
        self.calls.append((job_id, attempt, fields))
        self._event.set()

    def states(self, job_id=None, attempt=None):
        return [
            f["state"]
            for j, a, f in self.calls
            if "state" in f
            and (job_id is None or j == job_id)
            and (attempt is None or a == attempt)
        ]

    def last(self, state):
        return [f for _, _, f in self.calls if f.get("state") == state][-1]

    async def wait_for(self, state, job_id=None, attempt=None):
        # bounded by the test's pytest-timeout, not a wall-clock assertion
        while state not in self.states(job_id, attempt):
            self._event.clear()
            await self._event.wait()


def make_run(job_id="J1", attempt=1, profile="cpu-small", **spec_fields) -> JobRun:
    body = {"name": "train", "source": {"script": "train.py", "content": "print('hi')\n"}}
    body.update(spec_fields)
    spec, _ = parse_job_spec(body)
    return JobRun(
        id=job_id,
        workspace="team-a",
        owner="alice",
        attempt=attempt,
        spec=spec.to_dict(),
        profile=Profiles().get(profile).to_dict(),
        env={"PAI_LAB_URL": "http://control:8090", "PAI_LAB_TOKEN": "job-token"},
    )


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(data_dir=str(tmp_path / "data"))


@pytest.fixture
async def backend_factory(fake_k8s, store, tmp_path):
    made = []

    def make(reports):
        b = KubernetesJobBackend(
            store=store,
            report=reports,
            data_dir=str(tmp_path),
            api_url=fake_k8s.url,
            namespace="pai-{workspace}",
            store_url=store.to_dict()["url"],
            resync_interval=3600,
            cancel_timeout=5,
        )
        made.append(b)
        return b

    yield make
    for b in made:
        await b.shutdown()


def the_one(items):
    assert len(items) == 1, items
    return items[0]


async def test_submit_creates_a_job_with_the_right_spec(fake_k8s, backend_factory):
    reports = Reports()
    backend = backend_factory(reports)
    run = make_run(profile="gpu", max_runtime="1h", env={"EPOCHS": "3"}, retries=2)
    ref = await backend.start(run)

    job = the_one(fake_k8s.find("jobs", "pai-team-a"))
    assert ref == {
        "namespace": "pai-team-a",
        "name": object_name("J1", 1),
        "kind": "Job",
        "uid": job["metadata"]["uid"],
    }
    assert reports.states() == ["starting"]
    assert reports.calls[0][2]["backend_ref"] == ref

    # what we sent validates against the Kubernetes 1.37 schema, strictly
    sent = {k: v for k, v in job.items() if k != "status"}
    sent["metadata"] = {
        k: job["metadata"][k] for k in ("name", "namespace", "labels", "annotations")
    }
    kubernetes_validate.validate(sent, K8S_VERSION, strict=True)

    spec = job["spec"]
    assert spec["backoffLimit"] == 0  # retries are the control plane's attempts
    assert spec["activeDeadlineSeconds"] == 3600 + backend.deadline_grace
    pod = spec["template"]["spec"]
    c = the_one(pod["containers"])
    assert c["image"] == "pai-lab/singleuser-gpu:0.1.0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["limits"]["memory"] == "24Gi" and c["resources"]["requests"]["cpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (
        env["PAI_JOB_ID"] == "J1" and env["PAI_WORKSPACE"] == "team-a" and env["PAI_ATTEMPT"] == "1"
    )
    assert env["PAI_OUTPUT_DIR"].endswith("/outputs") and env["PAI_STORE_URL"].startswith("file://")
    assert env["PAI_LAB_TOKEN"] == "job-token"
    job_json = json.loads(env["PAI_JOB_JSON"])
    assert job_json["spec"]["env"] == {"EPOCHS": "3"} and job_json["attempt"] == 1
    assert c["envFrom"] == [{"secretRef": {"name": "pai-lab-store", "optional": True}}]
    assert c["command"] == ["python", "-m", "pai_lab.jobs.kubernetes", "pod"]
    for labels in (job["metadata"]["labels"], spec["template"]["metadata"]["labels"]):
        assert labels["pai-lab.io/job-id"] == "J1" and labels["pai-lab.io/workspace"] == "team-a"
        assert labels["pai-lab.io/attempt"] == "1"
    assert job["metadata"]["annotations"]["pai-lab.io/owner"] == "alice"


async def test_pod_phases_become_job_states_with_metrics(fake_k8s, backend_factory, store):
    reports = Reports()
    backend = backend_factory(reports)
    run = make_run()
    await backend.start(run)
    job = the_one(fake_k8s.find("jobs", "pai-team-a"))
    pod = the_one(fake_k8s.pods_of(job))

    await fake_k8s.set_pod_phase(pod, "Running", logs="epoch 1\n")
    await reports.wait_for("running")
    chunks = [c async for c in await backend.live_logs(run, offset=0)]
    assert b"".join(chunks) == b"epoch 1\n"
    assert [c async for c in await backend.live_logs(run, offset=6)] == [b"1\n"]

    ws = store.workspace("team-a")
    await ws.write_bytes(
        "jobs/J1/metrics.json", json.dumps([{"name": "accuracy", "value": 0.97}]).encode()
    )
    msg = json.dumps({"state": "succeeded", "exit_reason": None})
    await fake_k8s.set_pod_phase(pod, "Succeeded", message=msg, logs="epoch 1\nepoch 2\n")
    await reports.wait_for("succeeded")
    assert reports.states() == ["starting", "running", "succeeded"]
    assert reports.last("succeeded")["metrics"] == [{"name": "accuracy", "value": 0.97}]
    # the pod's log is kept per attempt
    assert await ws.read_bytes("jobs/J1/attempts/1/pod-logs.txt") == b"epoch 1\nepoch 2\n"


async def test_failure_reason_comes_from_the_termination_message(fake_k8s, backend_factory):
    reports = Reports()
    backend = backend_factory(reports)
    await backend.start(make_run())
    pod = the_one(fake_k8s.pods_of(the_one(fake_k8s.find("jobs"))))
    await fake_k8s.set_pod_phase(pod, "Running")
    msg = json.dumps({"state": "failed", "exit_reason": "ZeroDivisionError: division by zero"})
    await fake_k8s.set_pod_phase(pod, "Failed", exit_code=1, message=msg)
    await reports.wait_for("failed")
    assert reports.last("failed")["exit_reason"] == "ZeroDivisionError: division by zero"


async def test_oom_killed_pod_without_runner_result_keeps_its_logs(
    fake_k8s, backend_factory, store
):
    reports = Reports()
    backend = backend_factory(reports)
    await backend.start(make_run())
    pod = the_one(fake_k8s.pods_of(the_one(fake_k8s.find("jobs"))))
    await fake_k8s.set_pod_phase(
        pod, "Failed", exit_code=137, reason="OOMKilled", logs="loading data\n"
    )
    await reports.wait_for("failed")
    assert "out of memory" in reports.last("failed")["exit_reason"]
    assert "2Gi" in reports.last("failed")["exit_reason"]
    # the runner could not upload its log, so the pod's log becomes the job log
    assert await store.workspace("team-a").read_bytes("jobs/J1/logs.txt") == b"loading data\n"


async def test_deadline_exceeded_is_timed_out(fake_k8s, backend_factory):
    reports = Reports()
    backend = backend_factory(reports)
    await backend.start(make_run(max_runtime=60))
    job = the_one(fake_k8s.find("jobs"))
    await fake_k8s.set_pod_phase(the_one(fake_k8s.pods_of(job)), "Running")
    await reports.wait_for("running")
    await fake_k8s.exceed_deadline("jobs", job)
    await reports.wait_for("timed_out")
    assert "max_runtime" in reports.last("timed_out")["exit_reason"]


async def test_image_pull_failure_fails_the_attempt_instead_of_hanging(fake_k8s, backend_factory):
    reports = Reports()
    backend = backend_factory(reports)
    await backend.start(make_run())
    pod = the_one(fake_k8s.pods_of(the_one(fake_k8s.find("jobs"))))
    await fake_k8s.set_pod_waiting(pod, "ImagePullBackOff", 'Back-off pulling image "nope:1"')
    await reports.wait_for("failed")
    assert (
        reports.last("failed")["exit_reason"]
        == 'cannot pull the image: Back-off pulling image "nope:1"'
    )
    assert fake_k8s.find("jobs") == []  # cleaned up


async def test_control_plane_restart_mid_job_recovers_state_from_the_cluster(
    fake_k8s, backend_factory
):
    first = Reports()
    b1 = backend_factory(first)
    run = make_run()
    ref = await b1.start(run)
    await b1.shutdown()  # control plane goes down; the job keeps running in the cluster

    job = the_one(fake_k8s.find("jobs", **{"pai-lab.io/job-id": "J1"}))
    pod = the_one(fake_k8s.pods_of(job))
    await fake_k8s.set_pod_phase(pod, "Running")

    second = Reports()
    b2 = backend_factory(second)
    run.backend_ref = ref
    await b2.reattach(run)
    await second.wait_for("running")
    await fake_k8s.set_pod_phase(pod, "Succeeded", message=json.dumps({"state": "succeeded"}))
    await second.wait_for("succeeded")
    assert second.states() == ["running", "succeeded"]


async def test_restart_after_the_job_finished_and_vanished(fake_k8s, backend_factory, store):
    b1 = backend_factory(Reports())
    run = make_run()
    run.backend_ref = await b1.start(run)
    await b1.shutdown()
    job = the_one(fake_k8s.find("jobs"))
    # the pod finished, wrote its result to the store, and the Job was then deleted (TTL)
    await store.workspace("team-a").write_bytes(
        "jobs/J1/attempts/1/result.json",
        json.dumps({"state": "failed", "exit_reason": "boom"}).encode(),
    )
    await fake_k8s.delete("jobs", "pai-team-a", job["metadata"]["name"], policy="Background")
    reports = Reports()
    await backend_factory(reports).reattach(run)
    assert reports.states() == ["failed"] and reports.last("failed")["exit_reason"] == "boom"

    # and without any trace it is lost
    other = make_run(job_id="J2")
    other.backend_ref = {"namespace": "pai-team-a", "name": object_name("J2", 1), "kind": "Job"}
    reports2 = Reports()
    await backend_factory(reports2).reattach(other)
    assert reports2.states() == ["lost"]


async def test_cancel_deletes_with_propagation(fake_k8s, backend_factory):
    reports = Reports()
    backend = backend_factory(reports)
    run = make_run()
    run.backend_ref = await backend.start(run)
    job = the_one(fake_k8s.find("jobs"))
    pod = the_one(fake_k8s.pods_of(job))
    await fake_k8s.set_pod_phase(pod, "Running", logs="working\n")
    await reports.wait_for("running")
    await backend.cancel(run)
    assert reports.states()[-1] == "cancelled"
    deletion = the_one([d for d in fake_k8s.deletions if d["plural"] == "jobs"])
    assert deletion == {
        "plural": "jobs",
        "namespace": "pai-team-a",
        "name": job["metadata"]["name"],
        "propagationPolicy": "Foreground",
    }
    assert fake_k8s.find("pods") == []  # cascaded


async def test_worker_failure_fails_the_attempt_and_the_next_attempt_is_a_new_object(
    fake_k8s, backend_factory
):
    reports = Reports()
    backend = backend_factory(reports)
    run = make_run(workers=3, retries=1, profile="gpu", max_runtime=600)
    ref = await backend.start(run)
    assert ref["kind"] == "PyTorchJob"
    ptj = the_one(fake_k8s.find("pytorchjobs", "pai-team-a"))
    check_pytorchjob(ptj)
    replicas = ptj["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert ptj["spec"]["runPolicy"]["backoffLimit"] == 0
    assert ptj["spec"]["runPolicy"]["activeDeadlineSeconds"] == 600 + backend.deadline_grace
    tmpl = replicas["Worker"]["template"]["spec"]
    assert tmpl["containers"][0]["name"] == "pytorch"
    assert tmpl["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    pods = fake_k8s.pods_of(ptj)
    assert len(pods) == 3
    for p in pods:
        await fake_k8s.set_pod_phase(p, "Running")
    await reports.wait_for("running", attempt=1)
    worker = next(p for p in pods if "worker-1" in p["metadata"]["name"])
    await fake_k8s.set_pod_phase(
        worker,
        "Failed",
        exit_code=1,
        message=json.dumps({"state": "failed", "exit_reason": "NCCL error"}),
    )
    await reports.wait_for("failed", attempt=1)
    assert reports.last("failed")["exit_reason"] == "NCCL error"
    assert len(fake_k8s.pods_of(ptj)) == 3  # backoffLimit 0: the operator made no new pod

    # the control plane's retry: attempt 2 is its own object with its own labels
    ref2 = await backend.start(make_run(attempt=2, workers=3, retries=1, profile="gpu"))
    assert ref2["name"] == object_name("J1", 2) != ref["name"]
    ptj2 = fake_k8s.find("pytorchjobs", **{"pai-lab.io/attempt": "2"})
    assert the_one(ptj2)["metadata"]["labels"]["pai-lab.io/job-id"] == "J1"


async def test_single_worker_job_is_not_retried_by_kubernetes(fake_k8s, backend_factory):
    reports = Reports()
    backend = backend_factory(reports)
    await backend.start(make_run(retries=3))
    job = the_one(fake_k8s.find("jobs"))
    await fake_k8s.set_pod_phase(the_one(fake_k8s.pods_of(job)), "Failed", exit_code=2)
    await reports.wait_for("failed")
    assert len(fake_k8s.pods_of(job)) == 1
    assert "exited with code 2" in reports.last("failed")["exit_reason"]


async def test_pytorchjob_without_training_operator_is_a_clear_error(fake_k8s, backend_factory):
    fake_k8s.installed_crds.discard("pytorchjobs")
    backend = backend_factory(Reports())
    with pytest.raises(BadRequest, match="Training Operator"):
        await backend.start(make_run(workers=2))


async def test_api_server_down_is_backend_unavailable(fake_k8s, backend_factory):
    fake_k8s.down = True
    backend = backend_factory(Reports())
    with pytest.raises(BackendUnavailable, match="Kubernetes refused"):
        await backend.start(make_run())
    await fake_k8s.stop()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        await backend.start(make_run(job_id="J3"))


async def test_start_is_idempotent_after_a_crash_between_create_and_save(fake_k8s, backend_factory):
    b1 = backend_factory(Reports())
    run = make_run()
    ref = await b1.start(run)
    ref2 = await backend_factory(Reports()).start(run)
    assert ref2["uid"] == ref["uid"] and len(fake_k8s.find("jobs")) == 1


def test_names_and_labels_are_valid_for_any_job_id():
    long_id = "Job_" + "x" * 120
    name = object_name(long_id, 12)
    assert len(name) <= 50 and name.endswith("-a12") and name == name.lower()
    assert object_name(long_id, 1) != object_name(long_id + "y", 1)
    v = label_value("weird/id with spaces" * 5)
    assert len(v) <= 63 and v[0].isalnum() and v[-1].isalnum()


def test_file_store_is_unavailable_to_pods(store, tmp_path):
    b = KubernetesJobBackend(store=store, report=Reports(), data_dir=str(tmp_path))
    assert "file://" in b.unavailable_reason(make_run())
    b.store_url = "s3://bucket/pai"
    assert b.unavailable_reason(make_run()) is None


def test_pod_store_options_never_carry_credentials(tmp_path):
    s = ArtifactStore(
        url="s3://bucket/p",
        storage_options={"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://minio:9000"},
    )
    b = KubernetesJobBackend(store=s, report=Reports(), data_dir=str(tmp_path))
    env = {
        e["name"]: e.get("value")
        for e in b.build(make_run())["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["PAI_STORE_OPTIONS"]) == {"endpoint_url": "http://minio:9000"}
    assert "s3cr3t" not in json.dumps(b.build(make_run()))


# --- structural check of the PyTorchJob (no CRD schema ships with kubernetes-validate) ---
def check_pytorchjob(obj: dict) -> None:
    assert obj["apiVersion"] == "kubeflow.org/v1" and obj["kind"] == "PyTorchJob"
    spec = obj["spec"]
    assert set(spec) <= {"runPolicy", "pytorchReplicaSpecs", "elasticPolicy", "nprocPerNode"}
    rp = spec["runPolicy"]
    assert set(rp) <= {
        "backoffLimit",
        "activeDeadlineSeconds",
        "cleanPodPolicy",
        "ttlSecondsAfterFinished",
        "schedulingPolicy",
        "suspend",
        "managedBy",
    }
    assert rp["cleanPodPolicy"] in ("All", "Running", "None")
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert key not in rp or isinstance(rp[key], int)
    reps = spec["pytorchReplicaSpecs"]
    assert set(reps) <= {"Master", "Worker"} and reps["Master"]["replicas"] == 1
    for r in reps.values():
        assert set(r) <= {"replicas", "restartPolicy", "template"}
        assert r["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        assert any(c["name"] == "pytorch" for c in r["template"]["spec"]["containers"])
        # the pod template itself is a core PodTemplateSpec: validate it as a Pod
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x", **r["template"]["metadata"]},
            "spec": r["template"]["spec"],
        }
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


# --- the pod's own entry, run for real ------------------------------------------------
async def kubelet_run(fake_k8s, pod: dict, tmp_path: Path) -> None:
    """Run the pod's container command as a local process, like a kubelet would."""
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    run_dir = tmp_path / "pod-run"
    term = tmp_path / "termination-log"
    env.update(
        PAI_RUN_DIR=str(run_dir),
        PAI_TERMINATION_LOG=str(term),
        PATH=os.environ["PATH"],
        PYTHONPATH=str(REPO),
        HOME=str(tmp_path),
    )
    argv = [sys.executable if a == "python" else a for a in c["command"]]
    await fake_k8s.set_pod_phase(pod, "Running")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    await fake_k8s.set_pod_phase(
        pod,
        "Succeeded" if proc.returncode == 0 else "Failed",
        exit_code=proc.returncode,
        message=term.read_text() if term.exists() else "",
        logs=out.decode(),
    )


async def test_pod_entry_runs_the_job_end_to_end(fake_k8s, backend_factory, store, tmp_path):
    reports = Reports()
    backend = backend_factory(reports)
    script = (
        "import os, pai_lab\n"
        "print('training on', os.environ['PAI_WORKSPACE'])\n"
        "pai_lab.log_metric('accuracy', 0.93)\n"
        "open(os.path.join(os.environ['PAI_OUTPUT_DIR'], 'model.txt'), 'w').write('weights')\n"
    )
    body = {"name": "train", "source": {"script": "train.py", "content": script}}
    spec, files = parse_job_spec(body)
    ws = store.workspace("team-a")
    for rel, data in files.items():  # what the control plane does on submit
        await ws.write_bytes(f"jobs/E2E/{rel}", data)
    run = JobRun(
        id="E2E",
        workspace="team-a",
        owner="alice",
        attempt=1,
        spec=spec.to_dict(),
        profile=Profiles().get("cpu-small").to_dict(),
    )
    await backend.start(run)
    pod = the_one(fake_k8s.pods_of(the_one(fake_k8s.find("jobs"))))
    await kubelet_run(fake_k8s, pod, tmp_path)
    await reports.wait_for("succeeded")
    done = reports.last("succeeded")
    assert [m["name"] for m in done["metrics"]] == ["accuracy"] and done["metrics"][0][
        "value"
    ] == 0.93
    assert await ws.read_bytes("jobs/E2E/outputs/model.txt") == b"weights"
    assert b"training on team-a" in await ws.read_bytes("jobs/E2E/logs.txt")
    assert b"training on team-a" in await ws.read_bytes("jobs/E2E/attempts/1/pod-logs.txt")
    assert (
        json.loads(await ws.read_bytes("jobs/E2E/attempts/1/result.json"))["state"] == "succeeded"
    )


async def test_pod_entry_reports_a_failing_script(fake_k8s, backend_factory, store, tmp_path):
    reports = Reports()
    backend = backend_factory(reports)
    spec, files = parse_job_spec(
        {"name": "bad", "source": {"script": "bad.py", "content": "1/0\n"}}
    )
    for rel, data in files.items():
        await store.workspace("team-a").write_bytes(f"jobs/BAD/{rel}", data)
    run = JobRun(
        id="BAD", workspace="team-a", owner="alice", attempt=1, spec=spec.to_dict(), profile={}
    )
    await backend.start(run)
    pod = the_one(fake_k8s.pods_of(the_one(fake_k8s.find("jobs"))))
    await kubelet_run(fake_k8s, pod, tmp_path)
    await reports.wait_for("failed")
    assert "ZeroDivisionError" in reports.last("failed")["exit_reason"]
