"""Celery tasks of the learning side: invocation logs (written and expired), evaluations and router
trainings (run, and resumed when no worker holds them), shadow-call samples (judged, queued again when
left pending). The periodic ones are in CELERY_BEAT_SCHEDULE; every one is idempotent."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from learning import writer
from learning.storage import get_store

log = logging.getLogger(__name__)


@shared_task(acks_late=True, expires=60)
def write_invocation_logs() -> int:
    """Move queued invocation records to the object store; skipped when a run still holds the lock.
    Returns how many records were stored."""
    if not cache.add("learning:write-logs:lock", "1", timeout=600):
        return 0
    try:
        connection = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)
        return writer.write_queued(connection, get_store()).records
    finally:
        cache.delete("learning:write-logs:lock")


@shared_task(acks_late=True, expires=600)
def expire_invocation_logs() -> int:
    """Delete invocation log objects past their organisation's retention, with their index rows, and
    the routers' shadow-call samples past it too (they are kept traffic as well). Returns how many
    objects and samples were deleted."""
    from learning.router_service import expire_samples

    if not cache.add("learning:expire-logs:lock", "1", timeout=3600):
        return 0
    try:
        return writer.expire(get_store()) + expire_samples()
    finally:
        cache.delete("learning:expire-logs:lock")


@shared_task(
    acks_late=True, autoretry_for=(Exception,), retry_backoff=2, retry_backoff_max=300, max_retries=10
)
def delete_log_objects(keys: list[str]) -> int:
    """Delete stored objects whose index rows are already gone (their organisation was deleted).
    Deleting a missing object is not an error, so a retry after a partial run is harmless."""
    store = get_store()
    for key in keys:
        store.delete(key)
    return len(keys)


@shared_task(acks_late=True)
def run_evaluation(evaluation_id: int) -> str:
    """Run or resume an evaluation (learning.evaluations.run); a second delivery while a worker holds the
    evaluation does nothing."""
    from learning import evaluations

    return evaluations.run_blocking(evaluation_id)


@shared_task(expires=60)
def resume_evaluations() -> int:
    """The safety net behind `run_evaluation`: hand every evaluation that no live worker holds (a lost
    task, a killed worker whose lease lapsed) to a worker again. Returns how many were handed on."""
    from learning.evaluations import unattended

    ids = unattended()
    for evaluation_id in ids:
        run_evaluation.delay(evaluation_id)
    return len(ids)


@shared_task(acks_late=True)
def train_router(training_id: int) -> str:
    """Train (or finish training) a router (learning.router_training.run); a second delivery while a
    worker holds the training, or after it finished, does nothing."""
    from learning import router_training

    return router_training.run(training_id)


@shared_task(
    acks_late=True,
    autoretry_for=(ConnectionError,),  # learning.router_training.JudgeUnavailable among them
    retry_backoff=2,
    retry_backoff_max=300,
    max_retries=5,
)
def score_router_samples(sample_ids: list[int]) -> int:
    """Judge shadow-call samples into training targets (learning.router_training.score_samples);
    samples already scored are skipped, so a retry judges only the rest. Returns how many were scored."""
    from learning import router_training

    return router_training.score_samples(sample_ids)


@shared_task(expires=60)
def resume_router_samples() -> int:
    """The safety net behind `score_router_samples`: queue again every sample still unjudged after a
    grace (a lost task, or retries spent while the judge was unavailable). Returns how many."""
    from learning.router_training import pending_samples

    ids = pending_samples()
    if ids:
        score_router_samples.delay(ids)
    return len(ids)


@shared_task(expires=60)
def resume_router_trainings() -> int:
    """The safety net behind `train_router`: hand every training no live worker holds (a lost task, a
    killed worker whose lease lapsed) to a worker again. Returns how many were handed on."""
    from learning.router_training import unattended

    ids = unattended()
    for training_id in ids:
        train_router.delay(training_id)
    return len(ids)


@shared_task(bind=True, acks_late=True, max_retries=90)
def run_tuning_job(self: Any, job_id: int) -> str:
    """Run or resume a tuning job (learning.tuning_run.run); a resumed job redoes no finished step. A
    delivery while a worker holds the job's lease looks again once a lease could have lapsed: the task of
    a killed worker is redelivered at once, while its lease still runs, and must not be dropped then."""
    from learning import tuning, tuning_run

    status = tuning_run.run(job_id)
    if not status and tuning.held_elsewhere(job_id):
        raise self.retry(countdown=tuning.LEASE_SECONDS)
    return status


@shared_task(expires=60)
def resume_tuning_jobs() -> int:
    """The safety net behind `run_tuning_job`: hand every tuning job no live worker holds (a lost task, a
    killed worker whose lease lapsed) to a worker again. Returns how many were handed on."""
    from learning.tuning import unattended

    ids = unattended()
    for job_id in ids:
        run_tuning_job.delay(job_id)
    if settings.SERVING_BACKEND == "kubernetes":
        from learning.tuning_kube import delete_abandoned_runs
        from serving.backends.base import PermanentBackendError, TransientBackendError

        try:
            delete_abandoned_runs()
        except (PermanentBackendError, TransientBackendError):
            log.warning("Abandoned training Jobs could not be looked for", exc_info=True)
    return len(ids)
