"""Tuning jobs: create, cancel, the status machine and its sentences, and the claim a worker holds.

A distillation job's steps: QUEUED → GENERATING (the teacher answers the dataset through the gateway) →
TRAINING (a LoRA student on the teacher's answers) → EVALUATING (student, teacher and base on the
held-out part, with task scorers) → REGISTERING (the adapter becomes a custom model) → SUCCEEDED. A
fine-tuning job has no GENERATING step: it learns the dataset's reference answers. Any step may end in
FAILED (with a sentence and a reason) or CANCELLED. Every change is a conditional update (`move`) with an
event; the work itself is learning.tuning_run's.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from rest_framework import exceptions

from learning import datasets, scorers
from learning.choices import DatasetPart
from learning.evaluations import deployments_named
from learning.models import Dataset, TuningJob, TuningJobEvent, TuningKind, TuningStatus
from learning.storage import S3Store, get_store
from learning.training.spec import SpecError, TrainingSpec
from marketplace.accounts.models import Organization
from marketplace.catalog import custom_models
from marketplace.catalog.choices import CustomModelSource
from marketplace.catalog.models import InstanceType, ModelCard
from serving.choices import Backend, DeploymentStatus
from serving.models import Deployment
from serving.services import check_model_and_instance, check_training_quota, in_cluster_volume

LEASE_SECONDS = 120
MAX_CONCURRENCY = 16
MAX_TRAIN_RECORDS = 10_000
MAX_INSTRUCTIONS = 20_000
FINISHED = (TuningStatus.SUCCEEDED, TuningStatus.FAILED, TuningStatus.CANCELLED)
ACTIVE = (
    TuningStatus.QUEUED,
    TuningStatus.GENERATING,
    TuningStatus.TRAINING,
    TuningStatus.EVALUATING,
    TuningStatus.REGISTERING,
)
# The steps in order, for the pages: (status, what it does).
STEPS = (
    (TuningStatus.GENERATING, "The teacher answers the dataset's prompts"),
    (TuningStatus.TRAINING, "A LoRA adapter learns the answers"),
    (TuningStatus.EVALUATING, "Student, teacher and base answer the held-out part"),
    (TuningStatus.REGISTERING, "The adapter becomes a custom model"),
)


class Refused(ValueError):
    """A request the tuning service turns down; `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- The status machine -----------------------------------------------------------------------------------


def move(job_id: int, sources: tuple[str, ...], target: str, message: str, **fields: Any) -> bool:
    """Move the job to `target` if it is in one of `sources`, with an event. Returns whether it moved."""
    with transaction.atomic():
        moved = TuningJob.objects.filter(pk=job_id, status__in=sources).update(
            status=target, status_message=message, **fields
        )
        if moved:
            TuningJobEvent.objects.create(job_id=job_id, status=target, message=message)
    return bool(moved)


def fail(job_id: int, message: str, reason: str) -> bool:
    return move(
        job_id, ACTIVE, TuningStatus.FAILED, message, failure_reason=reason, finished_at=timezone.now(),
        lease_until=None,
    )  # fmt: skip


def first_step(kind: str) -> str:
    return TuningStatus.GENERATING if kind == TuningKind.DISTILLATION else TuningStatus.TRAINING


def steps_of(job: TuningJob) -> list[dict[str, str]]:
    """The job's steps with where each stands: done, current, waiting or skipped (for the pages)."""
    order: list[str] = [str(status) for status, _ in STEPS]
    current = job.status
    reached = (
        order.index(current)
        if current in order
        else (len(order) if current == TuningStatus.SUCCEEDED else -1)
    )
    last_event = None
    if current in (TuningStatus.FAILED, TuningStatus.CANCELLED):
        # where it stopped: the last step it entered
        entered = [event.status for event in job.events.all() if event.status in order]
        last_event = entered[-1] if entered else None
        reached = order.index(last_event) if last_event else -1
    rows = []
    for index, (status, text) in enumerate(STEPS):
        if status == TuningStatus.GENERATING and job.kind == TuningKind.FINE_TUNING:
            state = "skipped"
        elif index < reached:
            state = "done"
        elif index == reached:
            state = "stopped" if last_event else "current"
        else:
            state = "waiting"
        rows.append({"status": status, "label": TuningStatus(status).label, "text": text, "state": state})
    return rows


# --- Creating and cancelling -------------------------------------------------------------------------------


def student_weights(card: ModelCard) -> Path | None:
    """The folder of the student base's weights on this machine, or None: a custom model registered from
    a folder, or a catalog model `make engine` prepared."""
    from serving.local import engine_env
    from serving.services import weights_path

    folder = weights_path(card)
    if folder:
        return Path(folder) if (Path(folder) / "config.json").is_file() else None
    return engine_env.model_path(engine_env.engine_dir(), card.slug)


def check_student_base(organization: Organization, slug: str) -> ModelCard:
    card = ModelCard.objects.visible_to(organization).filter(slug=slug).first()
    if card is None:
        raise Refused("student_base", f"No model with the slug '{slug}' (see /api/models/).")
    custom = getattr(card, "custom_model", None) if card.organization_id else None
    if custom is not None and custom.source == CustomModelSource.ADAPTER:
        raise Refused("student_base", f"{card.name} is itself an adapter: choose the model it adapts.")
    if not card.servable or "completions" not in card.routes:
        raise Refused(
            "student_base", f"{card.name} is not a text generation model a LoRA adapter can train on."
        )
    stored = custom is not None and custom.source == CustomModelSource.STORE
    if settings.SERVING_BACKEND == Backend.KUBERNETES:
        if stored:
            raise Refused(
                "student_base",
                f"{card.name} is read from an object store, which a training Job does not load from: "
                "register the same weights from the Hugging Face Hub or a volume folder to train on them.",
            )
        folder = custom.path if custom is not None and custom.source == CustomModelSource.PATH else ""
        if folder and not in_cluster_volume(folder):
            raise Refused(
                "student_base",
                f"{card.name} was registered from {folder}, a folder in none of the volumes a cluster's pods "
                "mount (CUSTOM_MODEL_VOLUMES): register the same weights from the Hugging Face Hub or a "
                "volume folder to train on them.",
            )
        return card  # the training Job reads the weights as a deployment's engine does
    if not card.cpu_capable:
        raise Refused(
            "student_base",
            f"{card.name} is too large to train on this machine's CPUs; choose a CPU-capable model, or run "
            "the platform on a cluster (SERVING_BACKEND=kubernetes) to train it on a GPU instance type.",
        )
    if student_weights(card) is None:
        raise Refused(
            "student_base",
            f"{card.name} is read from an object store and this machine holds no copy of it yet: deploy it "
            "once (the worker copies its weights, and the copy stays), then train on it."
            if stored
            else f"{card.name}'s weights are not on this machine: train on a model `make engine` prepares "
            "or a custom model registered from a folder.",
        )
    return card


def check_instance_type(card: ModelCard, slug: str) -> InstanceType | None:
    """Where the student trains: on this machine's CPUs (no instance type, the local backend), or as a
    Job on a GPU instance type the student fits (the kubernetes backend), with the same fit rules as a
    deployment and an object store the Job can reach."""
    backend = settings.SERVING_BACKEND
    if backend == Backend.LOCAL:
        if slug:
            raise Refused(
                "instance_type",
                "This platform runs on this machine (SERVING_BACKEND=local) and trains on its CPUs: leave "
                "instance_type empty. Training on a GPU instance type needs SERVING_BACKEND=kubernetes.",
            )
        return None
    if not slug:
        raise Refused(
            "instance_type",
            "This platform trains on the cluster (SERVING_BACKEND=kubernetes): choose the GPU instance type "
            "the training Job runs on (see /api/instance-types/).",
        )
    instance = InstanceType.objects.filter(slug=slug).first()
    if instance is None:
        raise Refused("instance_type", f"No instance type with the slug '{slug}' (see /api/instance-types/).")
    try:
        check_model_and_instance(card, instance, backend)
    except exceptions.ValidationError as error:
        raise Refused("instance_type", _problem(error)) from None
    if not isinstance(get_store(), S3Store):
        raise Refused(
            "instance_type",
            "A training Job reads its data from and writes its adapter to the object store, and this "
            "platform keeps objects in a folder no pod can reach: set OBJECT_STORE_BUCKET (and its "
            "endpoint and keys) to an S3-compatible store the cluster reaches.",
        )
    return instance


def _problem(error: exceptions.ValidationError) -> str:
    """The first message of a serving check's refusal ({field: [message]})."""
    detail = error.detail
    problems = next(iter(detail.values())) if isinstance(detail, dict) and detail else detail
    return str(problems[0] if isinstance(problems, list) and problems else problems)


def check_scorers(organization: Organization, specs: Any) -> list[dict[str, Any]]:
    """Evaluation scorers the held-out answers get beside the task scorers (learning.scorers: a judge,
    similarity, a regex…), none by default; the deployments they call must be the organisation's."""
    if specs == []:
        return []
    try:
        checked = scorers.check_specs(specs)
    except scorers.SpecError as error:
        raise Refused(error.field, str(error)) from None
    missing = sorted(
        scorers.deployments_of(checked)
        - set(deployments_named(organization, scorers.deployments_of(checked)))
    )
    if missing:
        raise Refused(
            "scorers",
            f"No deployment named {', '.join(missing)} in '{organization.slug}' (see /api/deployments/).",
        )
    return checked


def check_teacher(organization: Organization, kind: str, name: str) -> str:
    if kind == TuningKind.FINE_TUNING:
        if name:
            raise Refused(
                "teacher_deployment", "A fine-tuning job learns the dataset's references: it has no teacher."
            )
        return ""
    if not name:
        raise Refused("teacher_deployment", "A distillation job needs a teacher: name a deployment.")
    deployment = (
        Deployment.objects.filter(organization=organization, name=name)
        .exclude(status=DeploymentStatus.DELETED)
        .first()
    )
    if deployment is None:
        raise Refused(
            "teacher_deployment",
            f"No deployment named {name} in '{organization.slug}'; see /api/deployments/.",
        )
    if deployment.status != DeploymentStatus.READY:
        raise Refused(
            "teacher_deployment",
            f"{name} is {deployment.get_status_display().lower()}, not ready: wait until it serves.",
        )
    return name


def student_prompt(record: dict[str, Any]) -> str | None:
    """What the student is asked for a record: its one user message (system messages are the teacher's
    context, which the student learns to do without); None for a conversation of several turns."""
    turns = [message for message in record["messages"] if message["role"] != "system"]
    if len(turns) != 1 or turns[0]["role"] != "user":
        return None
    return str(turns[0]["content"])


def check_dataset(organization: Organization, dataset_id: int, kind: str) -> Dataset:
    dataset = Dataset.objects.filter(pk=dataset_id, organization=organization).first()
    if dataset is None:
        raise Refused("dataset", f"No dataset {dataset_id} in '{organization.slug}'.")
    if dataset.train_records == 0:
        raise Refused(
            "dataset", f"The train part of {dataset} holds no records: the student has nothing to learn."
        )
    if dataset.heldout_records == 0:
        raise Refused(
            "dataset",
            f"{dataset} holds nothing out of training: upload it again with a held-out fraction above 0, "
            "so the student can be evaluated on prompts it did not learn.",
        )
    if dataset.train_records > MAX_TRAIN_RECORDS:
        raise Refused(
            "dataset", f"The train part of {dataset} holds {dataset.train_records} records; at most "
            f"{MAX_TRAIN_RECORDS} train on this machine.",
        )  # fmt: skip
    try:
        records = datasets.load_part(get_store(), dataset, DatasetPart.ALL)
    except datasets.RecordsUnavailable as error:
        raise Refused("dataset", str(error)) from None
    for record in records:
        if student_prompt(record) is None:
            raise Refused(
                "dataset",
                f"Record {record['id']} of {dataset} is a conversation of several turns; the student learns "
                "single prompts (system messages aside).",
            )
        if kind == TuningKind.FINE_TUNING and not (record.get("reference") or "").strip():
            raise Refused(
                "dataset",
                f"Record {record['id']} of {dataset} has no reference answer, which fine-tuning learns; "
                "choose a dataset with references, or distil from a teacher.",
            )
    return dataset


def create_tuning_job(
    *,
    organization: Organization,
    user: Any,
    name: str,
    kind: str,
    dataset_id: int,
    student_base: str,
    teacher_deployment: str = "",
    teacher_instructions: str = "",
    hyperparameters: Any = None,
    max_tokens: int = 256,
    concurrency: int = 4,
    instance_type: str = "",
    scorer_specs: Any = None,
) -> TuningJob:
    """Check every field, save the job QUEUED and, on commit, hand it to a worker. Refused names the
    field and what to do; nothing is written when anything is refused."""
    from learning.tasks import run_tuning_job

    try:
        custom_models.check_name(organization, name)
    except exceptions.ValidationError as error:
        detail = error.detail if isinstance(error.detail, dict) else {}
        raise Refused("name", str(next(iter(detail.get("name", ["Not a usable name."]))))) from None
    if TuningJob.objects.filter(organization=organization, name=name, status__in=ACTIVE).exists():
        raise Refused("name", f"A tuning job of '{organization.slug}' already makes a model named '{name}'.")
    try:
        spec = TrainingSpec.from_dict(hyperparameters if hyperparameters is not None else {})
    except SpecError as error:
        raise Refused("hyperparameters", str(error)) from None
    if len(teacher_instructions) > MAX_INSTRUCTIONS:
        raise Refused("teacher_instructions", f"At most {MAX_INSTRUCTIONS} characters.")
    if teacher_instructions and kind == TuningKind.FINE_TUNING:
        raise Refused("teacher_instructions", "A fine-tuning job has no teacher to instruct.")
    specs = check_scorers(organization, scorer_specs if scorer_specs is not None else [])
    teacher = check_teacher(organization, kind, teacher_deployment)
    card = check_student_base(organization, student_base)
    instance = check_instance_type(card, instance_type)
    dataset = check_dataset(organization, dataset_id, kind)
    with transaction.atomic():
        reserved = 0
        if instance is not None:
            try:
                reserved = check_training_quota(organization, instance)
            except exceptions.ValidationError as error:
                raise Refused("instance_type", _problem(error)) from None
        job = TuningJob.objects.create(
            instance_type=instance, reserved_gpus=reserved, gpu_model=instance.gpu_model if instance else "",
            scorers=specs,
            organization=organization, name=name, kind=kind, teacher_deployment=teacher,
            teacher_instructions=teacher_instructions, student_base=card, dataset=dataset,
            hyperparameters=spec.to_dict(), max_tokens=max_tokens,
            concurrency=min(max(1, concurrency), MAX_CONCURRENCY), status_message="Waiting for a worker.",
            created_by=user if getattr(user, "pk", None) else None,
        )  # fmt: skip
        TuningJobEvent.objects.create(job=job, status=TuningStatus.QUEUED, message=job.status_message)
        transaction.on_commit(lambda: run_tuning_job.delay(job.pk))
    return job


def cancel_tuning_job(job: TuningJob) -> bool:
    """Cancel a job that has not finished; a running step stops at its next look at the status (training
    within a step, keeping its checkpoint). False when it had already finished."""
    return move(
        job.pk, ACTIVE, TuningStatus.CANCELLED, f"Cancelled while {job.get_status_display().lower()}.",
        finished_at=timezone.now(), lease_until=None,
    )  # fmt: skip


# --- The worker's claim ------------------------------------------------------------------------------------


def claim(job_id: int) -> TuningJob | None:
    """The job under this worker's lease, QUEUED moved to its first step; None when it is finished or
    held by a live worker."""
    job = TuningJob.objects.filter(pk=job_id).first()
    if job is None or job.status in FINISHED:
        return None
    now = timezone.now()
    target = first_step(job.kind) if job.status == TuningStatus.QUEUED else job.status
    resumed = job.status != TuningStatus.QUEUED
    message = (
        f"Resumed {TuningStatus(target).label.lower()} where the last worker stopped."
        if resumed
        else dict(STEPS)[TuningStatus(target)] + "."
    )
    with transaction.atomic():
        claimed = (
            TuningJob.objects.filter(pk=job_id, status=job.status)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .update(
                status=target,
                status_message=message,
                lease_until=now + datetime.timedelta(seconds=LEASE_SECONDS),
                started_at=Coalesce("started_at", now),
            )
        )
        if not claimed:
            return None
        TuningJobEvent.objects.create(job_id=job_id, status=target, message=message)
    job.refresh_from_db()
    return job


def renew(job_id: int, status: str) -> bool:
    """Extend the lease while the job is still at `status`; False once it moved (cancelled)."""
    until = timezone.now() + datetime.timedelta(seconds=LEASE_SECONDS)
    return bool(TuningJob.objects.filter(pk=job_id, status=status).update(lease_until=until))


def unattended(queued_grace_seconds: int = 600) -> list[int]:
    """Jobs that should be running and no worker holds: a step with a lapsed lease, or QUEUED past the
    grace (its task lost before a worker took it)."""
    now = timezone.now()
    working = [status for status in ACTIVE if status != TuningStatus.QUEUED]
    lapsed = Q(status__in=working) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    waiting = Q(status=TuningStatus.QUEUED) & Q(
        created_at__lt=now - datetime.timedelta(seconds=queued_grace_seconds)
    )
    return list(TuningJob.objects.filter(lapsed | waiting).values_list("pk", flat=True)[:100])


def held_elsewhere(job_id: int) -> bool:
    """Whether the job is still to be worked on (a worker's lease holds it, or has just lapsed)."""
    return TuningJob.objects.filter(pk=job_id, status__in=ACTIVE).exists()


def work_dir_for(job: TuningJob) -> Path:
    """Where the job's run lives: a folder of the platform's own (custom_models.tuning_runs_root), which only
    this job registers its adapter from."""
    return custom_models.tuning_runs_root() / f"{job.organization_id}-{job.pk}"
