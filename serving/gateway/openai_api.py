"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses,
/v1/models, and the engine's scoring routes in the same style: /v1/rerank (Jina's and Cohere's shape)
and /v1/score.

Each is a thin async view over serving.gateway.pipeline; streams pass through event by event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from serving.gateway import guardrails, media, pipeline, request_fields, routers, scoring, upstream
from serving.gateway.directory import Caller, Target
from serving.gateway.errors import key_refusal, openai_error
from serving.spec import POOLING_ROUTES

PATHS = {
    "chat.completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
    "rerank": "/v1/rerank",
    "score": "/v1/score",
    "audio.transcriptions": "/v1/audio/transcriptions",
    "audio.translations": "/v1/audio/translations",
}
# Where the engine serves each route: its own paths for the scoring routes (vLLM answers /v1/rerank and
# /v1/score too, but as deprecated aliases that log a warning, /v1/score on every request).
ENGINE_PATHS = {**PATHS, "rerank": "/rerank", "score": "/score"}
# The Responses API's last event of a stream, which holds the whole response and its usage.
FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class BodyTooLarge(Exception):
    """The request body is over GATEWAY_MAX_BODY_BYTES (a 413 in each API's format)."""


def read_body(request: HttpRequest) -> bytes:
    """The request body, or BodyTooLarge: by its declared length before reading, and by what arrives
    when no length is declared (a chunked upload), where Django refuses to read past its limit."""
    declared = request.headers.get("content-length")
    limit = settings.GATEWAY_MAX_BODY_BYTES
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is {int(declared)} bytes; the limit is {limit}.")
    try:
        return request.body
    except RequestDataTooBig:
        raise BodyTooLarge(f"The request body is over the limit; the limit is {limit} bytes.") from None


def body_error(problem: str) -> HttpResponse:
    """The answer to what `read_json` found wrong: 413 for a body over the limit, else 400."""
    return openai_error(413 if "limit is" in problem else 400, problem)


def read_json(request: HttpRequest) -> dict[str, Any] | str:
    """The request's JSON object, or a sentence saying what is wrong with it."""
    try:
        body = read_body(request)
    except BodyTooLarge as error:
        return str(error)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "We could not parse the JSON body of your request: send a JSON object."
    except RecursionError:  # the parser's own limit, some 1,000 levels: no request nests that deep
        return "The JSON body of your request is nested too deeply to read: send a flatter JSON object."
    if not isinstance(payload, dict):
        return "The request body must be a JSON object."
    return payload


def check_shape(route: str, payload: dict[str, Any]) -> tuple[str, str] | None:
    """(param, message) for the first thing a client got wrong, checked before anything is spent, against
    the allow-list of engine requests (serving.gateway.request_fields; serving.gateway.scoring for rerank
    and score), in OpenAI's words."""
    problem = (scoring.check if route in scoring.ROUTES else request_fields.check)(route, payload)
    if problem is None:
        return None
    if problem.unknown:
        return problem.field, f"Unrecognized request argument supplied: {problem.field}"
    if problem.field == "model":
        return "model", "You must provide a model parameter (the name of one of your deployments)."
    return problem.field, f"'{problem.field}' {problem.rule}."


async def caller_of(request: HttpRequest, route: str) -> Caller | HttpResponse:
    """The caller behind the request's API key, or the answer that refuses it (405, 401)."""
    if request.method != "POST":
        return openai_error(405, f"Use POST for {PATHS[route]}.")
    authorization = request.headers.get("authorization", "")
    caller = await pipeline.services().directory.caller(authorization)
    if caller is None:
        refused = key_refusal(authorization, "Incorrect, expired or revoked API key provided.")
        return openai_error(401, refused, code="invalid_api_key")
    return caller


async def admission_refusal(call: pipeline.Call) -> HttpResponse | None:
    """Admit the call under its organisation's limits; the answer that refuses it (503, 429), or None."""
    try:
        decision = await pipeline.admit(call)
    except pipeline.LimitsUnavailable:
        message = "The gateway cannot check rate limits right now; retry shortly."
        return openai_error(503, message, headers=pipeline.answer_headers(call))
    if decision.allowed:
        return None
    headers = {
        **decision.headers(),
        "Retry-After": str(decision.retry_after_seconds),
        **pipeline.answer_headers(call),
    }
    code = "insufficient_quota" if "monthly" in decision.reason else "rate_limit_exceeded"
    return openai_error(
        429, f"Rate limit reached: {decision.reason}. Retry later.", code=code, headers=headers
    )


async def exchanged(
    call: pipeline.Call, sent: Awaitable[upstream.Exchange]
) -> upstream.Exchange | HttpResponse:
    """The engine's answer to the call (`sent`: the upstream request), or, when none came, the error
    answer; the call is metered either way (a caller who went away, as CLIENT_CLOSED)."""
    try:
        return await sent
    except upstream.UpstreamError as error:
        call.status_code = error.status
        await pipeline.finish(call)
        return openai_error(error.status, error.message, headers=pipeline.answer_headers(call))
    except asyncio.CancelledError:  # the caller went away: what was admitted is still metered
        call.status_code = pipeline.CLIENT_CLOSED
        await pipeline.finish(call)
        raise


