"""What every invoke route does, whatever its API: authenticate, resolve, admit, proxy, meter.

1. The API key → the caller (cached; no database query in steady state).
2. The model name → a ready deployment of the caller's organisation, or its prompt router of that name
   (cached; serving.gateway.routers.resolve), or the same 404 as for a name that does not exist.
3. Limits: one atomic Redis round trip checks and counts requests and prompt tokens (estimated from the
   request's size; corrected when the engine reports usage). For a router, then, its decision
   (serving.gateway.routers.choose): from here on the call is a call to the chosen deployment. Then
   the guardrails that apply (serving.gateway.guardrails.select, from the same snapshot as the
   deployments), and whether the call is logged (serving.gateway.invocation_log.decide, from an
   in-process snapshot: no round trip). The routes then check the input (masked, or answered with the
   guardrail's message without calling the engine).
4. Proxy to a replica (serving.gateway.upstream); the output checked (a stream through the guardrails'
   hold-back window); a logged (or shadowed) stream is assembled as it is relayed.
5. Meter, after the answer and without the caller waiting: completion tokens to the limiter, a usage
   record to the Redis queue a periodic task flushes to PostgreSQL (with the router's name and choice
   for a routed call, and the guardrails' interventions), Prometheus metrics, and a logged call's
   invocation record to the log's bounded queue (learning.capture). A shadowed call's other
   candidates are called then (serving.gateway.shadow).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone

from learning import routing
from learning.capture import Policy
from learning.guardrails import Policy as GuardrailPolicy
from serving.gateway import guardrails as guardrail_step
from serving.gateway import invocation_log, metrics, routers, scoring, shadow, upstream
from serving.gateway.directory import Caller, Directory, RouterTarget, Target
from serving.gateway.limits import Decision, RateLimiter
from serving.gateway.metering import UsageQueue

log = logging.getLogger(__name__)

# The status a call is metered with when its caller went away before the answer (nginx's convention).
CLIENT_CLOSED = 499
BYTES_PER_TOKEN = 4  # a rough, conservative guess of prompt tokens before the engine has counted them


class Services:
    """The per-event-loop clients (Redis connections belong to the loop that opened them)."""

    def __init__(self) -> None:
        # A blocking pool: a burst waits (up to 5 s) for a free connection instead of failing.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=200, timeout=5, socket_timeout=5
        )
        connection = redis.asyncio.Redis(connection_pool=pool)
        self.directory = Directory()
        self.limiter = RateLimiter(connection)
        self.queue = UsageQueue(connection)


_services: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Services] = weakref.WeakKeyDictionary()


def services() -> Services:
    loop = asyncio.get_running_loop()
    found = _services.get(loop)
    if found is None:
        found = _services[loop] = Services()
    return found


# What an engine reads as its prompt: the chat template renders the messages (every content part, tool
# calls and tool results, system prompts, which Bedrock's `system` becomes) and the tools' schemas (which
# Bedrock's `toolConfig` becomes) into one text; completions read the prompt and the suffix; embeddings
# the input; the Responses API its input and instructions; rerank its query and documents, score its
# two sides (serving.gateway.scoring).
PROMPT_FIELDS = (
    "messages", "tools", "prompt", "suffix", "input", "instructions", "query", "documents", "queries",
    "text_1", "text_2",
)  # fmt: skip


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    """Prompt tokens to count at admission, before the engine has counted them: the JSON text of every
    field the engine reads as its prompt (PROMPT_FIELDS), BYTES_PER_TOKEN characters a token. One
    serialisation, no tokenizer: admission stays cheap, and a caller cannot make a large prompt look
    small by moving it into a field the estimate skips. A rerank's or score's one query counts once for
    each text it is paired with, as the engine reads it (scoring.repeated_characters). The engine's own
    count replaces the estimate when it reports usage."""
    read = [payload[name] for name in PROMPT_FIELDS if payload.get(name)]
    characters = len(json.dumps(read, ensure_ascii=False)) + scoring.repeated_characters(payload)
    return max(1, characters // BYTES_PER_TOKEN)


# A streamed chat delta's members that hold generated text (vLLM's reasoning parsers fill
# `reasoning_content` in older releases, `reasoning` in newer ones).
GENERATED = ("content", "tool_calls", "reasoning_content", "reasoning")


def relayed_tokens(chunk: dict[str, Any]) -> int:
    """Completion tokens one streamed chunk carried to the caller: one per choice whose delta holds
    generated text (content, reasoning, a tool call) or, for completions, whose `text` is not empty.

    Counting what was relayed, rather than asking the engine to tokenize it, costs no extra round trip
    to the engine on the hot path (and the engine may be gone when the caller is). It is exact for
    vLLM, which streams one event per generated token of each choice, and a lower bound for an engine
    that joins several tokens into one event (speculative decoding): a caller is never charged for
    more than was sent. The engine's usage chunk, when it comes, replaces the count.
    """
    if chunk.get("type") in RESPONSE_DELTAS:  # the Responses API: one event per token it generated
        return 1 if chunk.get("delta") else 0
    tokens = 0
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            tokens += any(map(delta.get, GENERATED))
        elif choice.get("text"):
            tokens += 1
    return tokens


# The Responses API's streamed events that carry generated text.
RESPONSE_DELTAS = frozenset(
    {"response.output_text.delta", "response.reasoning_text.delta", "response.function_call_arguments.delta"}
)


def read_chunk(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one server-sent event (`data: {…}`, after an `event: …` line where the API
    names its events, as the Responses API does), or None for anything else (`[DONE]`, a comment, a
    line an engine garbled), which is relayed as it is and counts for nothing."""
    if event.startswith(b"event: "):
        event = event.partition(b"\n")[2]
    if not event.startswith(b"data: {"):
        return None
    try:
        chunk = json.loads(event[6:])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


