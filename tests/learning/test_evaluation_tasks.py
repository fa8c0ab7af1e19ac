"""The evaluation's Celery tasks: registered, the resume scheduled by beat, and what the resume picks up
(a running evaluation whose lease lapsed, a pending one whose task was lost) and what it leaves alone.
Deleting an organisation removes its datasets' objects too."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.utils import timezone

from learning import datasets, evaluations
from learning.choices import DatasetSource, EvaluationStatus
from learning.models import Evaluation
from learning.storage import FolderStore
from learning.tasks import delete_log_objects
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

RECORDS = [{"messages": [{"role": "user", "content": "Hi"}], "reference": "Hello"}]


def test_the_run_and_the_resume_are_celery_tasks_and_beat_runs_the_resume(settings: Any) -> None:
    from marketplace.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "learning.tasks.run_evaluation" in app.tasks
    assert (
        "learning.tasks.resume_evaluations" in app.tasks and "learning.tasks.resume_evaluations" in scheduled
    )


@pytest.fixture
def evaluation(acme: Organization, owner: AbstractUser, configured_store: FolderStore) -> Evaluation:
    make_deployment(acme, "small")
    dataset = datasets.save(
        configured_store, organization_id=acme.pk, name="hi", records=RECORDS, source=DatasetSource.UPLOAD,
        heldout_fraction=0.0, seed=0,
    )  # fmt: skip
    return evaluations.create_evaluation(
        organization=acme, user=owner, dataset=dataset, deployments=["small"],
        scorer_specs=[{"kind": "exact_match"}], part="all",
    )  # fmt: skip


def set_state(
    evaluation: Evaluation, status: str, lease_seconds: float | None, age_seconds: float = 0
) -> None:
    now = timezone.now()
    lease = None if lease_seconds is None else now + datetime.timedelta(seconds=lease_seconds)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=status, lease_until=lease, created_at=now - datetime.timedelta(seconds=age_seconds)
    )


@pytest.mark.parametrize(
    ("status", "lease_seconds", "age_seconds", "resumed"),
    [
        (EvaluationStatus.RUNNING, -1, 0, True),  # its worker died: the lease lapsed
        (EvaluationStatus.RUNNING, 30, 0, False),  # a live worker holds it
        (EvaluationStatus.PENDING, None, 3600, True),  # its task was lost long ago
        (EvaluationStatus.PENDING, None, 5, False),  # its task is on its way
        (EvaluationStatus.CANCELLED, None, 3600, False),
        (EvaluationStatus.SUCCEEDED, -1, 3600, False),
    ],
)
def test_the_resume_picks_up_only_what_no_worker_holds(
    evaluation: Evaluation, status: str, lease_seconds: float | None, age_seconds: float, resumed: bool
) -> None:
    set_state(evaluation, status, lease_seconds, age_seconds)
    assert (evaluation.pk in evaluations.unattended()) is resumed


def test_deleting_an_organisation_deletes_its_dataset_objects_after_commit(
    evaluation: Evaluation, acme: Organization, configured_store: FolderStore,
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    monkeypatch.setattr(delete_log_objects, "delay", lambda keys: delete_log_objects.apply(args=[keys]))
    assert len(configured_store.list("datasets/")) == 1
    with django_capture_on_commit_callbacks(execute=True):
        acme.delete()
    assert configured_store.list("datasets/") == []
