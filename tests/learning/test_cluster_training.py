"""Tuning jobs on a cluster (SERVING_BACKEND=kubernetes): the student trains as a Job on the GPU instance
type the user chose, with the deployments' fit and GPU quota rules, and its data and adapter pass through
the object store.

No Kubernetes API server or GPU can run on this machine (see the README), so the stand-ins are the most
faithful to hand: the stateful fake API server the kubernetes backend is tested against, moto's S3 server
as the object store, and a stand-in kubelet that does with the Job what a node would: it reads the Job's
container from the fake (its command, its environment with the Secret's values), runs that command for
real in the engine's environment on one CPU core (the trainer uses the GPU when there is one, else the
CPU), serves its output as the pod's log, and reports the Job complete or failed as the Job controller
would. So the platform's side (the Secret, the Job, the presigned URLs, following the log, fetching and
unpacking the output) and the Job's program (learning/training/job.py: fetch, train, answer the held-out
prompts, upload) both run for real; what is not exercised is a real scheduler, a GPU and the trainer image
itself.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from learning import tuning, tuning_kube, tuning_run
from learning.models import Dataset, TuningJob, TuningStatus
from learning.storage import S3Store, get_store
from learning.training import cpu_trainer, kube_job
from learning.training.runner import FAILED, _prepare_child
from learning.tuning_kube import KubernetesTraining
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog import custom_models
from marketplace.catalog.models import InstanceType, ModelCard
from serving import services
from serving.backends.kubernetes import KubernetesBackend
from serving.local import capacity, engine_env
from serving.models import Deployment
from serving.spec import ClusterSettings
from serving.status import UNSCHEDULABLE_GRACE_SECONDS
from tests.learning.ticket_teacher import ticket_dataset
from tests.serving.conftest import backend_for, fake_kubernetes
from tests.serving.fake_kubernetes import NAMESPACE, FakeKubernetes

__all__ = ["fake_kubernetes"]  # a fixture of the serving tests, used here

ROOT = Path(__file__).resolve().parents[2]
GPU = "aws-g5-xlarge"  # one NVIDIA A10G
# Small and quick, as the CPU trainer's own tests: a handful of steps on a handful of rows.
SMALL = {"epochs": 1, "batch_size": 2, "max_seq_length": 192, "learning_rate": 2e-3, "checkpoint_every": 1}


@dataclass
class Cluster:
    fake: FakeKubernetes
    backend: KubernetesBackend
    organization: Organization
    owner: Any
    dataset: Dataset
    student: ModelCard

    def parts(self) -> tuning_run.Parts:
        return tuning_run.Parts(cluster=partial(KubernetesTraining, backend=self.backend, poll_seconds=0.2))

    def create(self, **fields: Any) -> TuningJob:
        options: dict[str, Any] = {
            "name": "cluster-student", "kind": "fine-tuning", "dataset_id": self.dataset.pk,
            "student_base": self.student.slug, "instance_type": GPU, "hyperparameters": SMALL,
            "max_tokens": 24, **fields,
        }  # fmt: skip
        return tuning.create_tuning_job(organization=self.organization, user=self.owner, **options)


@pytest.fixture
def cluster(
    acme: Organization, owner: Any, s3_settings: S3Store, fake_kubernetes: FakeKubernetes, settings: Any,
    tmp_path: Path,
) -> Iterator[Cluster]:  # fmt: skip
    settings.SERVING_BACKEND = "kubernetes"
    models = engine_env.engine_dir() / "models"
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path / "custom-models"), str(models)]
    smollm = engine_env.model_path(engine_env.engine_dir(), engine_env.CHAT)
    if smollm is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")
    # The student's base: SmolLM2 as the organisation's own model, registered from a folder of a volume the
    # cluster's pods mount at the same path; a catalog card's weights would come from the Hub.
    settings.CUSTOM_MODEL_VOLUMES = {str(models): "engine-models"}
    student = custom_models.register_from_path(
        organization=acme, user=owner, name="smollm", path=str(smollm)
    ).card
    dataset = ticket_dataset(s3_settings, acme.pk, 4, heldout_fraction=0.25)
    volumes = tuple(settings.CUSTOM_MODEL_VOLUMES.items())
    backend = backend_for(fake_kubernetes.url, ClusterSettings(namespace=NAMESPACE, model_volumes=volumes))
    try:
        yield Cluster(fake_kubernetes, backend, acme, owner, dataset, student)
    finally:
        backend.api_client.close()


@dataclass
class Kubelet:
    """A node's kubelet and the Job controller, by hand (see the module's docstring)."""

    fake: FakeKubernetes
    work: Path  # the pod's work volume (an emptyDir)
    exit_codes: list[int] = field(default_factory=list)
    stdout: str = ""
    program: tuple[int, str] | None = None  # (exit code, output) of a stand-in for the container's command

    def environment(self, container: dict[str, Any]) -> dict[str, str]:
        found = {}
        for entry in container["env"]:
            if "value" in entry:
                found[entry["name"]] = entry["value"]
                continue
            ref = entry["valueFrom"]["secretKeyRef"]
            secret = self.fake.get("v1", "secrets", ref["name"])
            assert secret is not None, f"the pod would not start: Secret {ref['name']} is missing"
            found[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return found

    def run(self, name: str) -> None:
        job = self.fake.get("batch/v1", "jobs", name)
        assert job is not None
        template = job["spec"]["template"]
        (container,) = template["spec"]["containers"]
        pod = f"{name}-x7k2p"
        self.fake.add_pod(
            pod, template["metadata"]["labels"],
            container_statuses=[{"name": "trainer", "ready": True, "restartCount": 0,
                                 "state": {"running": {}}}],
        )  # fmt: skip
        variables = self.environment(container)
        variables.update(TRAINING_WORK_DIR=str(self.work), HF_HOME=str(self.work / "hf"))
        directory = engine_env.engine_dir()
        cores = tuple(capacity.allowed_cores()[-1:])
        environment = {
            **engine_env.engine_environment(directory, self.work, cpus=capacity.cpu_list(cores)),
            **variables, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        assert container["command"][0] == "python3"  # the image's python; here the engine environment's
        command = [str(engine_env.engine_python(directory)), *container["command"][1:]]
        if self.program is None:
            done = subprocess.run(
                command, env=environment, cwd=ROOT, capture_output=True, text=True, timeout=900,
                preexec_fn=_prepare_child(cores, None),
            )  # fmt: skip
            code, self.stdout, log = done.returncode, done.stdout, done.stdout + done.stderr
        else:
            code, self.stdout = self.program
            log = self.stdout
        self.exit_codes.append(code)
        self.fake.set_log(pod, log)
        self.fake.set_job_condition(
            name, "Complete" if code == 0 else "Failed",
            "" if code == 0 else "Job has reached the specified backoff limit",
        )  # fmt: skip

    def run_when_applied(self, timeout: float = 120) -> threading.Thread:
        """In a thread: wait for a training Job to appear, then run its pod."""

        def play() -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                jobs = self.fake.list("batch/v1", "jobs")
                if jobs:
                    self.run(jobs[0]["metadata"]["name"])
                    return
                time.sleep(0.1)

        thread = threading.Thread(target=play, name="kubelet", daemon=True)
        thread.start()
        return thread


# --- Where a job trains, and what it holds ---------------------------------------------------------------


def test_on_a_cluster_a_job_names_the_gpu_instance_type_it_trains_on(cluster: Cluster) -> None:
    with pytest.raises(tuning.Refused) as refused:
        cluster.create(instance_type="")
    assert refused.value.field == "instance_type" and "/api/instance-types/" in str(refused.value)
    with pytest.raises(tuning.Refused) as refused:
        cluster.create(instance_type="no-such-type")
    assert refused.value.field == "instance_type" and "no-such-type" in str(refused.value)
    cpu = InstanceType.objects.filter(gpu_count=0).first()
    assert cpu is not None
    with pytest.raises(tuning.Refused) as refused:
        cluster.create(instance_type=cpu.slug)
    assert refused.value.field == "instance_type" and "needs a GPU instance" in str(refused.value)
    assert not TuningJob.objects.exists()


def test_a_student_that_does_not_fit_the_instance_type_is_refused_as_a_deployment_would_be(
    cluster: Cluster,
) -> None:
    big = next(
        card
        for card in ModelCard.objects.filter(organization=None, gpu_memory_gb__gt=60).order_by("slug")
        if card.servable and "completions" in card.routes
    )
    with pytest.raises(tuning.Refused) as refused:
        cluster.create(student_base=big.slug)
    assert refused.value.field == "instance_type"
    assert f"{big.name} needs" in str(refused.value) and "GB of GPU memory" in str(refused.value)


def test_on_this_machine_a_job_names_no_instance_type(cluster: Cluster, settings: Any) -> None:
    settings.SERVING_BACKEND = "local"
    with pytest.raises(tuning.Refused) as refused:
        cluster.create()
    assert refused.value.field == "instance_type" and "leave instance_type empty" in str(refused.value)


def test_a_cluster_job_needs_an_object_store_its_pod_can_reach(cluster: Cluster, settings: Any) -> None:
    settings.OBJECT_STORE_BUCKET = ""
    get_store.cache_clear()
    with pytest.raises(tuning.Refused) as refused:
        cluster.create()
    assert refused.value.field == "instance_type" and "OBJECT_STORE_BUCKET" in str(refused.value)


def test_a_training_run_holds_its_instances_gpus_of_the_quota_shared_with_deployments(
    cluster: Cluster,
) -> None:
    Quota.objects.filter(organization=cluster.organization).update(max_gpus=1)
    job = cluster.create()
    assert (job.reserved_gpus, job.gpu_model) == (1, "NVIDIA A10G 24GB")
    assert services.quota_use(cluster.organization).gpus == 1
    # The quota is full: neither a second run nor a deployment gets the GPU the run holds.
    with pytest.raises(tuning.Refused) as refused:
        cluster.create(name="second-student")
    assert refused.value.field == "instance_type" and "GPU quota leaves 0" in str(refused.value)
    instance = InstanceType.objects.get(slug=GPU)
    with pytest.raises(Exception) as deployment_refused:
        services.check_quota(cluster.organization, instance_type=instance, max_replicas=1)
    assert "max_replicas" in str(deployment_refused.value)
    # A finished run holds nothing.
    tuning.cancel_tuning_job(job)
    assert services.quota_use(cluster.organization).gpus == 0
    assert cluster.create(name="second-student").reserved_gpus == 1


def test_a_deployment_holding_the_gpus_refuses_a_training_run(cluster: Cluster) -> None:
    Quota.objects.filter(organization=cluster.organization).update(max_gpus=1)
    Deployment.objects.create(
        organization=cluster.organization, name="busy", model_card=cluster.student,
        instance_type=InstanceType.objects.get(slug=GPU), reserved_gpus=1, gpu_model="NVIDIA A10G 24GB",
    )  # fmt: skip
    with pytest.raises(tuning.Refused) as refused:
        cluster.create()
    assert refused.value.field == "instance_type" and "wait for a run or a deployment" in str(refused.value)


def test_the_api_takes_the_instance_type_and_shows_it(cluster: Cluster, client_for: Any) -> None:
    client: APIClient = client_for(cluster.owner)
    body = {"name": "api-student", "kind": "fine-tuning", "dataset": cluster.dataset.pk,
            "student_base": cluster.student.slug, "hyperparameters": SMALL}  # fmt: skip
    refused = client.post("/api/tuning-jobs/", body, format="json")
    assert refused.status_code == 400 and "instance_type" in refused.json()
    created = client.post("/api/tuning-jobs/", {**body, "instance_type": GPU}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["instance_type"] == GPU


def test_an_outsider_cannot_see_a_cluster_job(cluster: Cluster, client_for: Any, outsider: Any) -> None:
    job = cluster.create()
    client: APIClient = client_for(outsider)
    assert client.get(f"/api/tuning-jobs/{job.pk}/").status_code == 404
    assert client.post(f"/api/tuning-jobs/{job.pk}/cancel/").status_code == 404
    assert job.pk not in [row["id"] for row in client.get("/api/tuning-jobs/").json()["results"]]


# --- The run, for real -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_on_a_gpu_instance_type_trains_in_a_cluster_job_and_registers_its_student(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = cluster.create()
    kubelet = Kubelet(cluster.fake, tmp_path / "pod-work")
    playing = kubelet.run_when_applied()
    assert tuning_run.run(job.pk, cluster.parts()) == TuningStatus.SUCCEEDED, kubelet.stdout[-2000:]
    playing.join(timeout=5)
    job.refresh_from_db()
    assert kubelet.exit_codes == [0]
    assert [event.status for event in job.events.all()] == [
        "queued", "training", "evaluating", "registering", "succeeded"
    ]  # fmt: skip

    # The Job was placed on the instance type's nodes; the URLs reached the pod only through its Secret.
    (applied,) = cluster.fake.list("batch/v1", "jobs")
    pod_spec = applied["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == InstanceType.objects.get(slug=GPU).node_labels
    assert pod_spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # the base's folder, from the volume holding it
    claim = {"claimName": "engine-models", "readOnly": True}
    assert {"name": "custom-model", "persistentVolumeClaim": claim} in pod_spec["volumes"]
    assert "X-Amz-Signature" not in json.dumps(applied)

    # The loss curve came from the pod's log, line by line; the GPUs were given back when the Job finished.
    steps = sum(1 for line in kubelet.stdout.splitlines() if line.startswith('{"event": "step"'))
    assert steps >= 2 and [step for step, _ in job.loss_points] == list(range(1, steps + 1))
    assert job.reserved_gpus == 0 and services.quota_use(cluster.organization).gpus == 0

    # The Job's output came back through the store: the adapter, and the answers it made on its own
    # accelerator to the held-out prompts, scored here.
    prefix = tuning_kube.store_prefix(job)
    assert sorted(get_store().list(prefix + "/")) == [f"{prefix}/input.json.gz", f"{prefix}/output.tar.gz"]
    assert job.evaluation["records"] == cluster.dataset.heldout_records
    assert set(job.evaluation["models"]) == {"student", "base"}
    assert job.custom_model is not None and job.custom_model.base == cluster.student
    assert (Path(job.custom_model.path) / "adapter_model.safetensors").is_file()
    # …and kept in the store, where a cluster's engine pods fetch it from when it is deployed.
    assert get_store().list("adapters/") == [job.custom_model.archive_key]
    # The student's cost is estimated from the answers the Job timed, priced at the Job's instance type.
    student = job.evaluation["costs"]["student"]
    assert (student["instance_type"], student["estimate"]) == ("g5.xlarge", True)
    assert student["tokens_per_second"] > 0 and student["usd_per_1k_tokens"] > 0


def test_a_failed_training_job_fails_the_tuning_job_with_the_trainers_words(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The container's program is the stand-in here: it ends as the trainer does on a row that is too long
    (its last progress line, its exit code). The real trainer's words for that are cpu_trainer's own,
    tested in test_cpu_trainer.py."""
    job = cluster.create()
    words = "Row 2 is 212 tokens long, over max_seq_length 192: raise max_seq_length or shorten the row."
    failed = json.dumps({"event": "failed", "time": 1.0, "reason": "bad_data", "message": words})
    kubelet = Kubelet(cluster.fake, tmp_path / "pod-work", program=(cpu_trainer.EXIT_BAD_DATA, failed + "\n"))
    playing = kubelet.run_when_applied()
    assert tuning_run.run(job.pk, cluster.parts()) == TuningStatus.FAILED
    playing.join(timeout=5)
    job.refresh_from_db()
    assert (job.failure_reason, job.status_message) == ("bad_data", words)
    assert services.quota_use(cluster.organization).gpus == 0