def with_call_headers(response: HttpResponseBase, call: pipeline.Call) -> HttpResponseBase:
    """`response` with the headers every answer of an admitted call carries (its limits, request id,
    router)."""
    assert call.decision is not None
    for name, value in {**call.decision.headers(), **pipeline.answer_headers(call)}.items():
        response[name] = value
    return response


async def _invoke(request: HttpRequest, route: str) -> HttpResponse | StreamingHttpResponse:
    caller = await caller_of(request, route)
    if isinstance(caller, HttpResponse):
        return caller
    payload = read_json(request)
    if isinstance(payload, str):
        return body_error(payload)
    return await invoke_as(caller, route, payload)


async def invoke_as(
    caller: Caller, route: str, payload: dict[str, Any], *, log_route: str | None = None
) -> HttpResponse | StreamingHttpResponse:
    """Check, admit, proxy and meter one call of `caller` (an API key's, or a signed-in person's in the
    web playground): the same path whoever calls. `log_route` names the route in invocation records
    when it is not the API's own (the playground's)."""
    problem = check_shape(route, payload)
    if problem:
        return openai_error(400, problem[1], param=problem[0])
    model = payload["model"]
    resolved = await pipeline.resolve(caller, model, route)
    if isinstance(resolved, routers.Unresolved):
        if resolved.status != 404:
            return openai_error(resolved.status, resolved.message, param="model")
        return openai_error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    target, router = resolved
    unreadable = media_refusal(route, payload, target)
    if unreadable:
        return openai_error(400, unreadable[1], param=unreadable[0])
    streamed = bool(payload.get("stream")) and route not in POOLING_ROUTES
    call = pipeline.Call(
        caller=caller, target=target, route=route, model=model, streamed=streamed,
        estimated_prompt_tokens=pipeline.estimate_prompt_tokens(payload), payload=payload,
        log_route=log_route, router=router,
    )  # fmt: skip
    refusal = await admission_refusal(call)
    if refusal is not None:
        return refusal
    # From here on the call goes to call.target, with call.payload naming it (a router has chosen).
    unchecked = _unguardable(call, route) if call.guardrails else None
    if unchecked:
        call.status_code = 400
        await pipeline.finish(call)
        return openai_error(400, unchecked[1], param=unchecked[0], headers=pipeline.answer_headers(call))
    if await pipeline.guard_input(call):
        return await _blocked_input(call, route)
    if streamed:
        return await _stream(call, route, call.payload)
    exchange = await exchanged(call, upstream.call(ENGINE_PATHS[route], call.payload, call.target.endpoints))
    if isinstance(exchange, HttpResponse):
        return exchange
    call.status_code = exchange.status
    body = exchange.body
    if exchange.status == 200 or call.log is not None or call.guardrails:
        answer = call.answered(body)
        checked = answer is not None and route not in POOLING_ROUTES  # vectors and scores hold no text
        if checked and await pipeline.guard_answer(call, answer or {}, guardrails.CONTENT_FILTER):
            body = json.dumps(answer).encode()
    await pipeline.finish(call)
    response = HttpResponse(body, status=exchange.status, content_type="application/json")
    with_call_headers(response, call)
    return response


def media_refusal(route: str, payload: dict[str, Any], target: Target) -> tuple[str, str] | None:
    """(param, message) when the request holds an image, video or audio the deployment must not be sent
    (serving.gateway.media), checked before admission: nothing is spent on it. For a router, against the
    candidate it is admitted under."""
    if route not in media.CONTAINERS:
        return None
    limits = media.Limits(settings.GATEWAY_MAX_MEDIA_BYTES, frozenset(settings.ENGINE_MEDIA_DOMAINS))
    return media.check(
        route, payload, deployment=target.name, modalities_in=target.modalities_in, limits=limits
    )


