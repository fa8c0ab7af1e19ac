"""Bedrock-runtime-compatible routes: Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

The model id is the deployment's name. Requests are translated to the engine's OpenAI chat API and
answers back (serving.gateway.bedrock); streams are framed as AWS event streams, one event per engine
event, as they come.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from learning import guardrails as policies
from serving.gateway import bedrock, guardrails, pipeline, routers, upstream
from serving.gateway.errors import bedrock_error, key_refusal
from serving.gateway.openai_api import BodyTooLarge, media_refusal, read_body, read_json

EVENT_STREAM = "application/vnd.amazon.eventstream"
Answer = TypeVar("Answer", HttpResponse, StreamingHttpResponse)


async def _prepare(
    request: HttpRequest,
    model_id: str,
    route: str,
    translate: Callable[[], dict[str, Any]],
    named: Callable[[], tuple[str, str, bool] | None] = lambda: None,
) -> pipeline.Call | HttpResponse:
    """Authenticate, translate, resolve, admit and check the input against the guardrails (a blocked
    input is noted on the call, for the route to answer in its shape); an error answer in Bedrock's
    format otherwise. `named` gives the guardrail the request named (guardrailConfig), once translated."""
    if request.method != "POST":
        return bedrock_error(405, "Use POST.")
    gateway = pipeline.services()
    caller = await gateway.directory.caller(request.headers.get("authorization", ""))
    if caller is None:
        return bedrock_error(
            403,
            key_refusal(
                request.headers.get("authorization", ""), "The API key is unknown, expired or revoked."
            ),
        )
    try:
        payload = translate()
    except BodyTooLarge as error:
        return bedrock_error(413, str(error))
    except bedrock.BedrockValidationError as error:
        return bedrock_error(413 if "limit is" in str(error) else 400, str(error))
    resolved = await pipeline.resolve(caller, model_id, route)
    if isinstance(resolved, routers.Unresolved):
        if resolved.status != 404:
            return bedrock_error(resolved.status, resolved.message)
        return bedrock_error(404, f"The model {model_id} does not exist or you do not have access to it.")
    target, router = resolved
    unreadable = media_refusal("chat.completions", payload, target)  # every Bedrock route sends a chat
    if unreadable:
        return bedrock_error(400, unreadable[1])
    call = pipeline.Call(
        caller=caller,
        target=target,
        route=route,
        model=model_id,
        streamed=route.endswith("stream"),
        estimated_prompt_tokens=pipeline.estimate_prompt_tokens(payload),
        router=router,
    )
    call.payload = payload
    config = named()
    if config is not None:
        identifier, version, call.guardrail_trace = config
        catalog = await pipeline.services().directory.catalog(caller)
        try:
            call.requested_guardrail = await guardrails.named(call, catalog.guardrails, identifier, version)
        except guardrails.Unknown:
            return bedrock_error(
                400,
                f"guardrailConfig.guardrailIdentifier: no published guardrail {identifier} version {version} "
                "in your organisation; name one of your guardrails by id or name, and a published version.",
            )
    try:
        decision = await pipeline.admit(call)  # a router chooses here; call.payload then names its choice
    except pipeline.LimitsUnavailable:
        message = "The gateway cannot check rate limits right now; retry shortly."
        return bedrock_error(503, message, headers=pipeline.answer_headers(call))
    if not decision.allowed:
        headers = {
            **decision.headers(),
            "Retry-After": str(decision.retry_after_seconds),
            **pipeline.answer_headers(call),
        }
        return bedrock_error(429, f"Too many requests: {decision.reason}. Retry later.", headers=headers)
    await pipeline.guard_input(call)
    return call


def _reason(call: pipeline.Call) -> str:
    """What a blocked answer's finish reason is: Converse's stopReason, or OpenAI's for InvokeModel."""
    return (
        guardrails.GUARDRAIL_INTERVENED
        if call.route.startswith("bedrock.converse")
        else guardrails.CONTENT_FILTER
    )


async def _blocked_input(call: pipeline.Call) -> dict[str, Any]:
    """The chat answer of a call whose input a guardrail blocked (the engine is not called)."""
    call.prompt_tokens = 0
    answer = guardrails.blocked_answer("chat.completions", call.model, call.guardrail_message, _reason(call))
    if call.log is not None:
        call.answer = answer
    await pipeline.finish(call)
    return answer