def started_run(cluster: Cluster) -> tuple[TuningJob, KubernetesTraining, dict[str, Any]]:
    """A tuning job's training run started on the cluster (a row of data), and the Job it applied."""
    job = cluster.create()
    job.work_dir = str(tuning.work_dir_for(job))
    (Path(job.work_dir)).mkdir(parents=True)
    (Path(job.work_dir) / "train.jsonl").write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    run = KubernetesTraining(Path(job.work_dir) / "run", job=job, data=Path(job.work_dir) / "train.jsonl",
                             backend=cluster.backend, poll_seconds=0.05)  # fmt: skip
    run.start()
    (applied,) = cluster.fake.list("batch/v1", "jobs")
    return job, run, applied


def test_a_pod_that_cannot_start_says_why_while_the_job_waits(cluster: Cluster) -> None:
    _, run, applied = started_run(cluster)
    seen: list[dict[str, Any]] = []
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.2, on_progress=seen.append)
    assert seen[-1]["message"] == "Waiting for the cluster to create the training pod."
    cluster.fake.add_pod(
        "pulling", applied["spec"]["template"]["metadata"]["labels"], phase="Pending", ready=False,
        container_statuses=[{"name": "trainer", "restartCount": 0,
                             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}],
    )  # fmt: skip
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.2, on_progress=seen.append)
    assert "TRAINING_IMAGE" in seen[-1]["message"]


