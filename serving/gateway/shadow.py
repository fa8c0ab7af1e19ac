"""Shadow calls: a router's other candidates answer a sampled share of its calls, for training only.

To learn which candidate answers which prompts well enough, a router needs answers of every candidate
to the same prompts. On a share of its calls (the router's shadow_rate, drawn when the call is routed,
so that the call keeps its answer), once the caller's answer is complete:

1. Each other candidate that is available (serving.gateway.capacity) is sent the same request, unstreamed,
   in a task of its own: the caller's answer is never delayed or changed, and a failed shadow call
   costs the caller nothing.
2. At most MAX_IN_FLIGHT shadow calls run at once per process; a call beyond that is skipped, not
   queued, so a burst cannot build a backlog ("busy" in /metrics).
3. Each reserves the most it may use in the router's tokens of the UTC day (capped by
   shadow_tokens_per_day) and in the organisation's monthly budget, atomically, before it is sent
   (serving.gateway.limits); no room in either: skipped ("capped"). The most it may use is the served
   call's prompt tokens plus its completion bound (`completion_bound`): the caller's own max_tokens
   when it set one, else twice the served answer's length and at least MIN_COMPLETION_BOUND, sent as
   the shadow call's max_tokens so the engine stops there. After the answer the monthly budget is
   corrected to what was really used; the day's counter only gives back, never adds, so however many
   gateway processes shadow at once the router's day never passes its cap (a reservation that could
   be exceeded would let each process overshoot it by its in-flight calls' excess). Shadow calls are
   the organisation's spending, not the caller's: they count in its monthly budget but in no
   per-minute limit of the key or the organisation, so shadowing never throttles the traffic it
   samples.
4. Each is metered as a usage record of the organisation with route "router.shadow", no API key, the
   deployment that answered, and the router's name and choice.
5. The served answer and the shadow answers go to learning.routing.record_sample, which keeps them as
   a sample to be judged (training targets). Nothing is recorded when no shadow answer came.

At shutdown, shadow calls still running get a moment to finish (`settle`), then are cancelled: they
answer nobody, and their reserved tokens stay counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis
from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils import timezone

from learning import routing
from serving.gateway import capacity, metrics, upstream
from serving.gateway.directory import Target

if TYPE_CHECKING:
    from serving.gateway.pipeline import Call, Services

log = logging.getLogger(__name__)

ROUTE = "router.shadow"
MAX_IN_FLIGHT = 4
MIN_COMPLETION_BOUND = 256  # tokens a shadow answer may take when the caller set no max_tokens
BOUNDS = ("max_tokens", "max_completion_tokens")
# Engine paths of the routes a router shadows (Bedrock's are chat completions once translated).
PATHS = {
    "chat.completions": "/v1/chat/completions", "completions": "/v1/completions",
    "bedrock.converse": "/v1/chat/completions", "bedrock.converse-stream": "/v1/chat/completions",
    "bedrock.invoke": "/v1/chat/completions", "bedrock.invoke-stream": "/v1/chat/completions",
}  # fmt: skip

_in_flight = 0
_tasks: set[asyncio.Task[None]] = set()


def sampled(route: routing.Route) -> bool:
    """Whether this call of the router is shadowed (its other candidates called after the answer)."""
    if route.shadow_tokens_per_day <= 0 or route.shadow_rate <= 0:
        return False
    return random.random() < route.shadow_rate  # noqa: S311 (sampling, not secrecy)


def start(call: Call, gateway: Services, finished: float) -> None:
    """Shadow-call the other candidates of a shadowed call whose answer was complete (status 200), in
    the background."""
    if not call.shadow or call.status_code != 200 or call.router is None:
        return
    task = asyncio.get_running_loop().create_task(_shadow(call, gateway, finished))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def settle(timeout: float) -> None:
    """At shutdown: give this loop's shadow calls `timeout` seconds, then cancel them."""
    running = [task for task in _tasks if task.get_loop() is asyncio.get_running_loop()]
    if not running:
        return
    _, late = await asyncio.wait(running, timeout=timeout)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)


async def _shadow(call: Call, gateway: Services, finished: float) -> None:
    try:
        router = call.router
        assert router is not None
        served = served_answer(call, round((finished - call.started) * 1000))
        if served is None:
            return
        others = [
            target
            for name, target in router.candidates.items()
            if name != call.target.name and capacity.available(target)
        ]
        answers = await asyncio.gather(*(_call(call, gateway, target) for target in others))
        shadowed = {target.name: answer for target, answer in zip(others, answers, strict=True) if answer}
        if not shadowed:
            return
        samples = {call.target.name: served, **shadowed}
        await sync_to_async(_record)(router.route.router_id, call.request_id, call.prompt, samples)
    except Exception:  # a sample lost must never surface anywhere but the log
        log.exception("shadow calls of request %s failed", call.request_id)