@dataclass
class Call:
    """One invocation as it goes through the pipeline, and what is metered of it."""

    caller: Caller
    target: Target
    route: str
    model: str
    streamed: bool
    estimated_prompt_tokens: int
    decision: Decision | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    audio_seconds: int = 0  # the audio routes: seconds of audio the engine read (its usage)
    status_code: int = 200
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    payload: dict[str, Any] = field(default_factory=dict)  # the engine request, once translated
    log: Policy | None = None  # set when the call is logged (invocation_log.decide)
    log_route: str | None = None  # the record's route when not the API's (the web playground)
    assembly: invocation_log.StreamAssembly | None = None  # a logged stream, put back together
    answer: Any = None  # a logged (or shadowed) call's unstreamed answer
    router: RouterTarget | None = None  # the router called, which chose `target`
    choice: routing.Choice | None = None  # its decision (in shadow mode, `chosen` is not the target)
    prompt: str = ""  # a routed call's prompt text, as its router predicted on it
    embedding: Any = None  # a routed call's prompt embedding, when its router needed one
    shadow: bool = False  # whether the router's other candidates are called after the answer
    embedding_usage: routers.EmbeddingUsage | None = None  # what the router's prompt embedding used
    # Guardrails (serving.gateway.guardrails): the policies that apply, the one a Bedrock caller named,
    # what they did, and the direction a block came in ("" when none did).
    guardrails: tuple[GuardrailPolicy, ...] = ()
    requested_guardrail: GuardrailPolicy | None = None
    interventions: list[guardrail_step.Recorded] = field(default_factory=list)
    guardrail_blocked: str = ""
    # The API's last event of a stream was relayed: a caller who leaves after it has read the whole answer.
    answered_in_full: bool = False
    guardrail_message: str = ""  # the blocked guardrail's message, once one blocked
    guardrail_trace: bool = False  # Bedrock's guardrailConfig.trace: the interventions in the answer
    stream_checks: guardrail_step.StreamCheck | None = None  # a streamed answer's output checks

    def answered(self, body: bytes) -> dict[str, Any] | None:
        """The engine's unstreamed JSON answer, read once: its usage replaces the estimate, and a logged
        call keeps it for its record. None when the body is not a JSON object."""
        try:
            answer = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(answer, dict):
            return None
        if self.status_code == 200:
            self.saw_usage(answer.get("usage"))
        if self.log is not None or self.shadow:
            self.answer = answer
        return answer

    def saw_usage(self, usage: dict[str, Any] | None) -> None:
        """The engine's own counts, which replace the estimate and the relayed count."""
        if isinstance(usage, dict):  # the Responses API names them input and output tokens
            self.prompt_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)

    def responded(self, response: Any) -> None:
        """A streamed Responses API call's final response (its `response.completed` or
        `response.incomplete` event): the engine's usage, and a logged call's answer as the engine
        gives it unstreamed."""
        if not isinstance(response, dict):
            return
        self.saw_usage(response.get("usage"))
        if self.log is not None or self.shadow:
            self.answer, self.assembly = response, None

    def relayed(self, chunk: dict[str, Any]) -> None:
        """Count the completion tokens a streamed chunk carried to the caller (`relayed_tokens`), so a
        stream the caller leaves before the engine's usage chunk is still metered for what it received.
        Nothing is counted once the engine has reported usage: its figures are exact."""
        if self.prompt_tokens is None:
            self.completion_tokens += relayed_tokens(chunk)
        if self.assembly is not None:
            self.assembly.feed(chunk)

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()


