"""Usage records: queued in Redis by the gateway, written to PostgreSQL in batches by a periodic task.

The gateway appends a JSON line to a Redis list (`gw:usage`), so metering costs a request one RPUSH.
`flush_usage` (run by the `serving.tasks.flush_usage` Celery task) moves them to `UsageRecord` rows.

A record is never dropped because Redis is away:

- What the gateway cannot hand to Redis goes to its local spool (`Spool`): an append-only file per
  gateway process under GATEWAY_SPOOL_DIR, locked by its process for as long as it lives. The process
  pushes the file's lines to the queue as soon as Redis answers again; a spool left by a process that
  died (its lock is gone) is pushed by the next process that starts. A line may be pushed twice (a
  process killed mid-replay), never lost: request_id is unique, and `write_batch` writes each once.
- What Redis holds survives Redis restarts only with append-only persistence (`appendonly yes`): the
  README and the chart require it, the embedded Valkey uses it, and `check_persistence` warns at worker
  start when Redis runs without it.
- What neither Redis nor the spool could take (the spool's disk failed too) is counted in /metrics
  (`marketplace_gateway_usage_records_lost_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import redis
import redis.asyncio
from django.conf import settings
from django.db import DataError, IntegrityError

from marketplace.accounts.models import ApiKey, Organization
from serving import usage_days
from serving.gateway import metrics
from serving.models import Deployment, UsageRecord

log = logging.getLogger(__name__)

QUEUE_KEY = "gw:usage"
DEAD_LETTER_KEY = "gw:usage:dead"
FLUSH_LOCK_KEY = "gw:usage:flush-lock"
FLUSH_LOCK_MS = 10_000  # a flusher that died (or lost Redis) leaves the queue to the next one after this long

_MAX_INT = 2_147_483_647  # PositiveIntegerField's upper bound in PostgreSQL
_REPLAY_CHUNK = 500  # lines per RPUSH when a spool is replayed
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)  # how often a spool retries while Redis stays away


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


class Spool:
    """The records this process could not hand to Redis, in an append-only file, and the files of
    processes that died before they could push theirs.

    Invariants: this process's file is created on the first record it keeps and holds an exclusive
    `flock` for the life of the process, so a file whose lock can be taken belongs to nobody alive.
    Every line is written whole and flushed before `append` returns (a process killed later loses
    nothing; a machine that loses power may lose what the kernel had not written yet). A line leaves
    the file only after Redis has taken it. Appends and replays may come from several event loops of
    one process (tests): a thread lock orders them, and one replay runs at a time.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path: Path | None = None
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._replaying = False
        self.pending = False  # this process's file holds records Redis has not taken yet

    def append(self, line: bytes) -> bool:
        """Keep one record; False when even the disk refused it (it is then lost)."""
        with self._lock:
            try:
                if self._file is None:
                    self._file = self._create()
                self._file.write(line + b"\n")
                self._file.flush()
            except OSError as error:
                log.error("usage record lost: Redis and the spool in %s refused it: %s", self.folder, error)
                return False
            self.pending = True
            return True

    def _create(self) -> IO[bytes]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.folder / f"usage-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        handle = path.open("ab")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = path
        log.warning("Redis is unreachable: keeping usage records in %s until it answers again", path)
        return handle

    def has_orphans(self) -> bool:
        """Whether the folder holds spool files of other processes (alive or not): a cheap look that
        decides whether a replay is worth starting."""
        if not self.folder.is_dir():
            return False
        return any(path != self.path for path in self.folder.glob("usage-*.jsonl"))

    def _orphans(self) -> Iterator[tuple[Path, IO[bytes]]]:
        """The spool files of processes that no longer run, each opened and locked."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("usage-*.jsonl")):
            if path == self.path:
                continue
            try:
                handle = path.open("rb")
            except FileNotFoundError:  # another process replayed it just now
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive and pushes it itself
                handle.close()
                continue
            if os.fstat(handle.fileno()).st_nlink == 0:  # replayed and removed while we opened it
                handle.close()
                continue
            yield path, handle

    async def replay(self, connection: redis.asyncio.Redis) -> int:
        """Push every spooled line (this process's and dead processes') to the queue; return how many.

        1. Dead processes' files: read, push, delete (under their lock).
        2. This process's file: read what it holds now, push it, then (with no await in between, under
           the thread lock) keep only what was appended while the push ran.
        A RedisError leaves everything not yet pushed where it was, and propagates.
        """
        if self._replaying:
            return 0
        self._replaying = True
        try:
            await cast(Any, connection.ping())  # a long outage's spool is not read again per retry
            pushed = 0
            for path, handle in self._orphans():
                with handle:
                    lines = _lines(handle.read())
                    await _push_lines(connection, lines)
                    path.unlink()
                pushed += len(lines)
                if lines:
                    log.warning("replayed %d usage records a stopped gateway process had spooled", len(lines))
            if self.pending and self.path is not None:
                data = self.path.read_bytes()
                await _push_lines(connection, _lines(data))
                pushed += len(_lines(data))
                with self._lock:
                    assert self._file is not None
                    with self.path.open("rb") as reader:
                        reader.seek(len(data))
                        tail = reader.read()
                    self._file.truncate(0)
                    self._file.write(tail)
                    self._file.flush()
                    self.pending = bool(tail)
            return pushed
        finally:
            self._replaying = False


async def _push_lines(connection: redis.asyncio.Redis, lines: list[bytes]) -> None:
    for start in range(0, len(lines), _REPLAY_CHUNK):
        await cast(Any, connection.rpush(QUEUE_KEY, *lines[start : start + _REPLAY_CHUNK]))


_spools: dict[tuple[int, str], Spool] = {}


def process_spool() -> Spool:
    """This process's spool in GATEWAY_SPOOL_DIR (one per process, whatever the event loops)."""
    key = (os.getpid(), settings.GATEWAY_SPOOL_DIR)
    found = _spools.get(key)
    if found is None:
        found = _spools[key] = Spool(Path(settings.GATEWAY_SPOOL_DIR))
    return found