def _record(router_id: int, request_id: str, prompt: str, answers: dict[str, dict[str, Any]]) -> None:
    try:
        routing.record_sample(router_id, request_id, prompt, answers)
    finally:
        close_old_connections()  # a worker thread's connection must not outlive it


async def _call(call: Call, gateway: Services, target: Target) -> dict[str, Any] | None:
    """One shadow call to `target`: reserved, sent, metered; its answer as a sample holds it, or None."""
    global _in_flight
    router = call.router
    assert router is not None
    route = router.route
    if _in_flight >= MAX_IN_FLIGHT:
        metrics.SHADOW_CALLS.labels(route.name, target.name, "busy").inc()
        return None
    served_prompt = call.prompt_tokens if call.prompt_tokens is not None else call.estimated_prompt_tokens
    estimate = served_prompt + completion_bound(call)
    org_id = call.caller.organization_id
    _in_flight += 1
    try:
        try:
            reserved = await gateway.limiter.reserve_shadow_tokens(
                router_id=route.router_id, org_id=org_id, tokens=estimate,
                per_day=route.shadow_tokens_per_day, monthly_budget=call.caller.limits.org_monthly_tokens,
            )  # fmt: skip
        except redis.RedisError as error:
            log.warning("shadow call of router %s skipped: %s", route.name, error)
            metrics.SHADOW_CALLS.labels(route.name, target.name, "failed").inc()
            return None
        if not reserved:
            metrics.SHADOW_CALLS.labels(route.name, target.name, "capped").inc()
            return None
        return await _send(call, gateway, target, estimate)
    finally:
        _in_flight -= 1


async def _send(call: Call, gateway: Services, target: Target, estimate: int) -> dict[str, Any]:
    router = call.router
    assert router is not None
    route = router.route
    payload = {
        name: value
        for name, value in call.payload.items()
        if name not in ("stream", "stream_options", *BOUNDS)
    }
    payload["model"] = target.name
    payload["max_tokens"] = completion_bound(call)
    started = time.perf_counter()
    status, answer = 502, None
    try:
        exchange = await upstream.call(PATHS[call.route], payload, target.endpoints)
        status = exchange.status
        answer = _json(exchange.body) if status == 200 else None
    except upstream.UpstreamError as error:
        status = error.status
    elapsed = time.perf_counter() - started
    usage = (answer or {}).get("usage") if isinstance(answer, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    outcome = "called" if status == 200 else "failed"
    metrics.SHADOW_CALLS.labels(route.name, target.name, outcome).inc()
    metrics.observe(target.deployment_id, target.name, ROUTE, status, elapsed, None, prompt, completion)
    record = {
        "request_id": uuid.uuid4().hex,
        "organization_id": call.caller.organization_id,
        "api_key_id": None,
        "deployment_id": target.deployment_id,
        "model": route.name,
        "route": ROUTE,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "latency_ms": round(elapsed * 1000),
        "time_to_first_token_ms": None,
        "status_code": status,
        "streamed": False,
        "router": route.name,
        "router_choice": call.choice.chosen if call.choice is not None else "",
        "created_at": timezone.now().isoformat(),
    }
    writes = [
        gateway.queue.push(record),
        gateway.limiter.settle_shadow_tokens(
            router_id=route.router_id,
            org_id=call.caller.organization_id,
            tokens=prompt + completion - estimate,
            day_gives_back_only=True,
        ),
    ]
    for outcome_of_write in await asyncio.gather(*writes, return_exceptions=True):
        if isinstance(outcome_of_write, redis.RedisError):
            metrics.METERING_ERRORS.inc()
        elif isinstance(outcome_of_write, BaseException):
            raise outcome_of_write
    return {
        "text": answer_text(answer) if isinstance(answer, dict) else "",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "latency_ms": round(elapsed * 1000),
        "status": status,
    }


def completion_bound(call: Call) -> int:
    """The most completion tokens a shadow call of `call` may generate (see the module docstring)."""
    for name in BOUNDS:
        value = call.payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return max(2 * call.completion_tokens, MIN_COMPLETION_BOUND)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


def served_answer(call: Call, latency_ms: int) -> dict[str, Any] | None:
    """The caller's answer as a router sample holds it, or None when the call did not keep it."""
    answer = call.assembly.answer(None) if call.assembly is not None else call.answer
    if not isinstance(answer, dict):
        return None
    prompt = call.prompt_tokens if call.prompt_tokens is not None else call.estimated_prompt_tokens
    return {
        "text": answer_text(answer),
        "prompt_tokens": prompt,
        "completion_tokens": call.completion_tokens,
        "latency_ms": latency_ms,
        "status": call.status_code,
    }


def answer_text(answer: dict[str, Any]) -> str:
    """The first choice's text of an OpenAI chat or completions answer ("" when it has none)."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""
