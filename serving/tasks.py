"""Celery tasks of the control plane. Every task takes an id, re-reads the row and applies the desired
state, so running one twice (a retry, a redelivery after a worker died) is harmless.

The periodic `reconcile` is the source of truth: it compares what the backends run with the rows, moves
statuses, re-applies what a lost task left undone, finishes deletions and removes orphaned objects.
Tasks only make that faster.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from learning.storage import StoreAccessError
from marketplace.catalog import custom_models
from serving import costs, services
from serving.backends import get_backend
from serving.backends.base import ObservationPass, PermanentBackendError, TransientBackendError
from serving.choices import LIVE_STATUSES, Backend, DeploymentStatus
from serving.models import Deployment
from serving.status import assess

log = logging.getLogger(__name__)

# A row whose objects should exist but do not, for this long, gets its provisioning re-enqueued: the task
# that should have done it was lost (worker killed, broker restarted).
LOST_TASK_GRACE = timedelta(seconds=15)
RETRY = {
    "autoretry_for": (TransientBackendError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


def _load(deployment_id: int) -> Deployment | None:
    return (
        Deployment.objects.select_related("organization", "model_card", "instance_type")
        .filter(pk=deployment_id)
        .first()
    )


# What tenants read when the platform itself is misconfigured: the details (hosts, file paths) are for
# the platform's admins, in the worker's log.
PLATFORM_FAILURE = (
    "The platform could not run this deployment on its cluster: a platform admin can find the reason in "
    "the worker's log. Deleting and creating the deployment again retries."
)
PLATFORM_UNAVAILABLE = "The platform cannot reach its cluster right now; it keeps trying."


def _fail(deployment_id: int, error: Exception) -> None:
    """FAILED with the reason where it is one a tenant may read (the cluster lacks KEDA, the serving
    namespace is missing), else a sentence that sends them to a platform admin."""
    log.warning("deployment %s failed: %s", deployment_id, error)
    public = getattr(error, "public", None)
    message = (
        f"The platform could not run this deployment on its cluster: {public.rstrip('.')}. A platform "
        "admin can fix this; deleting and creating the deployment again retries."
        if public
        else PLATFORM_FAILURE
    )
    services.transition(
        deployment_id, to=DeploymentStatus.FAILED, message=message, allowed_from=LIVE_STATUSES
    )


# How often a copy of weights says how far it got (a plain update: the page polls it; no event per step).
COPY_PROGRESS_SECONDS = 2.0


def _copy_store_weights(deployment: Deployment, *, last_attempt: bool) -> str:
    """On this machine, a model registered from an object store runs from a copy of its weights: bring the
    copy up to date (only what changed is copied), showing its progress on the deployment's page.

    Returns "copied" (or "" when the deployment needs no copy) to go on and apply it; "copying" when
    another task holds the copy (it applies its own deployment when done; this one is applied by the
    reconciler's next look); "failed" when the store refused, the disk could not take the copy, or the
    store stayed out of reach through every retry (the deployment is then FAILED, saying what to do).
    A store out of reach before the last attempt is a TransientBackendError, retried."""
    custom = services.store_model(deployment.model_card)
    if custom is None or deployment.backend != Backend.LOCAL:
        return ""
    where = f"{deployment.model_card.name}'s weights from {custom.store_uri}"
    services.transition(
        deployment.pk,
        to=DeploymentStatus.PENDING,
        message=f"Copying {where}.",
        allowed_from=(DeploymentStatus.PENDING,),
    )
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if total and (now - last >= COPY_PROGRESS_SECONDS or done >= total):
            last = now
            Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.PENDING).update(
                status_message=f"Copying {where}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB.",
                updated_at=timezone.now(),
            )

    try:
        custom_models.copy_store_weights(custom, progress)
    except custom_models.CopyInProgress:
        return "copying"
    except StoreAccessError as error:
        if error.transient and not last_attempt:
            raise TransientBackendError(error.message) from error
        advice = (
            f"Give {custom.name} a key that reads its folder (on its page, or POST /api/custom-models/"
            f"{custom.pk}/key/): its deployments are then applied again with it."
            if error.about_the_key
            else "Check that the folder still holds the model's files, then delete and create the deployment "
            "again."
        )
        return _copy_failed(deployment, f"{error.message} {advice}")
    except OSError as error:
        return _copy_failed(
            deployment,
            f"Copying {where} to this machine failed: {error.strerror or error}. Make room (or mend the "
            "permissions) under DATA_DIR, then delete and create the deployment again.",
        )
    return "copied"


def _copy_failed(deployment: Deployment, message: str) -> str:
    log.warning("deployment %s: %s", deployment.pk, message)
    services.transition(
        deployment.pk, to=DeploymentStatus.FAILED, message=message, allowed_from=LIVE_STATUSES
    )
    return "failed"


@shared_task(bind=True, acks_late=True, **RETRY)
def provision_deployment(self: Any, deployment_id: int) -> str:
    """Apply the deployment's objects (create or roll out a new generation). Idempotent."""
    deployment = _load(deployment_id)
    if deployment is None or deployment.status not in LIVE_STATUSES:
        return "nothing to do"
    try:
        copy = _copy_store_weights(deployment, last_attempt=self.request.retries >= self.max_retries)
        if copy in ("copying", "failed"):
            return copy
        spec = services.spec_for(deployment)
        get_backend(deployment.backend).apply(spec)
        signed = timezone.now() if services.fetches_adapters(spec) else None  # None: nothing to renew
        Deployment.objects.filter(pk=deployment_id).update(adapter_urls_signed_at=signed)
    except PermanentBackendError as error:
        _fail(deployment_id, error)
        return "failed"
    except TransientBackendError as error:
        if self.request.retries >= self.max_retries:
            _fail(deployment_id, error)
            return "failed"
        raise
    what = f"{deployment.min_replicas or 1} replica(s) of {deployment.model_card.name}"
    services.transition(
        deployment_id,
        to=DeploymentStatus.PROVISIONING,
        message=f"Creating {what} on {deployment.instance_type.name}.",
        allowed_from=(DeploymentStatus.PENDING,),
    )
    return "applied"


@shared_task(bind=True, acks_late=True, **RETRY)
def scale_deployment(self: Any, deployment_id: int) -> str:
    """Bring the backend's replica bounds to the row's. Idempotent."""
    deployment = _load(deployment_id)
    if deployment is None or deployment.status not in LIVE_STATUSES:
        return "nothing to do"
    try:
        get_backend(deployment.backend).scale(services.spec_for(deployment))
    except PermanentBackendError as error:
        _fail(deployment_id, error)
        return "failed"
    return "scaled"


@shared_task(bind=True, acks_late=True, **RETRY)
def delete_deployment(self: Any, deployment_id: int) -> str:
    """Ask the backend to remove the deployment's objects. Not found means done; `reconcile` marks the
    row DELETED once the backend reports nothing left of it."""
    deployment = _load(deployment_id)
    if deployment is None or deployment.status != DeploymentStatus.DELETING:
        return "nothing to do"
    get_backend(deployment.backend).delete(deployment_id)
    return "deleting"


@shared_task(acks_late=True, expires=30)
def reconcile() -> dict[str, int]:
    """One pass over every backend in use; skipped when another pass still runs."""
    if not cache.add("serving:reconcile:lock", "1", timeout=120):
        return {"skipped": 1}
    try:
        counts = reconcile_once()
    finally:
        cache.delete("serving:reconcile:lock")
    # A pass that changed nothing is not news: the console stays readable (Celery's own per-task lines
    # are quiet, marketplace/celery.py).
    changes = {
        name: counts[name]
        for name in ("changed", "reapplied", "renewed", "deleted", "orphans")
        if counts[name]
    }
    if changes:
        log.info("reconcile: %s", ", ".join(f"{number} {name}" for name, number in changes.items()))
    return counts


def reconcile_once() -> dict[str, int]:
    """1. Observe each backend once (one list call per kind).
    2. For each live row: move its status by what was seen, or re-enqueue provisioning a lost task left
       undone.
    3. Finish deletions: re-delete what remains, mark DELETED what is gone.
    4. Delete objects that belong to no live or deleting row (orphans).
    Returns counts for logs and benchmarks.
    """
    counts = {
        "observed": 0, "changed": 0, "reapplied": 0, "renewed": 0, "deleted": 0, "orphans": 0, "api_calls": 0
    }  # fmt: skip
    rows = Deployment.objects.select_related("model_card", "instance_type").filter(
        status__in=(*LIVE_STATUSES, DeploymentStatus.DELETING)
    )
    by_backend: dict[str, list[Deployment]] = {}
    for row in rows:
        by_backend.setdefault(row.backend, []).append(row)
    by_backend.setdefault(settings.SERVING_BACKEND, [])
    for backend_name, backend_rows in by_backend.items():
        backend = get_backend(backend_name)
        try:
            seen = backend.observe()
        except TransientBackendError as error:
            log.warning("reconcile: %s backend unavailable: %s", backend_name, error)
            # The local supervisor's message is for the person running this machine; a cluster's may
            # name hosts and paths that tenants have no business reading.
            _note_unavailable(backend_rows, str(error) if backend_name == "local" else PLATFORM_UNAVAILABLE)
            continue
        counts["api_calls"] += seen.api_calls
        _reconcile_backend(backend, backend_rows, seen, counts)
    return counts


def _note_unavailable(rows: list[Deployment], message: str) -> None:
    for row in rows:
        if (
            row.status in (DeploymentStatus.PENDING, DeploymentStatus.PROVISIONING)
            and row.status_message != message
        ):
            services.transition(
                row.pk, to=DeploymentStatus(row.status), message=message, allowed_from=(row.status,)
            )


def _reconcile_backend(
    backend: Any, rows: list[Deployment], seen: ObservationPass, counts: dict[str, int]
) -> None:
    now = timezone.now()
    _meter(rows, seen, now)
    known = {row.pk for row in rows}
    for row in rows:
        try:
            if row.status == DeploymentStatus.DELETING:
                if row.pk in seen.owned_ids:
                    backend.delete(row.pk)  # again: harmless, and finishes what a lost task began
                else:
                    services.transition(
                        row.pk, to=DeploymentStatus.DELETED, message="Deleted: nothing of it runs any more.",
                        allowed_from=(DeploymentStatus.DELETING,), ready_replicas=0, desired_replicas=0,
                        endpoints=[],
                    )  # fmt: skip
                    counts["deleted"] += 1
                continue
            counts["observed"] += 1
            observation = seen.observations.get(row.pk)
            stale = now - row.status_changed_at > LOST_TASK_GRACE and now - row.updated_at > LOST_TASK_GRACE
            missing = observation is None and row.pk not in seen.owned_ids
            behind = observation is not None and observation.generation not in (None, row.generation)
            if (missing or behind) and row.status != DeploymentStatus.FAILED and stale:
                provision_deployment.delay(row.pk)
                Deployment.objects.filter(pk=row.pk).update(updated_at=now)
                counts["reapplied"] += 1
                continue
            if _renew_adapter_urls(row, now):
                counts["renewed"] += 1
            if observation is None:
                continue
            if row.status == DeploymentStatus.FAILED and observation.ready_replicas == 0:
                continue  # stays failed until a person changes something
            result = assess(
                observation,
                current=DeploymentStatus(row.status),
                generation=row.generation,
                instance_description=row.instance_type.name,
                seconds_in_status=(now - row.status_changed_at).total_seconds(),
            )
            fields: dict[str, Any] = {
                "ready_replicas": result.ready_replicas,
                "desired_replicas": result.desired_replicas,
                "endpoints": list(result.endpoints),
            }
            if result.observed_generation is not None:
                fields["observed_generation"] = result.observed_generation
            unchanged = (
                result.status == row.status
                and result.message == row.status_message
                and all(getattr(row, name) == value for name, value in fields.items())
            )
            if not unchanged and services.transition(
                row.pk, to=result.status, message=result.message, allowed_from=(row.status,),
                generation=row.generation, **fields,
            ):  # fmt: skip
                counts["changed"] += 1
        except TransientBackendError as error:
            log.warning("reconcile: deployment %s: %s", row.pk, error)
        except PermanentBackendError as error:
            _fail(row.pk, error)
    live_or_deleting = (
        set(
            Deployment.objects.filter(
                pk__in=seen.owned_ids, status__in=(*LIVE_STATUSES, DeploymentStatus.DELETING)
            ).values_list("pk", flat=True)
        )
        | known
    )
    for orphan in seen.owned_ids - live_or_deleting:
        try:
            backend.delete(orphan)
            counts["orphans"] += 1
        except (TransientBackendError, PermanentBackendError) as error:
            log.warning("reconcile: cannot delete the objects of deleted deployment %s: %s", orphan, error)


def _renew_adapter_urls(row: Deployment, now: datetime) -> bool:
    """Apply again a cluster deployment whose adapter URLs are older than ADAPTER_URL_RENEW_SECONDS, so its
    Secret holds fresh ones for the next replica to start (a running one fetched its adapters already;
    only the Secret changes, so nothing rolls out). Claimed by a conditional update, so one pass enqueues
    it once. A FAILED row is left as it is: what a person does next applies it again."""
    signed = row.adapter_urls_signed_at
    if signed is None or row.status == DeploymentStatus.FAILED:
        return False
    if (now - signed).total_seconds() < services.ADAPTER_URL_RENEW_SECONDS:
        return False
    if not Deployment.objects.filter(pk=row.pk, adapter_urls_signed_at=signed).update(
        adapter_urls_signed_at=now
    ):
        return False
    provision_deployment.delay(row.pk)
    return True


def _meter(rows: list[Deployment], seen: ObservationPass, at: datetime) -> None:
    """Record the ready replicas this pass saw for every live or deleting row (serving/costs.py meters
    the interval since the previous pass). Nothing seen of a row means none of its replicas is ready."""
    readings = []
    for row in rows:
        observation = seen.observations.get(row.pk)
        readings.append(
            costs.ReplicaReading(
                deployment_id=row.pk,
                organization_id=row.organization_id,
                instance_type_id=row.instance_type_id,
                ready_replicas=observation.ready_replicas if observation is not None else 0,
            )
        )
    costs.record_replicas(readings, at=at)


@shared_task(acks_late=True, expires=60)
def remember_nodes() -> str:
    """Read the backend's nodes for the capacity page and API (serving/capacity.py), so web pods need no
    cluster credentials."""
    from serving import capacity

    snapshot = capacity.remember_nodes()
    return snapshot["error"] or f"{len(snapshot['nodes'])} node(s)"


@shared_task(acks_late=True, expires=60)
def flush_usage() -> int:
    """Move queued usage records from Redis to PostgreSQL in batches; skipped when a flush still runs
    (the flush holds a lock of its own in Redis that a flusher which lost Redis cannot leave stuck:
    serving/gateway/metering.py)."""
    import redis

    from serving.gateway.metering import flush_usage as flush

    connection = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)
    try:
        written = flush(connection)
    finally:
        connection.close()
    if written:
        log.info("flush_usage: wrote %d usage records", written)
    return written


@worker_ready.connect
def check_usage_queue_persistence(**kwargs: Any) -> None:
    """At worker start: say loudly when a Redis restart would lose the usage records queued in it."""
    import redis

    from serving.gateway.metering import check_persistence

    connection = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)
    try:
        check_persistence(connection)
    except redis.RedisError as error:
        log.warning("could not check whether Redis persists the usage queue: %s", error)
    finally:
        connection.close()