class LimitsUnavailable(Exception):
    """Redis could not be asked: nobody is admitted unchecked."""


async def admit(call: Call) -> Decision:
    try:
        decision = await services().limiter.admit(
            key_id=call.caller.key_id,
            org_id=call.caller.organization_id,
            limits=call.caller.limits,
            prompt_tokens=call.estimated_prompt_tokens,
        )
    except redis.RedisError as error:
        raise LimitsUnavailable(str(error)) from error
    call.decision = decision
    if decision.allowed:
        if call.router is not None:
            await routers.choose(call)
        catalog = await services().directory.catalog(call.caller)
        guardrail_step.select(call, catalog.guardrails)
        await invocation_log.decide(call)
        if call.shadow and call.streamed and call.assembly is None:
            call.assembly = invocation_log.StreamAssembly()  # the served answer of the sample
    return decision


async def guard_input(call: Call) -> bool:
    """Check the admitted call's input against its guardrails (serving.gateway.guardrails): the
    payload is masked in place; True when a guardrail blocked it (call.guardrail_message says what to
    answer, and the engine must not be called)."""
    if not call.guardrails:
        return False
    targets = (await services().directory.catalog(call.caller)).targets
    blocked = await guardrail_step.check_input(call, targets)
    if blocked is None:
        return False
    call.guardrail_message = blocked.blocked_input_message
    return True


async def guard_answer(call: Call, answer: dict[str, Any], reason: str) -> bool:
    """Check an unstreamed answer (masked in place); True when it changed (masked or blocked, the
    finish reason then `reason`)."""
    if not call.guardrails or call.status_code != 200:
        return False
    before = len(call.interventions)
    targets = (await services().directory.catalog(call.caller)).targets
    await guardrail_step.check_answer(call, answer, reason, targets)
    return len(call.interventions) > before


async def stream_checks(call: Call, reason: str) -> guardrail_step.StreamCheck | None:
    """The output checks of a streamed answer (None without guardrails), kept on the call."""
    if not call.guardrails:
        return None
    targets = (await services().directory.catalog(call.caller)).targets
    call.stream_checks = guardrail_step.StreamCheck(call, reason, targets)
    return call.stream_checks


async def resolve(
    caller: Caller, name: str, route: str
) -> tuple[Target, RouterTarget | None] | routers.Unresolved:
    """What the call to `name` goes to: (a deployment, None), or (the deployment it is admitted under,
    the router) for a router, which chooses after admission; or why it cannot be called."""
    return await routers.resolve(services().directory, caller, name, route)


