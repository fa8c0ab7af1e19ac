"""The training Job's objects (learning/training/kube_job.py), built without a cluster: valid for the API
server (kubernetes-validate's schemas, strict), placed and sized exactly as a deployment's replica on the
same instance type, and holding its object-store URLs only in its Secret."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import kubernetes_validate
import pytest

from learning.training import kube_job
from learning.training.kube_job import TrainingJobSpec, build_job, build_secret, build_training_objects
from serving import manifests
from serving.spec import ClusterSettings
from tests.serving.test_manifests import A100X8, KUBERNETES_VERSIONS, L4, LLAMA_8B, QWEN_7B, make_spec

INPUT_URL = "https://store.example.com/bucket/tuning-jobs/3-9/input.json.gz?X-Amz-Signature=abc"
OUTPUT_URL = "https://store.example.com/bucket/tuning-jobs/3-9/output.tar.gz?X-Amz-Signature=def"
SPEC = TrainingJobSpec(
    job_id=9, organization="acme", name="ticket-student", instance=L4, model=QWEN_7B,
    image="registry.example.com/trainer:v0.33.0", input_url=INPUT_URL, output_url=OUTPUT_URL,
)  # fmt: skip


def pod(spec: TrainingJobSpec = SPEC, cluster: ClusterSettings | None = None) -> dict:
    return build_job(spec, cluster or ClusterSettings())["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("cache", ["", "hf-cache"])
def test_the_secret_and_job_pass_the_api_schemas(version: str, cache: str) -> None:
    for spec in (SPEC, replace(SPEC, instance=A100X8, model=LLAMA_8B, organization="o" * 60, name="n" * 40)):
        for manifest in build_training_objects(spec, ClusterSettings(model_cache_pvc=cache)):
            kubernetes_validate.validate(manifest, version, strict=True)


def test_the_job_lands_on_the_instance_types_nodes_as_a_deployments_replica_does() -> None:
    deployment_pod = manifests.build_deployment(make_spec(instance=A100X8), ClusterSettings())["spec"][
        "template"
    ]
    training_pod = pod(replace(SPEC, instance=A100X8))
    assert training_pod["nodeSelector"] == deployment_pod["spec"]["nodeSelector"] == A100X8.node_labels
    assert training_pod["tolerations"] == deployment_pod["spec"]["tolerations"]
    (trainer,) = training_pod["containers"]
    assert trainer["resources"] == deployment_pod["spec"]["containers"][0]["resources"]
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "8"}


def test_the_gpu_taint_key_comes_from_the_cluster_settings() -> None:
    (toleration,) = pod(cluster=ClusterSettings(gpu_taint_key="gpu.example.com/dedicated"))["tolerations"]
    assert toleration == {"key": "gpu.example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"}


def test_the_presigned_urls_are_only_in_the_secret() -> None:
    job = build_job(SPEC, ClusterSettings())
    assert INPUT_URL not in json.dumps(job) and OUTPUT_URL not in json.dumps(job)
    secret = build_secret(SPEC, ClusterSettings())
    assert {key: base64.b64decode(value).decode() for key, value in secret["data"].items()} == {
        kube_job.INPUT_KEY: INPUT_URL,
        kube_job.OUTPUT_KEY: OUTPUT_URL,
    }
    (trainer,) = pod()["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
    assert refs["TRAINING_INPUT_URL"] == {"name": secret["metadata"]["name"], "key": kube_job.INPUT_KEY}
    assert refs["TRAINING_OUTPUT_URL"] == {"name": secret["metadata"]["name"], "key": kube_job.OUTPUT_KEY}


def test_only_a_gated_base_gets_the_hub_token() -> None:
    def env_names(spec: TrainingJobSpec) -> set[str]:
        return {entry["name"] for entry in pod(spec)["containers"][0]["env"]}

    assert "HF_TOKEN" not in env_names(SPEC)
    assert "HF_TOKEN" in env_names(replace(SPEC, model=LLAMA_8B))


def test_the_job_runs_the_trainer_program_restarting_in_its_pod_within_bounds() -> None:
    job = build_job(SPEC, ClusterSettings())
    assert job["spec"]["backoffLimit"] == kube_job.BACKOFF_LIMIT
    assert job["spec"]["activeDeadlineSeconds"] == SPEC.deadline_seconds
    assert pod()["restartPolicy"] == "OnFailure"  # the same pod, whose work volume keeps the checkpoints
    (trainer,) = pod()["containers"]
    assert trainer["command"] == ["python3", "-m", "learning.training.job"]
    assert trainer["image"] == SPEC.image
    assert {"name": "work", "mountPath": kube_job.WORK_PATH} in trainer["volumeMounts"]
    assert pod()["automountServiceAccountToken"] is False


def test_names_are_dns_labels_unique_by_job_and_labels_find_the_run() -> None:
    long = replace(SPEC, organization="O" * 60, name="n" * 40)
    name = kube_job.object_name(long)
    assert len(name) <= 63 and name.endswith("-9") and name == name.lower()
    assert kube_job.object_name(replace(long, job_id=10)) != name
    labels = build_job(SPEC, ClusterSettings())["metadata"]["labels"]
    assert labels[kube_job.TUNING_JOB_LABEL] == "9"
    selector = dict(term.split("=") for term in kube_job.TRAINING_SELECTOR.split(","))
    assert selector.items() <= labels.items()
    assert build_job(SPEC, ClusterSettings())["spec"]["template"]["metadata"]["labels"] == labels


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_student_base_from_a_volumes_folder_is_read_from_that_volume_as_its_engine_would(
    version: str,
) -> None:
    base = replace(QWEN_7B, slug="custom-3-mine", weights_path="/models/lab/mine")
    cluster = ClusterSettings(model_volumes=(("/models", "shared-models"),))
    spec = replace(SPEC, model=base)
    for manifest in build_training_objects(spec, cluster):
        kubernetes_validate.validate(manifest, version, strict=True)
    training = pod(spec, cluster)
    serving = manifests.build_deployment(make_spec(model=base), cluster)["spec"]["template"]["spec"]
    volume = {
        "name": "custom-model",
        "persistentVolumeClaim": {"claimName": "shared-models", "readOnly": True},
    }
    assert volume in training["volumes"] and volume in serving["volumes"]
    mount = {"name": "custom-model", "mountPath": "/models", "readOnly": True}
    assert mount in training["containers"][0]["volumeMounts"]
    assert [v["name"] for v in pod()["volumes"]] == ["work", "model-cache"]  # a Hub base: no volume


def test_a_private_base_is_downloaded_with_the_organisations_own_token_from_the_jobs_secret() -> None:
    spec = replace(SPEC, model=replace(QWEN_7B, hub_token="hf_own_token"))
    secret = build_secret(spec, ClusterSettings())
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == "hf_own_token"
    env = {item["name"]: item for item in pod(spec)["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": kube_job.object_name(spec),
        "key": "HF_TOKEN",
    }
    assert "hf_own_token" not in json.dumps(build_job(spec, ClusterSettings()))
    assert "HF_TOKEN" not in build_secret(SPEC, ClusterSettings())["data"]  # a public base: no token