def test_the_reconciler_deletes_the_jobs_of_cancelled_and_vanished_tuning_jobs(cluster: Cluster) -> None:
    kept, cancelled = cluster.create(), cluster.create(name="cancelled-student")
    labels = {"app.kubernetes.io/managed-by": "model-marketplace", "app.kubernetes.io/component": "trainer"}
    for job_id in (kept.pk, cancelled.pk, 999_999):
        for group, plural, kind in (("batch/v1", "jobs", "Job"), ("v1", "secrets", "Secret")):
            cluster.fake.add_object(group, plural, {
                "apiVersion": group, "kind": kind,
                "metadata": {"name": f"tune-{job_id}",
                             "labels": {**labels, kube_job.TUNING_JOB_LABEL: str(job_id)}},
            })  # fmt: skip
    tuning.cancel_tuning_job(cancelled)
    assert tuning_kube.delete_abandoned_runs(cluster.backend) == sorted([cancelled.pk, 999_999])
    assert [job["metadata"]["name"] for job in cluster.fake.list("batch/v1", "jobs")] == [f"tune-{kept.pk}"]
    assert [secret["metadata"]["name"] for secret in cluster.fake.list("v1", "secrets")] == [
        f"tune-{kept.pk}"
    ]


def test_a_job_that_completes_without_its_output_in_the_store_fails_saying_where_to_look(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = cluster.create()
    kubelet = Kubelet(cluster.fake, tmp_path / "pod-work", program=(0, ""))  # exits 0, uploads nothing
    playing = kubelet.run_when_applied()
    assert tuning_run.run(job.pk, cluster.parts()) == TuningStatus.FAILED
    playing.join(timeout=5)
    job.refresh_from_db()
    assert job.failure_reason == "bad_run" and "not in the object store" in job.status_message


def test_a_pod_no_node_takes_waits_out_a_deployments_grace_then_the_run_fails_and_its_job_goes(
    cluster: Cluster,
) -> None:
    job, run, applied = started_run(cluster)
    labels = applied["spec"]["template"]["metadata"]["labels"]

    def unschedulable_for(minutes: float) -> None:
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=minutes)
        cluster.fake.add_pod(
            "waiting", labels, phase="Pending", ready=False, container_statuses=[],
            conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
        )  # fmt: skip

    unschedulable_for(2)
    seen: list[dict[str, Any]] = []
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.2, on_progress=seen.append)
    assert "Waiting for a node of the instance type with free GPUs" in seen[-1]["message"]
    assert cluster.fake.list("batch/v1", "jobs")  # a cluster autoscaler may still be adding a node

    unschedulable_for(UNSCHEDULABLE_GRACE_SECONDS / 60 + 1)
    outcome = run.wait(timeout=5)
    assert outcome.status == FAILED
    assert outcome.message.startswith(
        f"No node could take the training run on {job.instance_type.name} for 11"
    )
    assert "3 Insufficient nvidia.com/gpu" in outcome.message and "another instance type" in outcome.message
    assert cluster.fake.list("batch/v1", "jobs") == []  # deleted: nothing holds the GPUs any more


def test_a_student_base_from_a_folder_in_no_volume_is_refused_on_a_cluster(
    cluster: Cluster, settings: Any
) -> None:
    settings.CUSTOM_MODEL_VOLUMES = {}
    with pytest.raises(tuning.Refused) as refused:
        cluster.create()
    assert refused.value.field == "student_base" and "CUSTOM_MODEL_VOLUMES" in str(refused.value)
