"""Usage records: queued in Redis by the gateway, written to PostgreSQL in batches by a periodic task.

The gateway only appends a JSON line to a Redis list (`gw:usage`), so metering costs a request one RPUSH.
`flush_usage` (run by the `serving.tasks.flush_usage` Celery task) moves them to `UsageRecord` rows.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import redis.asyncio
from django.db import DataError, IntegrityError, transaction

from marketplace.accounts.models import ApiKey, Organization
from serving.models import Deployment, UsageRecord

log = logging.getLogger(__name__)

QUEUE_KEY = "gw:usage"
DEAD_LETTER_KEY = "gw:usage:dead"

_MAX_INT = 2_147_483_647  # PositiveIntegerField's upper bound in PostgreSQL


class UsageQueue:
    """The gateway's end of the queue."""

    def __init__(self, connection: redis.asyncio.Redis) -> None:
        self.redis = connection

    async def push(self, record: dict[str, Any]) -> None:
        """Queue one record (see `parse_record` for its fields). One round trip."""
        await cast(Any, self.redis.rpush(QUEUE_KEY, json.dumps(record, separators=(",", ":"), default=str)))


class MalformedRecord(ValueError):
    """A queued record that can never become a row; it goes to the dead-letter list."""


def _integer(record: dict[str, Any], name: str, *, low: int = 0, high: int = _MAX_INT) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedRecord(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return value


def _optional_integer(record: dict[str, Any], name: str, *, low: int = 0) -> int | None:
    return None if record.get(name) is None else _integer(record, name, low=low)


def _text(record: dict[str, Any], name: str, max_length: int, *, truncate: bool = False) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"{name} must be a non-empty string, not {value!r}")
    if len(value) > max_length and not truncate:
        raise MalformedRecord(f"{name} is longer than {max_length} characters")
    return value[:max_length]


