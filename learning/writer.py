"""The invocation log's writer: from the Redis queue to the object store and its index, in batches.

`write_queued` (run by the `learning.tasks.write_invocation_logs` Celery task, one at a time under a lock):
1. Read the head of the queue (LRANGE; nothing removed yet).
2. Parse each record; malformed ones are set aside for the dead-letter list (`gw:logs:dead`). Records
   the gateway marked `mask` are masked here (learning.masking), before anything reaches the store;
   one whose bodies nest too deeply to mask is dead-lettered too, never left to block the queue.
3. Group the rest by organisation, deployment and INVOCATION_LOG_WINDOW_MINUTES window. Each group
   becomes one object whose key is derived from the group's first record id (learning.records.object_key).
4. Write each object, then upsert its index row by key.
5. In one MULTI/EXEC, dead-letter the malformed records and remove the batch from the queue (LTRIM).

Idempotent: a writer that dies after step 4 and before step 5 leaves the batch queued; the next run reads
the same head (plus, perhaps, records queued since), so each group has the same first record, hence the
same key: the object is rewritten with the same records (or a superset) and its index row updated. No
record is stored twice. Records of an organisation deleted meanwhile are dropped; of a deleted deployment,
kept with a null deployment id.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from django.conf import settings
from django.utils import timezone

from learning import records as schema
from learning.capture import DEAD_LETTER_KEY, QUEUE_KEY
from learning.masking import mask_json
from learning.models import DEFAULT_RETENTION_DAYS, InvocationLogObject, InvocationLogSettings
from learning.storage import ObjectStore, encode_records
from marketplace.accounts.models import Organization
from serving.models import Deployment

log = logging.getLogger(__name__)

DEAD_LETTER_SECONDS = 24 * 3600


@dataclass
class BatchResult:
    objects: int = 0
    records: int = 0
    orphaned: int = 0  # records of organisations that no longer exist
    dead: list[bytes | str] = field(default_factory=list)


def group_records(
    parsed: Sequence[dict[str, Any]], window_minutes: int
) -> dict[tuple[int, int | None, datetime.datetime], list[dict[str, Any]]]:
    """Records by (organisation, deployment, window start), each group in queue order."""
    groups: dict[tuple[int, int | None, datetime.datetime], list[dict[str, Any]]] = {}
    for record in parsed:
        window = schema.window_start(schema.record_time(record), window_minutes)
        groups.setdefault((record["organization_id"], record.get("deployment_id"), window), []).append(record)
    return groups


def masked(record: dict[str, Any]) -> dict[str, Any]:
    """The record as stored: when the gateway marked it `mask`, every string of its request and answer
    masked and `masked` the number of pieces replaced (0 when marked not to be masked); `mask` itself is
    not stored. A record without the mark is stored as it came."""
    if "mask" not in record:
        return record
    record["masked"] = 0
    if record.pop("mask"):
        bodies = [record.get("request"), record.get("answer")]
        (record["request"], record["answer"]), findings = mask_json(bodies)
        record["masked"] = len(findings)
    return record


def write_batch(raw_records: Sequence[bytes | str], store: ObjectStore) -> BatchResult:
    """Store one batch (steps 2–4 above). Store or database errors propagate: the batch stays queued."""
    result = BatchResult()
    parsed = []
    for raw in raw_records:
        try:
            parsed.append((schema.parse_record(raw), raw))
        except schema.MalformedRecord as error:
            # The reason only: the record holds request and answer bodies, not yet masked.
            log.warning("invocation record dead-lettered (%s), %d bytes", error, len(raw))
            result.dead.append(raw)
    organizations = set(
        Organization.objects.filter(pk__in={r["organization_id"] for r, _ in parsed}).values_list(
            "pk", flat=True
        )
    )
    wanted_deployments = {r["deployment_id"] for r, _ in parsed if r.get("deployment_id")}
    deployments = set(Deployment.objects.filter(pk__in=wanted_deployments).values_list("pk", flat=True))
    kept = []
    for record, raw in parsed:
        if record["organization_id"] not in organizations:
            result.orphaned += 1
            continue
        if record.get("deployment_id") not in deployments:
            record["deployment_id"] = None
        try:
            kept.append(masked(record))
        except RecursionError:
            # Bodies nested deeper than masking can walk (a request the engine refused, logged as
            # sent): set aside like a malformed record, so it cannot hold every organisation's queue.
            log.warning("invocation record %s dead-lettered: bodies nested too deeply", record["id"])
            result.dead.append(raw)
    for (organization_id, deployment_id, window), group in group_records(
        kept, settings.INVOCATION_LOG_WINDOW_MINUTES
    ).items():
        key = schema.object_key(organization_id, deployment_id, window, group[0]["id"])
        data = encode_records(group)
        store.put(key, data)
        times = [record["time"] for record in group]  # UTC ISO 8601: ordered as text
        InvocationLogObject.objects.update_or_create(
            key=key,
            defaults={
                "organization_id": organization_id,
                "deployment_id": deployment_id,
                "deployment_name": group[-1]["deployment"],
                "first_at": datetime.datetime.fromisoformat(min(times)),
                "last_at": datetime.datetime.fromisoformat(max(times)),
                "records": len(group),
                "bytes": len(data),
            },
        )
        result.objects += 1
        result.records += len(group)
    return result


def write_queued(connection: redis.Redis, store: ObjectStore, batch_size: int = 5000) -> BatchResult:
    """Move what was queued when the run started to the store, batch by batch; the totals.

    Only one writer may run at a time (two would read the same head and the second LTRIM would drop a
    batch nobody stored); the Celery task holds a lock for that.
    """
    total = BatchResult()
    pending = cast(int, connection.llen(QUEUE_KEY))
    while pending > 0:
        batch = cast(list[bytes], connection.lrange(QUEUE_KEY, 0, min(batch_size, pending) - 1))
        if not batch:
            break
        result = write_batch(batch, store)
        with connection.pipeline(transaction=True) as pipe:
            if result.dead:
                pipe.rpush(DEAD_LETTER_KEY, *result.dead)
                # Set-aside records may hold bodies nobody masked: kept a day for an operator to look
                # at, never past the shortest retention an organisation can choose.
                pipe.expire(DEAD_LETTER_KEY, DEAD_LETTER_SECONDS)
            pipe.ltrim(QUEUE_KEY, len(batch), -1)
            pipe.execute()
        total.objects += result.objects
        total.records += result.records
        total.orphaned += result.orphaned
        total.dead.extend(result.dead)
        pending -= len(batch)
    if total.orphaned:
        log.warning("dropped %d invocation records of organisations that no longer exist", total.orphaned)
    return total


def retention_cutoffs(
    organization_ids: Iterable[int], now: datetime.datetime
) -> Iterator[tuple[int, datetime.datetime]]:
    """Each organisation with the time before which its kept traffic (logs, shadow-call samples) has
    expired: its log settings' retention, else the default."""
    retention = dict(InvocationLogSettings.objects.values_list("organization_id", "retention_days"))
    for organization_id in organization_ids:
        days = retention.get(organization_id, DEFAULT_RETENTION_DAYS)
        yield organization_id, now - datetime.timedelta(days=days)


def expire(store: ObjectStore, now: datetime.datetime | None = None) -> int:
    """Delete the objects, and their index rows, older than their organisation's retention; how many.

    An object goes once its latest record is older than the retention (an organisation without settings
    keeps the default). Each object is deleted from the store before its row, so a failure leaves a row
    that the next run deletes again (deleting a missing object is not an error), never an unindexed object.
    """
    now = now or timezone.now()
    deleted = 0
    organizations = InvocationLogObject.objects.values_list("organization_id", flat=True).distinct()
    for organization_id, cutoff in retention_cutoffs(organizations, now):
        expired = InvocationLogObject.objects.filter(
            organization_id=organization_id, last_at__lt=cutoff
        ).values_list("pk", "key")
        for pk, key in expired.iterator():
            store.delete(key)
            InvocationLogObject.objects.filter(pk=pk).delete()
            deleted += 1
    return deleted
