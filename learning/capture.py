"""The gateway's end of invocation logging: decide, shape, queue. Never raises into the request.

`capture(record)` decides and queues one record, after the answer, off the response path. The gateway
splits the two (serving.gateway.invocation_log): `policy_of` when a call starts, so that it assembles
a stream only for a call that is logged, then `capture_selected` after the answer:
1. The organisation's policy comes from a per-process snapshot of its `InvocationLogSettings`, re-read at
   most once per GATEWAY_CACHE_SECONDS (no database query in steady state). Logging off, a deployment or
   key outside the narrowing lists, or a sample that misses: nothing more is done.
2. Bodies the organisation does not keep are dropped. With masking on, the record is marked `mask`: the
   writer masks it before anything reaches the object store (learning.writer). Masking costs 0.1–0.3 ms
   of CPU a record (bench/invocation_log.py), the whole of the 0.2 ms the gateway may add with logging
   on (bench/invocation_log_gateway.py); Redis is only the transient queue, as it is for usage records.
3. Records wait in the process for up to LINGER_SECONDS (or until MAX_BATCH have gathered), then one Lua
   script appends as many as fit to the Redis list `gw:logs` while it is shorter than
   INVOCATION_LOG_QUEUE_MAX, and counts the rest in their organisations' overflow counters
   (`gw:logs:overflow`, a hash by organisation id). The check and the append are one atomic step, so the
   bound holds however many gateways push at once; one round trip serves a whole batch, so a logged
   call costs the gateway a JSON encoding, not a Redis command. Each `capture` awaits its batch, so a
   graceful shutdown that awaits the captures in flight (serving.gateway.pipeline.drain) loses nothing.
   Overflow and failures are also counted in Prometheus (/metrics).
The writer (learning.writer) empties the list into the object store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from prometheus_client import Counter

log = logging.getLogger(__name__)

QUEUE_KEY = "gw:logs"
OVERFLOW_KEY = "gw:logs:overflow"
DEAD_LETTER_KEY = "gw:logs:dead"

QUEUED = Counter("marketplace_invocation_logs_queued_total", "Invocation records queued for the log")
OVERFLOW = Counter(
    "marketplace_invocation_logs_overflow_total", "Invocation records not logged because the queue was full"
)
FAILED = Counter(
    "marketplace_invocation_logs_failed_total", "Invocation records not logged because Redis failed"
)

LINGER_SECONDS = 0.05
MAX_BATCH = 500

# KEYS: queue, overflow hash. ARGV: bound, then an organisation id and a record per record. Appends the
# records in order while the queue has room; returns 1 (queued) or 0 (counted as overflow) per record.
PUSH_BOUNDED = """
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
local kept, outcome = {}, {}
for i = 2, #ARGV, 2 do
  if #kept < room then
    kept[#kept + 1] = ARGV[i + 1]
    outcome[#outcome + 1] = 1
  else
    redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
    outcome[#outcome + 1] = 0
  end
end
if #kept > 0 then
  redis.call('RPUSH', KEYS[1], unpack(kept))
end
return outcome
"""


@dataclass(frozen=True)
class Policy:
    """What an organisation keeps; a snapshot of its InvocationLogSettings."""

    enabled: bool = False
    deployments: frozenset[str] = frozenset()
    api_keys: frozenset[str] = frozenset()
    sample_rate: float = 1.0
    keep_requests: bool = True
    keep_answers: bool = True
    mask_personal_data: bool = True

    def selects(self, deployment: str, key_prefix: str | None, draw: float) -> bool:
        """Whether a call is logged; `draw` is uniform in [0, 1)."""
        if not self.enabled or draw >= self.sample_rate:
            return False
        if self.deployments and deployment not in self.deployments:
            return False
        return not self.api_keys or key_prefix in self.api_keys


OFF = Policy()


def load_policy(organization_id: int) -> Policy:
    from learning.models import InvocationLogSettings

    row = InvocationLogSettings.objects.filter(organization_id=organization_id).first()
    if row is None:
        return OFF
    return Policy(
        enabled=row.enabled,
        deployments=frozenset(row.deployments),
        api_keys=frozenset(row.api_keys),
        sample_rate=row.sample_rate,
        keep_requests=row.keep_requests,
        keep_answers=row.keep_answers,
        mask_personal_data=row.mask_personal_data,
    )


def _load_closing(organization_id: int) -> Policy:
    # Runs in a worker thread of its own: the connection must not outlive it (see serving.gateway.directory).
    close_old_connections()
    try:
        return load_policy(organization_id)
    finally:
        close_old_connections()


class Capturer:
    """One per event loop: a Redis connection belongs to the loop that opened it."""

    def __init__(
        self, connection: redis.asyncio.Redis | None = None, ttl: float | None = None,
        linger: float = LINGER_SECONDS,
    ) -> None:  # fmt: skip
        self.redis = connection or redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5
        )
        self.ttl = settings.GATEWAY_CACHE_SECONDS if ttl is None else ttl
        self.linger = linger
        self.policies: dict[int, tuple[float, Policy]] = {}
        self.loading: dict[int, asyncio.Lock] = {}
        self.push = self.redis.register_script(PUSH_BOUNDED)
        self.waiting: list[tuple[int, str, asyncio.Future[bool]]] = []
        self.flusher: asyncio.TimerHandle | None = None

    async def policy(self, organization_id: int) -> Policy:
        entry = self.policies.get(organization_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        lock = self.loading.setdefault(organization_id, asyncio.Lock())
        async with lock:  # a burst with a cold cache makes one query, not one per request
            entry = self.policies.get(organization_id)
            if entry is None or entry[0] <= time.monotonic():
                policy = await sync_to_async(_load_closing)(organization_id)
                entry = self.policies[organization_id] = (time.monotonic() + self.ttl, policy)
        return entry[1]

    async def capture(self, record: dict[str, Any]) -> bool:
        """Queue `record` if its organisation logs it; True when queued. Never raises: a failure is
        logged and counted, and the caller's answer is unaffected."""
        try:
            policy = await self.policy(int(record["organization_id"]))
            draw = random.random()  # noqa: S311 (sampling, not secrecy)
            if not policy.selects(str(record.get("deployment")), record.get("key_prefix"), draw):
                return False
        except (DatabaseError, KeyError, TypeError, ValueError) as error:
            FAILED.inc()
            log.warning("invocation record not logged: %s", error)
            return False
        return await self.enqueue(record, policy)

    async def enqueue(self, record: dict[str, Any], policy: Policy) -> bool:
        """Queue `record`, already selected under `policy` (the gateway decides when the call starts,
        so that it assembles a stream only when the call is logged). Never raises, like `capture`."""
        try:
            line = json.dumps(shape(record, policy), separators=(",", ":"), ensure_ascii=False, default=str)
            organization_id = int(record["organization_id"])
        except (KeyError, TypeError, ValueError) as error:  # a record the gateway built wrong
            FAILED.inc()
            log.warning("invocation record not logged: %s", error)
            return False
        loop = asyncio.get_running_loop()
        queued: asyncio.Future[bool] = loop.create_future()
        self.waiting.append((organization_id, line, queued))
        if len(self.waiting) >= MAX_BATCH:
            self._flush_soon(0)
        elif self.flusher is None:
            self._flush_soon(self.linger)
        return await asyncio.shield(queued)  # a cancelled caller does not take its batch with it

    def _flush_soon(self, delay: float) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        loop = asyncio.get_running_loop()
        self.flusher = loop.call_later(delay, lambda: _keep(loop.create_task(self._flush())))

    async def _flush(self) -> None:
        """Push what waits (one round trip) and tell each capture whether its record was queued."""
        self.flusher = None
        batch, self.waiting = self.waiting, []
        if not batch:
            return
        args: list[Any] = [settings.INVOCATION_LOG_QUEUE_MAX]
        for organization_id, line, _ in batch:
            args += [organization_id, line]
        outcome: list[Any] = []
        try:
            outcome = await cast(Any, self.push(keys=[QUEUE_KEY, OVERFLOW_KEY], args=args))
        except (redis.RedisError, OSError) as error:
            # Redis unreachable: the invocations have been answered already and must not fail for their
            # log; counted and logged instead.
            FAILED.inc(len(batch))
            log.warning("%d invocation records not logged: %s", len(batch), error)
        else:
            queued = sum(int(kept) for kept in outcome)
            QUEUED.inc(queued)
            if len(batch) > queued:
                OVERFLOW.inc(len(batch) - queued)
        finally:
            # Every capture gets its answer, whatever happened here (a shutdown must never wait forever).
            for index, (_, _, future) in enumerate(batch):
                if not future.done():
                    future.set_result(index < len(outcome) and bool(int(outcome[index])))


def shape(record: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """The record as queued: bodies the policy does not keep are nulled, and `mask` says whether the
    writer masks the rest before storing it."""
    kept = dict(record)
    kept["request"] = record.get("request") if policy.keep_requests else None
    kept["answer"] = record.get("answer") if policy.keep_answers else None
    kept["mask"] = policy.mask_personal_data
    return kept


_flushes: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a flush task until it is done (the loop keeps only a weak reference to tasks)."""
    _flushes.add(task)
    task.add_done_callback(_flushes.discard)


_capturers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Capturer] = weakref.WeakKeyDictionary()


def _capturer() -> Capturer:
    loop = asyncio.get_running_loop()
    capturer = _capturers.get(loop)
    if capturer is None:
        capturer = _capturers[loop] = Capturer()
    return capturer


async def capture(record: dict[str, Any]) -> bool:
    """Queue one invocation record (fields: see learning.models) for the log, if its organisation keeps
    it. One Redis round trip when it does, none when it does not (in steady state); never raises."""
    return await _capturer().capture(record)


async def policy_of(organization_id: int) -> Policy:
    """The organisation's policy from this process's snapshot (a database read once per TTL). A policy
    that cannot be read is OFF: the call is answered, and not logged."""
    try:
        return await _capturer().policy(organization_id)
    except DatabaseError as error:
        FAILED.inc()
        log.warning("invocation logging policy of organisation %s not read: %s", organization_id, error)
        return OFF


async def capture_selected(record: dict[str, Any], policy: Policy) -> bool:
    """Queue a record the gateway selected under `policy` when its call started; never raises."""
    return await _capturer().enqueue(record, policy)


def overflow_count(connection: redis.Redis, organization_id: int) -> int:
    """How many of the organisation's records were not logged because the queue was full (since Redis
    last lost its data)."""
    return int(cast(Any, connection.hget(OVERFLOW_KEY, str(organization_id))) or 0)
