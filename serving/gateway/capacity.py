"""Whether a router's candidate can take a call right now, from what this process already knows.

A candidate is unavailable when:
1. it is no target (not ready, or its model's subscription is not in force: serving.gateway.directory);
2. it has no replica (scaled to zero: no endpoint);
3. even its least busy replica (the one serving.gateway.upstream would send the call to) has more than
   GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA requests in hand. A replica's count is the larger of two
   figures: the requests this process has outstanding there (upstream counts them, exact and free),
   and the engine's own `vllm:num_requests_waiting` (requests queued at the engine, from every
   gateway process), read from its /metrics.

The engine's figure is read in the background, never on a request's path: a refresher task per event
loop reads the /metrics of every replica a router asked about in the last WATCH_SECONDS, every
SCRAPE_SECONDS, and stops when no router has asked for that long. A figure older than STALE_SECONDS
(an engine that stopped answering its metrics) is ignored, so the outstanding count alone decides.
Only the lines of that one metric are parsed (vLLM's /metrics holds many histograms), with
prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from serving.gateway import upstream
from serving.gateway.directory import Target

log = logging.getLogger(__name__)

WAITING_METRIC = "vllm:num_requests_waiting"
SCRAPE_SECONDS = 2.0
SCRAPE_TIMEOUT_SECONDS = 1.0
STALE_SECONDS = 10.0
WATCH_SECONDS = 60.0

_waiting: dict[str, tuple[float, float]] = {}  # endpoint -> (requests waiting, monotonic time read)
_watched: dict[str, float] = {}  # endpoint -> monotonic time a router last asked about it
_refreshers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def waiting_in(metrics_text: str) -> float | None:
    """The requests an engine reports waiting (summed over its engines' series), or None when its
    metrics do not say."""
    lines = [line for line in metrics_text.splitlines() if WAITING_METRIC in line]
    total, seen = 0.0, False
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name == WAITING_METRIC:
                total += sample.value
                seen = True
    return total if seen else None


def queue(endpoint: str) -> float:
    """Requests one replica has in hand, as far as this process knows (see the module docstring)."""
    mine = float(upstream.outstanding(endpoint))
    reported = _waiting.get(endpoint)
    if reported is None or time.monotonic() - reported[1] > STALE_SECONDS:
        return mine
    return max(mine, reported[0])


def available(target: Target | None) -> bool:
    """Whether a router may send a call to this candidate now (see the module docstring)."""
    if target is None or not target.endpoints:
        return False
    watch(target.endpoints)
    threshold = settings.GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA
    return min(queue(endpoint) for endpoint in target.endpoints) <= threshold


def load(target: Target) -> float:
    """The least busy replica's queue; infinite without a replica (for ranking a last resort)."""
    return min((queue(endpoint) for endpoint in target.endpoints), default=float("inf"))


def watch(endpoints: tuple[str, ...]) -> None:
    """Note that a router asked about these replicas, and make sure a refresher reads their queues."""
    now = time.monotonic()
    for endpoint in endpoints:
        _watched[endpoint] = now
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # asked outside an event loop (a test): nothing to refresh from
        return
    task = _refreshers.get(loop)
    if task is None or task.done():
        _refreshers[loop] = loop.create_task(_refresh(), name="router-capacity-refresh")


async def _refresh() -> None:
    """Read the watched replicas' waiting queues every SCRAPE_SECONDS until none was asked about for
    WATCH_SECONDS."""
    while True:
        now = time.monotonic()
        for endpoint, asked in list(_watched.items()):
            if now - asked > WATCH_SECONDS:
                del _watched[endpoint]
                _waiting.pop(endpoint, None)
        if not _watched:
            return
        await refresh(list(_watched))
        await asyncio.sleep(SCRAPE_SECONDS)


async def refresh(endpoints: list[str]) -> None:
    """Read these replicas' waiting queues now, side by side (one refresher pass)."""
    await asyncio.gather(*(_read(endpoint) for endpoint in endpoints))


async def _read(endpoint: str) -> None:
    try:
        text = await upstream.read_metrics(endpoint, SCRAPE_TIMEOUT_SECONDS)
    except upstream.UpstreamError as error:
        log.debug("queue of %s not read: %s", endpoint, error.message)
        return
    try:
        waiting = waiting_in(text)
    except ValueError as error:  # an engine that garbles its metrics: only outstanding counts decide
        log.debug("queue of %s not understood: %s", endpoint, error)
        return
    if waiting is not None:
        _waiting[endpoint] = (waiting, time.monotonic())
