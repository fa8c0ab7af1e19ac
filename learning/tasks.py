"""Celery tasks of invocation logging. Both are periodic (see CELERY_BEAT_SCHEDULE) and idempotent."""

from __future__ import annotations

import redis
from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from learning import writer
from learning.storage import get_store


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
    """Delete invocation log objects past their organisation's retention, with their index rows."""
    if not cache.add("learning:expire-logs:lock", "1", timeout=3600):
        return 0
    try:
        return writer.expire(get_store())
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