def _unguardable(call: pipeline.Call, route: str) -> tuple[str, str] | None:
    """(param, message) when guardrails apply to the call and cannot check it yet: refused, rather than
    sent to the model unchecked."""
    if route in scoring.ROUTES:
        return "model", (
            f"Guardrails apply to this call, and the texts of {PATHS[route]} cannot be checked yet; call "
            "with a key and a deployment that have no guardrail attached."
        )
    return None


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _blocked_input(call: pipeline.Call, route: str) -> HttpResponse:
    """The answer to a call whose input a guardrail blocked, without calling the engine: the guardrail's
    message as the answer, finish reason `content_filter` (embeddings have no answer to say it in: a 400)."""
    call.prompt_tokens = 0
    message = call.guardrail_message
    if route == "embeddings":
        call.status_code = 400
        await pipeline.finish(call)
        return openai_error(400, message, param="input", code="content_filter",
                            headers=pipeline.answer_headers(call))  # fmt: skip
    if call.streamed:
        chunks = guardrails.blocked_chunks(route, call.model, message)
        if (call.payload.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            chunks.append({**chunks[0], "choices": [], "usage": usage})
        body = b"".join(map(_event, chunks)) + b"data: [DONE]\n\n"
        response = HttpResponse(body, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
    else:
        answer = guardrails.blocked_answer(route, call.model, message)
        if call.log is not None:
            call.answer = answer
        response = HttpResponse(json.dumps(answer), content_type="application/json")
    await pipeline.finish(call)
    with_call_headers(response, call)
    return response


async def _stream(
    call: pipeline.Call, route: str, payload: dict[str, Any]
) -> HttpResponse | StreamingHttpResponse:
    """Pass the engine's events through as they come. The engine is always asked for the usage chunk;
    it reaches the client only if the client asked for it too. The Responses API has no usage chunk:
    its last event carries the whole response, usage included, and always reaches the client."""
    responses = route == "responses"
    wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    upstream_payload = (
        payload
        if responses
        else {**payload, "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}
    )
    call.payload = upstream_payload
    exchange = await pipeline.start_stream(call, ENGINE_PATHS[route], upstream_payload)
    if isinstance(exchange, pipeline.Refusal):
        if exchange.message:
            return openai_error(exchange.status, exchange.message, headers=pipeline.answer_headers(call))
        refused = HttpResponse(exchange.body, status=exchange.status, content_type="application/json")
        for name, value in pipeline.answer_headers(call).items():
            refused[name] = value
        return refused

    checks = await pipeline.stream_checks(call, guardrails.CONTENT_FILTER)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for event in upstream.events(exchange):
                chunk = pipeline.read_chunk(event)
                if checks is not None and responses:
                    if chunk is None:  # not a JSON event: nothing the guardrails read leaves unread
                        continue
                    # the guardrails' output checks, on the Responses API's typed events
                    for checked in await checks.rewrite_event(chunk):
                        if checked.get("type") in pipeline.RESPONSE_DELTAS:
                            call.first_token()
                            call.relayed(checked)
                        elif checked.get("type") in FINAL_RESPONSE_EVENTS and checks.blocked is None:
                            call.responded(checked.get("response"))
                            call.answered_in_full = True
                        yield _event(checked)
                    if checks.blocked is not None:
                        return  # the engine request is closed with the stream
                    continue
                if checks is not None and (chunk is None or chunk.get("choices")):
                    # the guardrails' output checks: what is held back is sent later, masked, or never
                    for checked in await checks.rewrite(chunk) if chunk is not None else await checks.end():
                        call.first_token()
                        call.relayed(checked)
                        yield _event(checked)
                    if checks.blocked is not None:
                        yield b"data: [DONE]\n\n"  # the engine request is closed with the stream
                        return
                    if chunk is not None:
                        continue
                if chunk is None:
                    call.answered_in_full = event.strip() == b"data: [DONE]"
                elif chunk.get("choices") or chunk.get("type") in pipeline.RESPONSE_DELTAS:
                    call.first_token()
                    call.relayed(chunk)  # metered even if the caller leaves before the usage chunk
                elif responses and chunk.get("type") in FINAL_RESPONSE_EVENTS:
                    call.responded(chunk.get("response"))
                    call.answered_in_full = True
                elif chunk.get("usage"):
                    call.saw_usage(chunk["usage"])
                    if not wants_usage:
                        continue
                yield event
        except upstream.UpstreamError as error:
            call.status_code = error.status
            message = json.dumps({"error": {"message": error.message, "type": "server_error"}})
            yield f"data: {message}\n\n".encode()

    response = pipeline.stream_response(call, exchange, relay(), "text/event-stream", checks)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    with_call_headers(response, call)
    return response


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _invoke(request, "chat.completions")


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _invoke(request, "completions")


@csrf_exempt
async def responses(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _invoke(request, "responses")


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _invoke(request, "embeddings")


@csrf_exempt
async def rerank(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _invoke(request, "rerank")


@csrf_exempt
async def score(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _invoke(request, "score")


async def models(request: HttpRequest) -> HttpResponse:
    """The caller's organisation's ready deployments and prompt routers, as OpenAI lists models, each
    with the routes it serves."""
    caller = await pipeline.services().directory.caller(request.headers.get("authorization", ""))
    if caller is None:
        return openai_error(
            401,
            key_refusal(
                request.headers.get("authorization", ""), "Incorrect, expired or revoked API key provided."
            ),
            code="invalid_api_key",
        )
    data = [
        {
            "id": found.name, "object": "model", "created": 0, "owned_by": "organization",
            # What it can do (choices.ROUTES names): the openai client keeps unknown fields as extras.
            "routes": list(found.routes if isinstance(found, Target) else routers.ROUTER_ROUTES),
        }
        for found in await pipeline.services().directory.callables(caller)
    ]  # fmt: skip
    return HttpResponse(json.dumps({"object": "list", "data": data}), content_type="application/json")