def _with_trace(call: pipeline.Call, body: dict[str, Any]) -> dict[str, Any]:
    """Converse's answer (or stream metadata) with the guardrails' trace, when the caller asked for it."""
    if not call.guardrail_trace or not call.guardrails:
        return body
    return {**body, "trace": {**(body.get("trace") or {}), "guardrail": guardrails.trace(call)}}


def _json_body(request: HttpRequest) -> dict[str, Any]:
    payload = read_json(request)
    if isinstance(payload, str):
        raise bedrock.BedrockValidationError(payload)
    return payload


async def _complete(
    call: pipeline.Call, payload: dict[str, Any]
) -> tuple[dict[str, Any] | None, HttpResponse | None]:
    """Run a non-streamed chat completion; (answer, None) or (None, an error answer)."""
    call.payload = payload
    try:
        exchange = await upstream.call("/v1/chat/completions", payload, call.target.endpoints)
    except upstream.UpstreamError as error:
        call.status_code = error.status
        await pipeline.finish(call)
        return None, bedrock_error(error.status, error.message, headers=pipeline.answer_headers(call))
    except asyncio.CancelledError:  # the caller went away: what was admitted is still metered
        call.status_code = pipeline.CLIENT_CLOSED
        await pipeline.finish(call)
        raise
    call.status_code = exchange.status
    answer = call.answered(exchange.body) if exchange.status == 200 or call.log is not None else None
    if exchange.status != 200:
        await pipeline.finish(call)
        status = 400 if exchange.status < 500 else 502
        return None, bedrock_error(
            status, _engine_message(exchange.body), headers=pipeline.answer_headers(call)
        )
    if answer is None:
        call.status_code = 502
        await pipeline.finish(call)
        message = "The model's answer could not be read."
        return None, bedrock_error(502, message, headers=pipeline.answer_headers(call))
    await pipeline.guard_answer(call, answer, _reason(call))
    await pipeline.finish(call)
    return answer, None


def _engine_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return "The model could not answer this request."


class _Converse:
    """A Converse request body read once: its guardrailConfig taken out, the rest translated."""

    def __init__(self, request: HttpRequest, model_id: str, stream: bool = False) -> None:
        self.request, self.model_id, self.stream = request, model_id, stream
        self.config: tuple[str, str, bool] | None = None

    def translate(self) -> dict[str, Any]:
        body = _json_body(self.request)
        self.config = bedrock.guardrail_config(body)
        return bedrock.converse_to_openai(self.model_id, body, stream=self.stream)

    def named(self) -> tuple[str, str, bool] | None:
        return self.config


@csrf_exempt
async def converse(request: HttpRequest, model_id: str) -> HttpResponse:
    body = _Converse(request, model_id)
    prepared = await _prepare(request, model_id, "bedrock.converse", body.translate, body.named)
    if isinstance(prepared, HttpResponse):
        return prepared
    if prepared.guardrail_blocked == policies.INPUT:
        answer: dict[str, Any] | None = await _blocked_input(prepared)
    else:
        answer, error = await _complete(prepared, prepared.payload)
        if error is not None:
            return error
    assert answer is not None
    latency = round((time.perf_counter() - prepared.started) * 1000)
    converse_answer = _with_trace(
        prepared,
        bedrock.openai_to_converse(answer, latency_ms=latency, invoked_model=routers.invoked_model(prepared)),
    )
    return _with_headers(HttpResponse(json.dumps(converse_answer), content_type="application/json"), prepared)


def _with_headers(response: Answer, call: pipeline.Call) -> Answer:
    """`response` with the headers every answer of an admitted call carries (the request id, and who
    answered for a router)."""
    for name, value in pipeline.answer_headers(call).items():
        response[name] = value
    return response


@csrf_exempt
async def invoke(request: HttpRequest, model_id: str) -> HttpResponse:
    prepared = await _prepare(
        request,
        model_id,
        "bedrock.invoke",
        lambda: bedrock.invoke_body_to_openai(model_id, read_body(request)),
    )
    if isinstance(prepared, HttpResponse):
        return prepared
    payload = {**prepared.payload, "stream": False}
    if prepared.guardrail_blocked == policies.INPUT:
        answer: dict[str, Any] | None = await _blocked_input(prepared)
    else:
        answer, error = await _complete(prepared, payload)
        if error is not None:
            return error
    assert answer is not None
    response = HttpResponse(bedrock.openai_to_invoke_body(answer), content_type="application/json")
    return _with_headers(response, prepared)