_replayers: set[asyncio.Task[None]] = set()


class UsageQueue:
    """The gateway's end of the queue."""

    def __init__(self, connection: redis.asyncio.Redis, spool: Spool | None = None) -> None:
        self.redis = connection
        self._spool = spool
        self._replayer: asyncio.Task[None] | None = None

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = process_spool()
        return self._spool

    async def push(self, record: dict[str, Any]) -> None:
        """Queue one record (see `parse_record` for its fields): one RPUSH. When Redis cannot take it,
        the record goes to the spool and a replay is started; never raises for Redis' sake."""
        line = _encode(record)
        try:
            await cast(Any, self.redis.rpush(QUEUE_KEY, line))
        except redis.RedisError:
            if self.spool.append(line):
                metrics.USAGE_SPOOLED.inc()
            else:
                metrics.USAGE_LOST.inc()
            self.resume()
            return
        if self.spool.pending:
            self.resume()

    def resume(self) -> None:
        """Start pushing the spool to Redis in the background, retrying until it is empty (at most one
        replayer per queue)."""
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.get_running_loop().create_task(self._replay_until_empty())
            _replayers.add(self._replayer)
            self._replayer.add_done_callback(_replayers.discard)

    async def replay(self) -> int:
        """Push what the spools hold now; RedisError when Redis is still away."""
        return await self.spool.replay(self.redis)

    async def _replay_until_empty(self) -> None:
        attempt = 0
        while True:
            try:
                await self.replay()
            except redis.RedisError:
                pass
            except OSError as error:  # a spool file could not be read: keep it, say so, try later
                log.error("cannot replay the usage spool in %s: %s", self.spool.folder, error)
            else:
                if not self.spool.pending:
                    return
            await asyncio.sleep(_RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)])
            attempt += 1


async def settle_spools(timeout: float) -> None:
    """At shutdown: give running replays up to `timeout` seconds to empty the spools, then stop them.
    What they could not push stays on disk for the next process to start."""
    running = [task for task in _replayers if task.get_loop() is asyncio.get_running_loop()]
    if not running:
        return
    _, late = await asyncio.wait(running, timeout=timeout)
    for task in late:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def check_persistence(connection: redis.Redis) -> str:
    """What the Redis behind the usage queue keeps across a restart, as a sentence for the log; logs a
    warning when a restart would lose queued records. Tolerates a managed Redis that forbids CONFIG."""
    try:
        config = cast(dict[str, str], connection.config_get("appendonly"))
        config.update(cast(dict[str, str], connection.config_get("save")))
    except redis.ResponseError:
        message = (
            "Redis does not allow CONFIG GET, so whether it persists the usage queue is unknown: make sure "
            "it runs with append-only persistence (appendonly yes), or usage records queued in it are "
            "lost when it restarts."
        )
        log.warning(message)
        return message
    if config.get("appendonly") == "yes":
        return "Redis persists the usage queue with an append-only file."
    if config.get("save"):
        message = (
            "Redis persists only snapshots (appendonly no): usage records queued since the last snapshot "
            "are lost when it restarts. Turn on append-only persistence (appendonly yes)."
        )
    else:
        message = (
            "REDIS HAS NO PERSISTENCE: every usage record queued in it is lost when it restarts, and "
            "those are bills. Turn on append-only persistence (appendonly yes)."
        )
    log.warning(message)
    return message


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


def _optional_text(record: dict[str, Any], name: str, max_length: int) -> str:
    """A name that may be absent (older records) or empty: "" then; cut to `max_length`."""
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRecord(f"{name} must be a string, not {value!r}")
    return value[:max_length]