def _time(record: dict[str, Any], name: str) -> datetime.datetime:
    value = record.get(name)
    try:
        moment = datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise MalformedRecord(f"{name} must be an ISO 8601 time, not {value!r}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def parse_record(raw: bytes | str) -> UsageRecord:
    """The unsaved row for one queued record, or MalformedRecord.

    Fields: request_id, organization_id, api_key_id, deployment_id (null allowed), model, route,
    prompt_tokens, completion_tokens, latency_ms, time_to_first_token_ms (null allowed), status_code,
    streamed, created_at (ISO 8601; without an offset it is taken as UTC). An over-long model or route
    name is cut rather than refused, so the tokens are still accounted for.
    """
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedRecord(f"not JSON: {error}") from error
    if not isinstance(record, dict):
        raise MalformedRecord("not a JSON object")
    if not isinstance(record.get("streamed", False), bool):
        raise MalformedRecord(f"streamed must be true or false, not {record.get('streamed')!r}")
    return UsageRecord(
        request_id=_text(record, "request_id", 64),
        organization_id=_integer(record, "organization_id", low=1),
        api_key_id=_optional_integer(record, "api_key_id", low=1),
        deployment_id=_optional_integer(record, "deployment_id", low=1),
        model=_text(record, "model", 100, truncate=True),
        route=_text(record, "route", 40, truncate=True),
        prompt_tokens=_integer(record, "prompt_tokens"),
        completion_tokens=_integer(record, "completion_tokens"),
        latency_ms=_integer(record, "latency_ms"),
        time_to_first_token_ms=_optional_integer(record, "time_to_first_token_ms"),
        status_code=_integer(record, "status_code", low=100, high=599),
        streamed=record.get("streamed", False),
        created_at=_time(record, "created_at"),
    )


@dataclass
class BatchResult:
    written: int = 0  # rows inserted now (not those a previous, interrupted flush already inserted)
    orphaned: int = 0  # records of organisations that no longer exist, dropped
    dead: list[bytes | str] = field(default_factory=list)  # raw records for the dead-letter list


def write_batch(raw_records: Sequence[bytes | str]) -> BatchResult:
    """Insert the rows of a batch that are not in the database yet; idempotent.

    1. Parse each record; malformed ones are set aside for the dead-letter list.
    2. Drop records whose request_id is already stored (an earlier flush inserted them and died before
       trimming the queue) or repeated within the batch.
    3. Null the key and deployment of records whose key or deployment was deleted since (the usage
       still counts for the organisation); drop records whose organisation was deleted.
    4. Insert the rest in one statement, ignoring request_id conflicts. If the database refuses the
       batch's data (say, a row deleted between step 3 and the insert), insert row by row and dead-letter
       the rows it refuses, so one bad row cannot block the queue. Any other database error (PostgreSQL
       unreachable) propagates: the batch stays queued for the next flush.
    """
    result = BatchResult()
    parsed: dict[str, tuple[UsageRecord, bytes | str]] = {}
    for raw in raw_records:
        try:
            row = parse_record(raw)
        except MalformedRecord as error:
            log.warning("usage record dead-lettered (%s): %.200r", error, raw)
            result.dead.append(raw)
            continue
        parsed.setdefault(row.request_id, (row, raw))
    stored = set(UsageRecord.objects.filter(request_id__in=parsed).values_list("request_id", flat=True))
    fresh = [entry for request_id, entry in parsed.items() if request_id not in stored]
    organizations = _existing(Organization, {row.organization_id for row, _ in fresh})
    keys = _existing(ApiKey, {row.api_key_id for row, _ in fresh})
    deployments = _existing(Deployment, {row.deployment_id for row, _ in fresh})
    kept = []
    for row, raw in fresh:
        if row.organization_id not in organizations:
            result.orphaned += 1
            continue
        if row.api_key_id not in keys:
            row.api_key_id = None
        if row.deployment_id not in deployments:
            row.deployment_id = None
        kept.append((row, raw))
    try:
        with transaction.atomic():
            UsageRecord.objects.bulk_create([row for row, _ in kept], ignore_conflicts=True)
        result.written = len(kept)
    except (IntegrityError, DataError):
        for row, raw in kept:
            try:
                with transaction.atomic():
                    UsageRecord.objects.bulk_create([row], ignore_conflicts=True)
                result.written += 1
            except (IntegrityError, DataError) as error:
                log.warning("usage record %s dead-lettered: %s", row.request_id, error)
                result.dead.append(raw)
    return result


def _existing(model: type[Organization | ApiKey | Deployment], ids: set[int | None]) -> set[int]:
    wanted = [pk for pk in ids if pk is not None]
    return set(model.objects.filter(pk__in=wanted).values_list("pk", flat=True))


def flush_usage(connection: redis.Redis, batch_size: int = 1000) -> int:
    """Move queued usage records to PostgreSQL; return how many rows were inserted.

    Per batch: read the head of the queue (LRANGE, nothing removed), insert it (`write_batch`,
    idempotent), then in one MULTI/EXEC append its malformed records to the dead-letter list and remove
    the batch from the queue (LTRIM). A flusher that dies before the LTRIM leaves the batch queued; the
    next flush inserts nothing twice (request_id is unique) and dead-letters nothing twice.

    Only one flusher may run at a time: two would read the same head and the second LTRIM would drop a
    batch nobody inserted. The Celery task holds a lock for that. A run takes what was queued when it
    started, so a busy gateway cannot keep one run going for ever.
    """
    written = orphaned = 0
    pending = cast(int, connection.llen(QUEUE_KEY))
    while pending > 0:
        batch = cast(list[bytes], connection.lrange(QUEUE_KEY, 0, min(batch_size, pending) - 1))
        if not batch:
            break
        result = write_batch(batch)
        written, orphaned = written + result.written, orphaned + result.orphaned
        with connection.pipeline(transaction=True) as pipe:
            if result.dead:
                pipe.rpush(DEAD_LETTER_KEY, *result.dead)
            pipe.ltrim(QUEUE_KEY, len(batch), -1)
            pipe.execute()
        pending -= len(batch)
    if orphaned:
        log.warning("dropped %d usage records of organisations that no longer exist", orphaned)
    return written
