"""A training no worker holds is taken over; a deleted router's stored predictors are deleted after
the delete commits (alone or with its organisation)."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser
from django.utils import timezone

from learning import predictors, router_service, router_training, tasks
from learning.models import Router, RouterTraining, RouterVersion, TrainingStatus
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from tests.learning.routerdata import Setup, make_evaluation, router_fields


def test_the_training_and_its_resume_are_celery_tasks_and_beat_runs_the_resume(settings: Any) -> None:
    from marketplace.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "learning.tasks.train_router" in app.tasks
    assert "learning.tasks.resume_router_trainings" in app.tasks
    assert "learning.tasks.resume_router_trainings" in scheduled


@pytest.fixture
def setup(acme: Organization, configured_store: FolderStore) -> Setup:
    return make_evaluation(configured_store, acme, count=60)


@pytest.fixture
def training(setup: Setup, owner: AbstractUser) -> RouterTraining:
    router = router_service.create_router(organization=setup.organization, user=owner, **router_fields())
    return router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )


@pytest.mark.parametrize(
    ("status", "lease_seconds", "age_seconds", "resumed"),
    [
        (TrainingStatus.RUNNING, -1, 0, True),  # its worker died: the lease lapsed
        (TrainingStatus.RUNNING, 60, 0, False),  # a live worker holds it
        (TrainingStatus.PENDING, None, 3600, True),  # its task was lost
        (TrainingStatus.PENDING, None, 5, False),  # its task is on its way
        (TrainingStatus.SUCCEEDED, -1, 3600, False),
        (TrainingStatus.FAILED, None, 3600, False),
    ],
)
def test_the_resume_picks_up_only_trainings_no_worker_holds(
    training: RouterTraining, status: str, lease_seconds: float | None, age_seconds: float, resumed: bool
) -> None:
    now = timezone.now()
    RouterTraining.objects.filter(pk=training.pk).update(
        status=status,
        lease_until=None if lease_seconds is None else now + datetime.timedelta(seconds=lease_seconds),
        created_at=now - datetime.timedelta(seconds=age_seconds),
    )
    assert (training.pk in router_training.unattended()) is resumed


def test_a_training_whose_worker_died_is_finished_by_the_next_run(training: RouterTraining) -> None:
    RouterTraining.objects.filter(pk=training.pk).update(
        status=TrainingStatus.RUNNING, lease_until=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert tasks.train_router.apply(args=[training.pk]).get() == TrainingStatus.SUCCEEDED
    assert RouterVersion.objects.filter(training=training).count() == 1


def test_a_training_held_by_a_live_worker_is_left_alone(training: RouterTraining) -> None:
    RouterTraining.objects.filter(pk=training.pk).update(
        status=TrainingStatus.RUNNING, lease_until=timezone.now() + datetime.timedelta(seconds=60)
    )
    assert tasks.train_router.apply(args=[training.pk]).get() == ""
    assert not RouterVersion.objects.exists()


@pytest.mark.parametrize("delete", ["router", "organization"])
def test_deleting_a_router_deletes_its_stored_predictors_after_commit(
    training: RouterTraining, configured_store: FolderStore, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any, delete: str,
) -> None:  # fmt: skip
    tasks.train_router.apply(args=[training.pk])
    key = RouterVersion.objects.get(training=training).key
    assert configured_store.get(key)
    monkeypatch.setattr(
        tasks.delete_log_objects, "delay", lambda keys: tasks.delete_log_objects.apply(args=[keys])
    )
    router = Router.objects.get(pk=training.router_id)
    with django_capture_on_commit_callbacks(execute=True):
        (router if delete == "router" else router.organization).delete()
    assert configured_store.list("routers/") == []


def test_a_router_deleted_during_its_training_gets_no_predictor_stored(
    training: RouterTraining, configured_store: FolderStore
) -> None:
    claimed = router_training.claim(training.pk)
    assert claimed is not None
    Router.objects.filter(pk=claimed.router_id).delete()
    predictor = predictors.NgramPredictor.fit(["small", "large"], ["a b", "c d"], np.array([[1, 1], [0, 1]]))
    with pytest.raises(router_training.TrainingFailed, match="deleted"):
        router_training.write_version(claimed, "ngram", predictor, {})
    assert configured_store.list("routers/") == []
