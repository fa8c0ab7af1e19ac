"""The invocation record: its checks, and where it goes in the store.

See learning.models for the fields. The writer parses every queued record with `parse_record`; one that
fails goes to a dead-letter list instead of blocking the queue.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from serving.gateway.metering import iso_time

OBJECT_PREFIX = "invocation-logs"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # it becomes part of an object key


class MalformedRecord(ValueError):
    """A queued record that can never be stored."""


def _integer(record: dict[str, Any], name: str, *, low: int = 0, optional: bool = False) -> int | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MalformedRecord(f"{name} must be an integer of at least {low}, not {value!r}")
    return value


def _text(record: dict[str, Any], name: str, max_length: int, *, optional: bool = False) -> str | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise MalformedRecord(f"{name} must be a string of 1 to {max_length} characters, not {value!r:.80}")
    return value


def record_time(record: dict[str, Any]) -> datetime.datetime:
    moment = iso_time(record.get("time"))
    if moment is None:
        raise MalformedRecord(f"time must be an ISO 8601 time, not {record.get('time')!r:.80}")
    return moment


def parse_record(raw: bytes | str) -> dict[str, Any]:
    """The record as a dict with its fields checked, or MalformedRecord naming the field.
    `time` is normalised to UTC ISO 8601, so records sort by it as text."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedRecord(f"not JSON: {error}") from error
    if not isinstance(record, dict):
        raise MalformedRecord("not a JSON object")
    if not isinstance(record.get("id"), str) or not _ID.fullmatch(record["id"]):
        raise MalformedRecord(f"id must be 1 to 64 letters, digits, '-' or '_', not {record.get('id')!r:.80}")
    _integer(record, "organization_id", low=1)
    _integer(record, "deployment_id", low=1, optional=True)
    _text(record, "deployment", 40)
    _text(record, "route", 40)
    _text(record, "key_prefix", 16, optional=True)
    _integer(record, "latency_ms")
    _integer(record, "time_to_first_token_ms", optional=True)
    status = _integer(record, "status", low=100)
    if status is not None and status > 599:
        raise MalformedRecord(f"status must be an HTTP status (100–599), not {status}")
    tokens = record.get("tokens")
    if not isinstance(tokens, dict):
        raise MalformedRecord(f"tokens must be an object with prompt and completion, not {tokens!r:.80}")
    _integer(tokens, "prompt")
    _integer(tokens, "completion")
    record["time"] = record_time(record).astimezone(datetime.UTC).isoformat()
    return record


def window_start(moment: datetime.datetime, minutes: int) -> datetime.datetime:
    """The start of the `minutes`-long window (counted from midnight UTC) that `moment` falls in."""
    moment = moment.astimezone(datetime.UTC)
    minute_of_day = moment.hour * 60 + moment.minute
    start = minute_of_day - minute_of_day % minutes
    return moment.replace(hour=start // 60, minute=start % 60, second=0, microsecond=0)


def object_key(
    organization_id: int, deployment_id: int | None, window: datetime.datetime, first_id: str
) -> str:
    """Where a batch's records of one organisation, deployment and window go. Derived from the batch's
    first record there, so writing the same batch again (after a crash) rewrites the same object."""
    return (
        f"{OBJECT_PREFIX}/org-{organization_id}/{window:%Y/%m/%d}/"
        f"deployment-{deployment_id or 'none'}/{window:%H%M}-{first_id}.jsonl.gz"
    )


def organization_prefix(organization_id: int) -> str:
    return f"{OBJECT_PREFIX}/org-{organization_id}/"
