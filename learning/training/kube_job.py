"""Pure builder: a tuning job's training run on a GPU instance type → the Kubernetes objects that run it.

Plain dicts for server-side apply, like serving/manifests.py, and placed the way a deployment's replica
is: the instance type's node labels as a nodeSelector, the GPU taint tolerated, the whole instance's GPUs,
CPU and memory requested (serving.manifests.gpu_placement and instance_resources), so the quota, the
price and the scheduler all count a training run as one instance of that type.

- A Secret holds the two presigned object-store URLs the trainer reads its input from and writes its
  output to: they are bearer credentials for one object each, so they stay out of the Job's spec (which
  more people may read than Secrets).
- A batch/v1 Job runs `python3 -m learning.training.job` in the trainer image (the Dockerfile's `trainer`
  target: the pinned engine image with PEFT and TRL). restartPolicy OnFailure restarts the container in
  the same pod, whose work volume keeps the checkpoints, so a crash resumes from the last one; the
  backoff limit bounds how often; the deadline bounds how long GPUs are held.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from serving.manifests import (
    HUB_TOKEN_KEY,
    MANAGED_BY,
    ORGANIZATION_LABEL,
    Manifest,
    gpu_placement,
    hf_token_env,
    instance_resources,
    label_value,
    model_cache_volume,
    weights_volume,
)
from serving.spec import ClusterSettings, InstanceSpec, ModelSpec

TUNING_JOB_LABEL = "marketplace.io/tuning-job-id"
TRAINING_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component=trainer"
COMMAND = ["python3", "-m", "learning.training.job"]
WORK_PATH = "/work"
CACHE_PATH = "/root/.cache/huggingface"
INPUT_KEY, OUTPUT_KEY = "input-url", "output-url"
BACKOFF_LIMIT = 2  # container restarts (each resumes from the last checkpoint) before the Job fails
FINISHED_TTL_SECONDS = 86_400  # a finished Job stays a day for people to read; the result is in the store
MAX_NAME = 63  # the Job controller copies the name into a label of its pods


@dataclass(frozen=True)
class TrainingJobSpec:
    job_id: int
    organization: str  # organisation slug
    name: str  # the model the run makes
    instance: InstanceSpec
    model: ModelSpec  # the student's base: whether the Hub gates it, and the volume of a folder's
    image: str
    input_url: str  # presigned GET of the run's input (learning.training.job)
    output_url: str  # presigned PUT of its output
    deadline_seconds: int = 86_400


def object_name(spec: TrainingJobSpec) -> str:
    """`tune-<organization>-<name>-<job id>`, a DNS label of at most 63 characters; the id keeps it unique."""
    suffix = f"-{spec.job_id}"
    name = re.sub(r"[^a-z0-9-]+", "-", f"tune-{spec.organization}-{spec.name}".lower()).strip("-")
    return f"{name[: MAX_NAME - len(suffix)].rstrip('-')}{suffix}"


def labels(spec: TrainingJobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "trainer",
        "app.kubernetes.io/instance": object_name(spec),
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/part-of": "model-marketplace",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TUNING_JOB_LABEL: str(spec.job_id),
        ORGANIZATION_LABEL: label_value(spec.organization),
    }


def _metadata(spec: TrainingJobSpec, cluster: ClusterSettings) -> dict[str, Any]:
    return {"name": object_name(spec), "namespace": cluster.namespace, "labels": labels(spec)}


def build_secret(spec: TrainingJobSpec, cluster: ClusterSettings) -> Manifest:
    def encoded(value: str) -> str:
        return base64.b64encode(value.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, cluster),
        "type": "Opaque",
        "data": {
            INPUT_KEY: encoded(spec.input_url),
            OUTPUT_KEY: encoded(spec.output_url),
            **({HUB_TOKEN_KEY: encoded(spec.model.hub_token)} if spec.model.hub_token else {}),
        },
    }


def _env(spec: TrainingJobSpec, cluster: ClusterSettings) -> list[dict[str, Any]]:
    def from_secret(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": object_name(spec), "key": key}}

    return [
        {"name": "TRAINING_INPUT_URL", "valueFrom": from_secret(INPUT_KEY)},
        {"name": "TRAINING_OUTPUT_URL", "valueFrom": from_secret(OUTPUT_KEY)},
        {"name": "TRAINING_WORK_DIR", "value": WORK_PATH},
        {"name": "HF_HOME", "value": CACHE_PATH},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # progress lines reach the pod's log as written
        *hf_token_env(spec.model, cluster, object_name(spec)),
    ]


def build_job(spec: TrainingJobSpec, cluster: ClusterSettings) -> Manifest:
    mounts: list[dict[str, Any]] = [
        {"name": "work", "mountPath": WORK_PATH},
        {"name": "model-cache", "mountPath": CACHE_PATH},
    ]
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}, model_cache_volume(cluster)]
    weights = weights_volume(spec.model, cluster)  # a student base registered from a volume's folder
    if weights is not None:
        volumes.append(weights[0])
        mounts.append(weights[1])
    container = {
        "name": "trainer",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": COMMAND,
        "env": _env(spec, cluster),
        "resources": instance_resources(spec.instance),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "OnFailure",
        "containers": [container],
        "volumes": volumes,
        **gpu_placement(spec.instance, cluster),
        "automountServiceAccountToken": False,  # the trainer never talks to the API server
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": spec.deadline_seconds,
            "ttlSecondsAfterFinished": FINISHED_TTL_SECONDS,
            "template": {"metadata": {"labels": labels(spec)}, "spec": pod_spec},
        },
    }


def build_training_objects(spec: TrainingJobSpec, cluster: ClusterSettings) -> list[Manifest]:
    """The Secret first: the Job's pod reads it when its container starts."""
    return [build_secret(spec, cluster), build_job(spec, cluster)]