def answer_headers(call: Call) -> dict[str, str]:
    """The headers every invoke answer of an admitted call carries (serving.gateway.routers.headers)."""
    return routers.headers(call)


_metering: set[asyncio.Task[None]] = set()


async def finish(call: Call) -> None:
    """Meter a finished call, after the answer: the figures are taken now, the Redis writes run as a task
    of their own, so the caller waits for neither (`drain` awaits them when the process stops). Never
    raises: metering must not turn an answered request into an error."""
    finished = time.perf_counter()
    task = asyncio.get_running_loop().create_task(_meter(call, finished))
    _metering.add(task)
    task.add_done_callback(_metering.discard)
    shadow.start(call, services(), finished)


async def drain() -> None:
    """Wait for the metering still in flight, then give the usage spool a moment to reach Redis
    (graceful shutdown: no usage record is lost; what stays spooled the next process pushes)."""
    from serving.gateway import metering

    while _metering:
        await asyncio.gather(*list(_metering), return_exceptions=True)
    await shadow.settle(timeout=1)  # shadow calls meter themselves; they answer nobody, so they wait least
    # Short: this runs within gunicorn's graceful timeout, after uvicorn's own (marketplace/server.py).
    await metering.settle_spools(timeout=1)


async def _meter(call: Call, finished: float) -> None:
    try:
        await _write_usage(call, finished)
    except Exception:  # metering must never take the gateway down; the record is counted as lost
        log.exception("metering request %s failed", call.request_id)
        metrics.USAGE_LOST.inc()


async def _write_usage(call: Call, finished: float) -> None:
    elapsed = finished - call.started
    ttft = None if call.first_token_at is None else call.first_token_at - call.started
    refused = call.prompt_tokens is None and call.status_code >= 400 and call.status_code != CLIENT_CLOSED
    if refused:
        # Refused (the engine's 4xx, such as a prompt past its max model length) or never answered, and no
        # usage reported: nothing was generated for the caller, so nothing is charged.
        prompt = 0
    else:
        prompt = call.prompt_tokens if call.prompt_tokens is not None else call.estimated_prompt_tokens
    # The estimate was counted at admission; now count what the engine really used (a negative
    # correction gives back what was over-counted).
    correction = prompt - call.estimated_prompt_tokens + call.completion_tokens
    record = {
        "request_id": call.request_id,
        "organization_id": call.caller.organization_id,
        "api_key_id": call.caller.key_id,
        "deployment_id": call.target.deployment_id,
        "model": call.model,
        "route": call.route,
        "prompt_tokens": prompt,
        "completion_tokens": call.completion_tokens,
        "latency_ms": round(elapsed * 1000),
        "time_to_first_token_ms": None if ttft is None else round(ttft * 1000),
        "status_code": call.status_code,
        "streamed": call.streamed,
        "router": call.router.name if call.router is not None else "",
        "router_choice": call.choice.chosen if call.choice is not None else "",
        "created_at": timezone.now().isoformat(),
    }
    if call.audio_seconds:
        record["audio_seconds"] = call.audio_seconds
    if call.interventions:  # which guardrail did what (never the matched text)
        record["guardrail_interventions"] = guardrail_step.records(call)
        guardrail_step.count(call)
    metrics.observe(
        call.target.deployment_id,
        call.target.name,
        call.route,
        call.status_code,
        elapsed,
        ttft,
        prompt,
        call.completion_tokens,
    )
    gateway = services()
    # The usage push keeps the record in the spool when Redis cannot take it.
    writes: list[Awaitable[Any]] = [gateway.queue.push(record)]
    embedded = routers.embedding_record(call, str(record["created_at"]))
    if embedded is not None:  # the router's own prompt embedding: the organisation's, not the key's
        used = call.embedding_usage
        assert used is not None
        metrics.observe(
            used.target.deployment_id, used.target.name, routers.EMBEDDING_ROUTE, used.status,
            used.seconds, None, used.prompt_tokens, 0,
        )  # fmt: skip
        writes.append(gateway.queue.push(embedded))
        writes.append(
            gateway.limiter.add_tokens(
                key_id=None, org_id=call.caller.organization_id, tokens=used.prompt_tokens
            )
        )
    if call.log is not None:
        writes.append(invocation_log.capture(call, finished))  # never raises
    if call.interventions:
        writes.append(guardrail_step.write(call, str(record["created_at"])))  # never raises
    if correction > 0:
        writes.append(
            gateway.limiter.add_tokens(
                key_id=call.caller.key_id, org_id=call.caller.organization_id, tokens=correction
            )
        )
    elif correction < 0 and refused:  # an over-estimate of an answered call is not given back
        writes.append(
            gateway.limiter.give_back_tokens(
                key_id=call.caller.key_id, org_id=call.caller.organization_id, tokens=-correction
            )
        )
    # All at once: one round trip of waiting, not several.
    queued, *counted = await asyncio.gather(*writes, return_exceptions=True)
    if isinstance(queued, BaseException):
        raise queued
    for outcome in counted:
        if isinstance(outcome, redis.RedisError):
            metrics.METERING_ERRORS.inc()
        elif isinstance(outcome, BaseException):
            raise outcome