def iso_time(value: object) -> datetime.datetime | None:
    """A queued record's ISO 8601 time (taken as UTC without an offset), or None when it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _time(record: dict[str, Any], name: str) -> datetime.datetime:
    moment = iso_time(record.get(name))
    if moment is None:
        raise MalformedRecord(f"{name} must be an ISO 8601 time, not {record.get(name)!r}")
    return moment


def parse_record(raw: bytes | str) -> UsageRecord:
    """The unsaved row for one queued record, or MalformedRecord.

    Fields: request_id, organization_id, api_key_id, deployment_id (null allowed), model, route,
    prompt_tokens, completion_tokens, latency_ms, time_to_first_token_ms (null allowed), status_code,
    streamed, created_at (ISO 8601; without an offset it is taken as UTC); optionally router and
    router_choice (the router called and the deployment it chose), audio_seconds (the audio routes), and
    guardrail_interventions (what the guardrails did: a list of objects). An over-long model or route name is
    cut rather than refused, so the tokens are still accounted for.
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
        router=_optional_text(record, "router", 40),
        router_choice=_optional_text(record, "router_choice", 40),
        audio_seconds=_optional_integer(record, "audio_seconds") or 0,
        guardrail_interventions=_interventions(record),
        created_at=_time(record, "created_at"),
    )


def _interventions(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The guardrails' interventions (serving.gateway.guardrails.Recorded.as_record), objects only."""
    found = record.get("guardrail_interventions") or []
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise MalformedRecord("guardrail_interventions must be a list of objects")
    return found


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
    4. Insert the rest in one statement, ignoring request_id conflicts, and add the rows it inserted to
       the daily roll-up in the same transaction (serving.usage_days.insert_records). If the database
       refuses the batch's data (say, a row deleted between step 3 and the insert), insert row by row
       and dead-letter the rows it refuses, so one bad row cannot block the queue. Any other database
       error (PostgreSQL unreachable) propagates: the batch stays queued for the next flush.
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
        result.written = usage_days.insert_records([row for row, _ in kept])
    except (IntegrityError, DataError):
        for row, raw in kept:
            try:
                result.written += usage_days.insert_records([row])
            except (IntegrityError, DataError) as error:
                log.warning("usage record %s dead-lettered: %s", row.request_id, error)
                result.dead.append(raw)
    return result


def _existing(model: type[Organization | ApiKey | Deployment], ids: set[int | None]) -> set[int]:
    wanted = [pk for pk in ids if pk is not None]
    return set(model.objects.filter(pk__in=wanted).values_list("pk", flat=True))


_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def flush_usage(connection: redis.Redis, batch_size: int = 1000) -> int:
    """Move queued usage records to PostgreSQL; return how many rows were inserted.

    1. Take the flush lock (SET NX with an expiry and a token of this run); if another flusher holds
       it, do nothing.
    2. Per batch: read the head of the queue (LRANGE, nothing removed) and insert it (`write_batch`,
       idempotent). Then, in one MULTI/EXEC that runs only if the lock is still this run's (WATCH),
       append its malformed records to the dead-letter list, remove the batch from the queue (LTRIM)
       and extend the lock.
    3. Release the lock if it is still this run's.

    Two flushers reading the same head would each trim a batch, and the second trim would drop records
    nobody inserted; the lock prevents that, and the WATCH keeps it so when the lock expired under a
    run that stalled (the other run owns the queue then, and this one stops). A flusher that dies, or
    loses Redis, before the LTRIM leaves the batch queued; the next flush inserts nothing twice
    (request_id is unique) and dead-letters nothing twice. A lock a dead flusher left expires after
    FLUSH_LOCK_MS. A run takes what was queued when it started, so a busy gateway cannot keep one run
    going for ever.
    """
    token = uuid.uuid4().hex
    if not connection.set(FLUSH_LOCK_KEY, token, nx=True, px=FLUSH_LOCK_MS):
        return 0
    written = orphaned = 0
    try:
        pending = cast(int, connection.llen(QUEUE_KEY))
        while pending > 0:
            batch = cast(list[bytes], connection.lrange(QUEUE_KEY, 0, min(batch_size, pending) - 1))
            if not batch:
                break
            result = write_batch(batch)
            written, orphaned = written + result.written, orphaned + result.orphaned
            if not _trim(connection, token, len(batch), result.dead):
                log.warning("usage flush stopped: its lock expired and another flush took over")
                break
            pending -= len(batch)
    finally:
        with contextlib.suppress(redis.RedisError):
            connection.eval(_RELEASE_LOCK, 1, FLUSH_LOCK_KEY, token)
    if orphaned:
        log.warning("dropped %d usage records of organisations that no longer exist", orphaned)
    return written


def _trim(connection: redis.Redis, token: str, count: int, dead: list[bytes | str]) -> bool:
    """Dead-letter `dead` and remove `count` records from the queue's head, atomically and only while
    the flush lock is `token`'s; False when it is not (nothing is changed then)."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.watch(FLUSH_LOCK_KEY)
        if pipe.get(FLUSH_LOCK_KEY) not in (token, token.encode()):
            return False
        pipe.multi()
        if dead:
            pipe.rpush(DEAD_LETTER_KEY, *dead)
        pipe.ltrim(QUEUE_KEY, count, -1)
        pipe.pexpire(FLUSH_LOCK_KEY, FLUSH_LOCK_MS)
        try:
            pipe.execute()
        except redis.WatchError:
            return False
    return True
