"""The OpenAI-compatible audio routes: POST /v1/audio/transcriptions and /v1/audio/translations, for the
deployments of speech recognition cards (the engine's speech-to-text API).

The caller uploads a multipart form, as OpenAI's clients do: `file` (the audio, within the gateway's body
limit, GATEWAY_MAX_BODY_BYTES) and `model` (a deployment's name), and optionally `language` (transcriptions),
`prompt`, `response_format` (json, text, srt, verbose_json, vtt) and `temperature`. Anything else is a 400
naming the field, as on the JSON routes. The gateway sends the engine a form of its own with only those
fields. Keys, limits, routes by capability and error format are those of every route; the usage record
holds the seconds of audio the engine read (its usage, `{"type": "duration", "seconds": …}`, or
verbose_json's `duration`; where it says neither, a WAV file's length from its header), besides the
prompt's tokens. Not offered yet: streamed transcriptions (a 400 naming `stream`), and calls that
guardrails apply to (the audio cannot be checked: a 400 rather than a call the guardrail never saw)."""

from __future__ import annotations

import io
import json
import math
import wave
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from serving.gateway import openai_api, pipeline, routers, upstream
from serving.gateway.errors import openai_error

FIELDS = {
    "audio.transcriptions": frozenset({"model", "language", "prompt", "response_format", "temperature"}),
    "audio.translations": frozenset({"model", "prompt", "response_format", "temperature"}),
}
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def read_form(
    request: HttpRequest, route: str
) -> tuple[dict[str, str], tuple[str, bytes, str]] | tuple[str, str]:
    """(fields, (file name, audio, content type)) of the request's form, or (param, message) for the first
    thing a client got wrong."""
    if not request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
        return (
            "file",
            "Send the audio as multipart/form-data, with the audio in `file` and the deployment in `model`.",
        )
    try:
        body = request.body
    except Exception:
        return "file", "The audio file is over the gateway's body limit."
    meta = {**request.META, "CONTENT_LENGTH": str(len(body))}
    try:
        posted, files = MultiPartParser(meta, io.BytesIO(body), request.upload_handlers, "utf-8").parse()
    except MultiPartParserError as error:
        return "file", f"The multipart form could not be read ({error}); send it as OpenAI's clients do."
    for name in posted:
        if name == "stream":
            return "stream", "Streamed transcriptions are not offered yet: call without stream."
        if name not in FIELDS[route]:
            return name, f"Unrecognized request argument supplied: {name}"
    fields: dict[str, str] = {name: str(posted.get(name, "")) for name in posted}
    if not fields.get("model"):
        return "model", "You must provide a model parameter (the name of one of your deployments)."
    if "response_format" in fields and fields["response_format"] not in RESPONSE_FORMATS:
        return "response_format", f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}."
    if "temperature" in fields:
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            return "temperature", "'temperature' must be a number from 0 to 1."
    upload = files.get("file")
    if upload is None:
        return "file", "You must provide the audio in a `file` field of the form."
    audio = upload.read()
    if not audio:
        return "file", "The audio file is empty."
    return fields, (
        str(upload.name or "audio"),
        bytes(audio),
        str(upload.content_type or "application/octet-stream"),
    )


async def _audio(request: HttpRequest, route: str) -> HttpResponse:
    caller = await openai_api.caller_of(request, route)
    if isinstance(caller, HttpResponse):
        return caller
    form = read_form(request, route)
    if isinstance(form[0], str):
        param, message = form
        return openai_error(400, str(message), param=param)
    fields, file = form
    assert isinstance(fields, dict) and isinstance(file, tuple)
    model = fields["model"]
    resolved = await pipeline.resolve(caller, model, route)
    if isinstance(resolved, routers.Unresolved):
        if resolved.status != 404:
            return openai_error(resolved.status, resolved.message, param="model")
        message = f"The model `{model}` does not exist or you do not have access to it."
        return openai_error(404, message, code="model_not_found")
    target, router = resolved
    call = pipeline.Call(
        caller=caller, target=target, route=route, model=model, streamed=False,
        estimated_prompt_tokens=pipeline.estimate_prompt_tokens({"prompt": fields.get("prompt", "")}),
        payload=dict(fields), router=router,
    )  # fmt: skip
    refusal = await openai_api.admission_refusal(call)
    if refusal is not None:
        return refusal
    if call.guardrails:
        call.status_code = 400
        await pipeline.finish(call)
        message = (
            f"Guardrails apply to this call, and the audio of {openai_api.PATHS[route]} cannot be checked "
            "yet; call with a key and a deployment that have no guardrail attached."
        )
        return openai_error(400, message, param="file", headers=pipeline.answer_headers(call))
    # The engine reads the deployment's name in `model`, whichever name (a router's) the caller used.
    engine_fields = {**fields, "model": str(call.payload.get("model", model))}
    sent = upstream.call_form(openai_api.PATHS[route], engine_fields, file, call.target.endpoints)
    exchange = await openai_api.exchanged(call, sent)
    if isinstance(exchange, HttpResponse):
        return exchange
    call.status_code = exchange.status
    if exchange.status == 200:
        call.audio_seconds = _seconds(exchange.body) or _wave_seconds(file[1])
    await pipeline.finish(call)
    content_type = exchange.headers.get("Content-Type", "application/json")
    response = HttpResponse(exchange.body, status=exchange.status, content_type=content_type)
    openai_api.with_call_headers(response, call)
    return response


def _seconds(body: bytes) -> int:
    """The seconds of audio the engine says it read: its JSON answer's usage, or verbose_json's
    `duration`; 0 where it says neither (the text formats, translations)."""
    try:
        answer: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return 0
    if not isinstance(answer, dict):
        return 0
    usage = answer.get("usage")
    seconds = usage.get("seconds") if isinstance(usage, dict) and usage.get("type") == "duration" else None
    if seconds is None:
        seconds = answer.get("duration")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return math.ceil(seconds)
    return 0


def _wave_seconds(audio: bytes) -> int:
    """A WAV file's length from its header, where the engine said none; 0 for other formats."""
    try:
        with wave.open(io.BytesIO(audio)) as sound:
            rate = sound.getframerate()
            return math.ceil(sound.getnframes() / rate) if rate else 0
    except (wave.Error, EOFError, ValueError):
        return 0


@csrf_exempt
async def transcriptions(request: HttpRequest) -> HttpResponse:
    return await _audio(request, "audio.transcriptions")


@csrf_exempt
async def translations(request: HttpRequest) -> HttpResponse:
    return await _audio(request, "audio.translations")