async def _stream(
    call: pipeline.Call,
    payload: dict[str, Any],
    frame: Callable[[dict[str, Any]], list[bytes]],
    close: Callable[[int], list[bytes]],
) -> HttpResponse | StreamingHttpResponse:
    upstream_payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    call.payload = upstream_payload
    if call.guardrail_blocked == policies.INPUT:
        return await _blocked_stream(call, frame, close)
    exchange = await pipeline.start_stream(call, "/v1/chat/completions", upstream_payload)
    if isinstance(exchange, pipeline.Refusal):
        headers = pipeline.answer_headers(call)
        if exchange.message:
            return bedrock_error(exchange.status, exchange.message, headers=headers)
        status = 400 if exchange.status < 500 else 502
        return bedrock_error(status, _engine_message(exchange.body), headers=headers)

    checks = await pipeline.stream_checks(call, _reason(call))

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for event in upstream.events(exchange):
                chunk = pipeline.read_chunk(event)
                if chunk is None:
                    continue  # "data: [DONE]" and comments have no Bedrock counterpart
                for checked in [chunk] if checks is None else await checks.rewrite(chunk):
                    if checked.get("usage") and not checked.get("choices"):
                        call.saw_usage(checked["usage"])
                    elif checked.get("choices"):
                        call.first_token()
                        call.relayed(checked)  # metered even if the caller leaves before the usage chunk
                    for framed in frame(checked):
                        yield framed
                if checks is not None and checks.blocked is not None:
                    break  # the engine request is closed with the stream
            for checked in [] if checks is None else await checks.end():
                call.relayed(checked)
                for framed in frame(checked):
                    yield framed
            closing = list(close(round((time.perf_counter() - call.started) * 1000)))
            for index, framed in enumerate(closing):
                call.answered_in_full = index == len(closing) - 1
                yield framed
        except upstream.UpstreamError as error:
            call.status_code = error.status
            yield bedrock.encode_exception("ModelStreamErrorException", error.message)

    return _with_headers(pipeline.stream_response(call, exchange, relay(), EVENT_STREAM, checks), call)


async def _blocked_stream(
    call: pipeline.Call,
    frame: Callable[[dict[str, Any]], list[bytes]],
    close: Callable[[int], list[bytes]],
) -> HttpResponse:
    """The stream of a call whose input a guardrail blocked: the blocked-input message, then the stop
    reason that says why (the engine is not called)."""
    call.prompt_tokens = 0
    chunks = guardrails.blocked_chunks("chat.completions", call.model, call.guardrail_message, _reason(call))
    framed = [part for chunk in chunks for part in frame(chunk)]
    framed += close(round((time.perf_counter() - call.started) * 1000))
    await pipeline.finish(call)
    return _with_headers(HttpResponse(b"".join(framed), content_type=EVENT_STREAM), call)


@csrf_exempt
async def converse_stream(request: HttpRequest, model_id: str) -> HttpResponse | StreamingHttpResponse:
    body = _Converse(request, model_id, stream=True)
    prepared = await _prepare(request, model_id, "bedrock.converse-stream", body.translate, body.named)
    if isinstance(prepared, HttpResponse):
        return prepared
    translator = bedrock.ConverseStreamTranslator(invoked_model=routers.invoked_model(prepared))

    def frame(chunk: dict[str, Any]) -> list[bytes]:
        return [bedrock.encode_event(kind, body) for kind, body in translator.feed(chunk)]

    def close(latency_ms: int) -> list[bytes]:
        if prepared.guardrails:  # the interventions so far, for the trace in the metadata event
            checks = prepared.stream_checks
            if checks is not None:
                checks.note_all()
        return [
            bedrock.encode_event(kind, _with_trace(prepared, body) if kind == "metadata" else body)
            for kind, body in translator.finish(latency_ms)
        ]

    return await _stream(prepared, prepared.payload, frame, close)


@csrf_exempt
async def invoke_stream(request: HttpRequest, model_id: str) -> HttpResponse | StreamingHttpResponse:
    prepared = await _prepare(
        request,
        model_id,
        "bedrock.invoke-stream",
        lambda: bedrock.invoke_body_to_openai(model_id, read_body(request), stream=True),
    )
    if isinstance(prepared, HttpResponse):
        return prepared

    def frame(chunk: dict[str, Any]) -> list[bytes]:
        return [bedrock.invoke_stream_chunk(json.dumps(chunk).encode())]

    return await _stream(prepared, prepared.payload, frame, lambda latency_ms: [])