@dataclass(frozen=True)
class Refusal:
    """Why a stream could not start: the gateway's own message, or the engine's error body."""

    status: int
    message: str = ""
    body: bytes = b""


async def start_stream(call: Call, path: str, payload: dict[str, Any]) -> upstream.Exchange | Refusal:
    """Open the engine's stream; when that fails, meter the call and say why."""
    try:
        exchange = await upstream.open_stream(path, payload, call.target.endpoints)
    except upstream.UpstreamError as error:
        call.status_code = error.status
        await finish(call)
        return Refusal(error.status, error.message)
    if exchange.status != 200:
        try:
            body = await upstream.read_rest(exchange)
        except upstream.UpstreamError as error:
            call.status_code = error.status
            await finish(call)
            return Refusal(error.status, error.message)
        call.status_code = exchange.status
        await finish(call)
        return Refusal(exchange.status, body=body)
    return exchange


def stream_response(
    call: Call,
    exchange: upstream.Exchange,
    body: AsyncIterator[bytes],
    content_type: str,
    checks: guardrail_step.StreamCheck | None = None,
) -> StreamingHttpResponse:
    """The streaming answer with `body` (the API's events), and the clean-up every way a stream can end:
    the engine request closed (when the client left, the engine stops generating) and the call metered,
    once. `response.close_relay` lets the ASGI front run the clean-up itself, whatever happened, instead
    of waiting for the generator to be collected.

    A stream closed before `body` ended is metered with CLIENT_CLOSED, as an unstreamed call whose
    caller left is: its answer is cut short, so neither the usage record nor the invocation log may
    present it as a whole answer (datasets made from logs take status 200 as a complete one). Unless its
    last event had been relayed (`call.answered_in_full`): a caller may well close the connection on
    that event, before the relay has finished, having read the whole answer."""
    closed = ended = False

    async def close_relay() -> None:
        nonlocal closed
        if not closed:
            closed = True
            cut_short = not ended and not call.answered_in_full
            if cut_short and call.status_code == 200 and not call.guardrail_blocked:
                call.status_code = CLIENT_CLOSED
            if checks is not None:  # what the output checks found, however the stream ended
                checks.note_all()
            await upstream.close(exchange)
            await finish(call)

    async def content() -> AsyncIterator[bytes]:
        nonlocal ended
        try:
            async for part in body:
                yield part
            ended = True
        finally:
            await close_relay()

    response = StreamingHttpResponse(content(), content_type=content_type)
    response.close_relay = close_relay  # type: ignore[attr-defined]
    return response
