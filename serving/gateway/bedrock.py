"""Bedrock runtime ⇄ OpenAI chat translation, and AWS event-stream framing.

The engines speak only OpenAI chat/completions, yet an unmodified boto3 `bedrock-runtime` client must not
notice. Everything here is pure (plain dicts and bytes in and out, no Django, no I/O), so every mapping is
tested against botocore's own parser without a network. Shapes follow botocore's
`bedrock-runtime/2023-09-30/service-2.json`.

Requests are translated strictly: a field or content block we cannot honour is a ValidationException
naming it, never silently dropped, because a dropped image or guardrail changes the answer unseen.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any, NoReturn

from serving.gateway import request_fields

Event = tuple[str, dict[str, Any]]

# HTTP status of every bedrock-runtime error (service-2.json `error.httpStatusCode`). The gateway answers
# with this status, the header `x-amzn-ErrorType: <name>` (botocore takes the error code from that header)
# and the body from error_body().
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400, "ConflictException": 400, "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403, "ResourceNotFoundException": 404, "ModelTimeoutException": 408,
    "ModelErrorException": 424, "ModelStreamErrorException": 424, "ThrottlingException": 429,
    "ModelNotReadyException": 429, "InternalServerException": 500, "ServiceUnavailableException": 503,
}  # fmt: skip

# Sampling knobs vLLM understands and Converse has no field for (a part of the chat route's allow-list,
# serving.gateway.request_fields, whose rules check their values). Anything else in
# additionalModelRequestFields is refused: it could override a field we set (model, messages, stream).
EXTRA_PARAMS = frozenset(
    {"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed"}
)

# Where a chat request's field came from in a Converse request, to name it when the allow-list refuses it.
CONVERSE_PATHS = {"messages": "messages", "max_tokens": "inferenceConfig.maxTokens",
                  "temperature": "inferenceConfig.temperature", "top_p": "inferenceConfig.topP",
                  "stop": "inferenceConfig.stopSequences", "tools": "toolConfig.tools",
                  "tool_choice": "toolConfig.toolChoice"}  # fmt: skip

# requestMetadata only tags invocation logs, which have no engine-side meaning, so it is accepted and ignored.
REQUEST_FIELDS = frozenset(
    {"messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields", "requestMetadata"}
)

# inferenceConfig field → (OpenAI name, minimum, maximum, integer?), ranges from the service model.
INFERENCE = {"maxTokens": ("max_tokens", 1, None, True), "temperature": ("temperature", 0, 1, False),
             "topP": ("top_p", 0, 1, False)}  # fmt: skip
TOOL_CHOICES = {"auto": "auto", "any": "required"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "content_filtered",
                # what the gateway's own guardrails put in a blocked answer (serving.gateway.guardrails)
                "guardrail_intervened": "guardrail_intervened"}  # fmt: skip
GUARDRAIL_TRACES = ("enabled", "disabled", "enabled_full")


class BedrockValidationError(ValueError):
    """A request that cannot be translated; the message starts with the path of the offending field."""


# --- validation helpers -------------------------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise BedrockValidationError(f"{path}: {problem}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "must be an object")
    return value


def _list(value: Any, path: str, *, non_empty: bool = True) -> list[Any]:
    if not isinstance(value, list) or (non_empty and not value):
        _fail(path, "must be a non-empty list" if non_empty else "must be a list")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(path, "must be a non-empty string")
    return value


def _only(obj: dict[str, Any], allowed: frozenset[str] | set[str], path: str, *, hint: str = "") -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        _fail(f"{path}.{unknown[0]}" if path else unknown[0], f"unsupported field{hint}")


def _union(value: Any, path: str) -> tuple[str, Any]:
    """A Bedrock union (content block, tool, tool choice) is an object with exactly one member."""
    block = _object(value, path)
    if len(block) != 1:
        _fail(path, f"must have exactly one member, got {sorted(block) or 'none'}")
    ((kind, inner),) = block.items()
    return kind, inner


# --- Converse request → OpenAI request ---------------------------------------------------------------


def guardrail_config(body: dict[str, Any]) -> tuple[str, str, bool] | None:
    """Take Converse's `guardrailConfig` out of the body: (guardrail id or name, version, trace wanted),
    or None when there is none. The guardrail itself is looked up by the gateway (the caller's own)."""
    if "guardrailConfig" not in body:
        return None
    config = _object(body.pop("guardrailConfig"), "guardrailConfig")
    _only(
        config,
        {"guardrailIdentifier", "guardrailVersion", "trace", "streamProcessingMode"},
        "guardrailConfig",
    )
    identifier = _string(config.get("guardrailIdentifier"), "guardrailConfig.guardrailIdentifier")
    version = _string(config.get("guardrailVersion"), "guardrailConfig.guardrailVersion")
    if not version.isdigit():
        _fail("guardrailConfig.guardrailVersion", "must be a published version number (1, 2, …)")
    trace = config.get("trace", "disabled")
    if trace not in GUARDRAIL_TRACES:
        _fail("guardrailConfig.trace", f"must be one of {', '.join(GUARDRAIL_TRACES)}")
    mode = config.get("streamProcessingMode", "sync")
    if mode not in ("sync", "async"):
        _fail("guardrailConfig.streamProcessingMode", "must be sync or async")
    return identifier, version, trace != "disabled"


def converse_to_openai(model: str, body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    """Translate a Converse (or, with stream=True, ConverseStream) request body into a chat request.

    A streamed request asks for the usage chunk, because ConverseStream's metadata event needs the counts.
    """
    body = _object(body, "body")
    _only(body, REQUEST_FIELDS, "")
    messages: list[dict[str, Any]] = []
    blocks = _list(body.get("system", []), "system", non_empty=False)
    system = [
        text for i, block in enumerate(blocks) if (text := _system_text(block, f"system[{i}]")) is not None
    ]
    if system:
        messages.append({"role": "system", "content": "\n".join(system)})
    for index, message in enumerate(_list(body.get("messages"), "messages")):
        messages.extend(_message(message, f"messages[{index}]"))
    request: dict[str, Any] = {"model": model, "messages": messages}
    request.update(_inference(body.get("inferenceConfig", {})))
    if "toolConfig" in body:
        request.update(_tools(body["toolConfig"]))
    extra = _object(body.get("additionalModelRequestFields", {}), "additionalModelRequestFields")
    allowed = ", ".join(sorted(EXTRA_PARAMS))
    _only(extra, EXTRA_PARAMS, "additionalModelRequestFields", hint=f" (allowed: {allowed})")
    request.update(extra)
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    problem = request_fields.check("chat.completions", request)
    if problem is not None:  # in practice a value in additionalModelRequestFields, the only one unchecked
        extra_path = f"additionalModelRequestFields.{problem.field}"
        _fail(CONVERSE_PATHS.get(problem.field, extra_path), problem.rule)
    return request


def _system_text(block: Any, path: str) -> str | None:
    kind, value = _union(block, path)
    if kind == "text":
        return _string(value, f"{path}.text")
    if kind == "cachePoint":  # a caching hint; vLLM caches prefixes by itself
        return None
    _fail(path, f"unsupported system block '{kind}'")


def _message(message: Any, path: str) -> list[dict[str, Any]]:
    """One Converse message → OpenAI messages.

    Tool results become `tool` messages placed *before* the message's remaining text, because OpenAI
    requires them right after the assistant message that made the calls.
    """
    message = _object(message, path)
    _only(message, {"role", "content"}, path)
    role = message.get("role")
    if role not in ("user", "assistant"):
        _fail(f"{path}.role", "must be 'user' or 'assistant'")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    converted: list[dict[str, Any]] = []
    for index, block in enumerate(_list(message.get("content"), f"{path}.content")):
        where = f"{path}.content[{index}]"
        kind, value = _union(block, where)
        if kind == "text":
            texts.append(_string(value, f"{where}.text"))
        elif kind == "toolUse" and role == "assistant":
            tool_calls.append(_tool_call(value, f"{where}.toolUse"))
        elif kind == "toolResult" and role == "user":
            converted.append(_tool_result(value, f"{where}.toolResult"))
        elif kind == "cachePoint" or (kind == "reasoningContent" and role == "assistant"):
            # Earlier turns' reasoning is dropped, as the reasoning models' own chat templates do.
            continue
        elif kind in ("toolUse", "toolResult", "reasoningContent"):
            _fail(where, f"content block '{kind}' is not allowed in a {role} message")
        else:
            _fail(where, f"unsupported content block '{kind}'")
    if role == "assistant":
        content = "\n".join(texts) if texts or not tool_calls else None
        entry: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            entry["tool_calls"] = tool_calls
        converted.append(entry)
    elif texts:
        converted.append({"role": "user", "content": "\n".join(texts)})
    return converted


def _tool_call(value: Any, path: str) -> dict[str, Any]:
    value = _object(value, path)
    _only(value, {"toolUseId", "name", "input"}, path)  # `type` means a server-side tool we cannot run
    if "input" not in value:
        _fail(f"{path}.input", "is required")
    call_id = _string(value.get("toolUseId"), f"{path}.toolUseId")
    name = _string(value.get("name"), f"{path}.name")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(value["input"])},
    }


def _tool_result(value: Any, path: str) -> dict[str, Any]:
    value = _object(value, path)
    _only(value, {"toolUseId", "content", "status"}, path)
    parts: list[str] = []
    for index, item in enumerate(_list(value.get("content"), f"{path}.content", non_empty=False)):
        kind, inner = _union(item, f"{path}.content[{index}]")
        if kind == "text":
            parts.append(_string(inner, f"{path}.content[{index}].text"))
        elif kind == "json":
            parts.append(json.dumps(inner))
        else:
            _fail(f"{path}.content[{index}]", f"unsupported tool result block '{kind}'")
    status = value.get("status", "success")
    if status not in ("success", "error"):
        _fail(f"{path}.status", "must be 'success' or 'error'")
    content = "\n".join(parts)
    if status == "error":  # OpenAI has no error flag on a tool message; say it in words so the model knows
        content = f"Error: {content}"
    call_id = _string(value.get("toolUseId"), f"{path}.toolUseId")
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _inference(config: Any) -> dict[str, Any]:
    config = _object(config, "inferenceConfig")
    _only(config, {*INFERENCE, "stopSequences"}, "inferenceConfig")
    out: dict[str, Any] = {}
    for field, (name, low, high, integer) in INFERENCE.items():
        if field in config:
            value, where = config[field], f"inferenceConfig.{field}"
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                _fail(where, "must be an integer" if integer else "must be a number")
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            if value < low or (high is not None and value > high):
                _fail(where, f"must be {bounds}")
            out[name] = value
    stops = _list(config.get("stopSequences", []), "inferenceConfig.stopSequences", non_empty=False)
    if stops:
        out["stop"] = [_string(stop, f"inferenceConfig.stopSequences[{i}]") for i, stop in enumerate(stops)]
    return out


def _tools(config: Any) -> dict[str, Any]:
    config = _object(config, "toolConfig")
    _only(config, {"tools", "toolChoice"}, "toolConfig")
    specs = _list(config.get("tools"), "toolConfig.tools")
    tools = [_function(tool, f"toolConfig.tools[{i}]") for i, tool in enumerate(specs)]
    out: dict[str, Any] = {"tools": [tool for tool in tools if tool is not None]}
    if "toolChoice" in config:
        kind, choice = _union(config["toolChoice"], "toolConfig.toolChoice")
        if kind == "tool":
            choice = _object(choice, "toolConfig.toolChoice.tool")
            name = _string(choice.get("name"), "toolConfig.toolChoice.tool.name")
            out["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif kind in TOOL_CHOICES:
            out["tool_choice"] = TOOL_CHOICES[kind]
        else:
            _fail("toolConfig.toolChoice", f"unsupported tool choice '{kind}'")
    return out


def _function(tool: Any, path: str) -> dict[str, Any] | None:
    kind, spec = _union(tool, path)
    if kind == "cachePoint":
        return None
    if kind != "toolSpec":
        _fail(path, f"unsupported tool '{kind}'")
    path += ".toolSpec"
    spec = _object(spec, path)
    _only(spec, {"name", "description", "inputSchema", "strict"}, path)
    schema_kind, schema = _union(spec.get("inputSchema"), f"{path}.inputSchema")
    if schema_kind != "json":
        _fail(f"{path}.inputSchema", f"unsupported schema kind '{schema_kind}'")
    function: dict[str, Any] = {
        "name": _string(spec.get("name"), f"{path}.name"),
        "parameters": _object(schema, f"{path}.inputSchema.json"),
    }
    if "description" in spec:
        function["description"] = _string(spec["description"], f"{path}.description")
    if "strict" in spec:
        function["strict"] = spec["strict"] is True
    return {"type": "function", "function": function}


# --- OpenAI response → Converse response ---------------------------------------------------------------


def stop_reason(finish_reason: str | None, matched_stop: Any = None, *, used_tools: bool = False) -> str:
    """Bedrock's stopReason for an OpenAI finish_reason.

    vLLM's non-standard `stop_reason` holds the stop *string* that ended generation (a token id or None
    otherwise), so only a string means a stop sequence. A reply with tool calls is `tool_use` even when the
    engine says `stop` (vLLM does for a forced tool choice): Bedrock clients run tools on that value.
    """
    reason = STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if reason == "end_turn" and isinstance(matched_stop, str):
        reason = "stop_sequence"
    if used_tools and reason in ("end_turn", "stop_sequence"):
        reason = "tool_use"
    return reason


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    total = int(usage.get("total_tokens") or prompt + completion)
    return {"inputTokens": prompt, "outputTokens": completion, "totalTokens": total}


def _reasoning(fields: dict[str, Any]) -> str | None:
    """vLLM's reasoning parsers fill `reasoning_content` (older) or `reasoning` (newer)."""
    return fields.get("reasoning_content") or fields.get("reasoning") or None


def router_trace(invoked_model: str | None) -> dict[str, Any]:
    """Converse's `trace` for a call through a prompt router (ConverseTrace.promptRouter), naming the
    model that answered; nothing for a call to a model."""
    return {} if invoked_model is None else {"trace": {"promptRouter": {"invokedModelId": invoked_model}}}


def openai_to_converse(
    response: dict[str, Any], *, latency_ms: int, invoked_model: str | None = None
) -> dict[str, Any]:
    """A chat.completions response → a Converse response (first choice; Converse has no `n`), with the
    prompt router's trace when a router chose `invoked_model`.

    Tool arguments that are not JSON are passed as the raw string with stopReason `malformed_tool_use`,
    rather than failing an answer the client has paid for.
    """
    choice = (response.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if reasoning := _reasoning(message):
        content.append({"reasoningContent": {"reasoningText": {"text": reasoning}}})
    if message.get("content"):
        content.append({"text": message["content"]})
    malformed = False
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = json.loads(arguments)
        except json.JSONDecodeError:
            tool_input, malformed = arguments, True
        tool_use = {"toolUseId": call.get("id"), "name": function.get("name"), "input": tool_input}
        content.append({"toolUse": tool_use})
    if not content:  # clients read content[0]["text"]; an empty reply is still one (empty) text block
        content.append({"text": ""})
    tools = bool(message.get("tool_calls"))
    reason = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), used_tools=tools)
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "malformed_tool_use" if malformed else reason,
        "usage": _usage(response.get("usage")),
        "metrics": {"latencyMs": latency_ms},
        **router_trace(invoked_model),
    }


class ConverseStreamTranslator:
    """Turns one OpenAI chat stream into one ConverseStream event sequence.

    Invariants, as Bedrock sends them: `messageStart` first and once; blocks do not interleave, so each
    block's `contentBlockStop` comes before the next block's first event; text and reasoning blocks get no
    `contentBlockStart`, tool blocks do; `messageStop` once, after the last block; `metadata` last, from
    finish(), because usage arrives in the chunk after the finish reason and latency is known only at the end.
    A call through a prompt router has the router's trace in its metadata, as ConverseStream sends it.
    """

    def __init__(self, *, invoked_model: str | None = None) -> None:
        self._invoked_model = invoked_model
        self._started = self._stopped = self._finished = self._used_tools = False
        self._open: tuple[str, int] | None = None  # (kind, OpenAI tool index or 0) of the open block
        self._open_index = 0
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index → contentBlockIndex
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = self._start()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0 or self._stopped:  # Converse has no `n`; nothing after messageStop
                continue
            delta = choice.get("delta") or {}
            if reasoning := _reasoning(delta):
                events += self._delta(("reasoning", 0), {"reasoningContent": {"text": reasoning}})
            if delta.get("content"):
                events += self._delta(("text", 0), {"text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                events += self._stop(choice["finish_reason"], choice.get("stop_reason"))
        return events

    def finish(self, latency_ms: int) -> list[Event]:
        """Close what is open and emit metadata. Idempotent. A stream cut off upstream should end with
        encode_exception() instead, or the client would take a truncated answer for a whole one."""
        if self._finished:
            return []
        self._finished = True
        events = self._start() + self._stop(None)
        metadata = {"usage": _usage(self._usage), "metrics": {"latencyMs": latency_ms}}
        events.append(("metadata", {**metadata, **router_trace(self._invoked_model)}))
        return events

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        return [("messageStart", {"role": "assistant"})]

    def _stop(self, finish_reason: str | None, matched_stop: Any = None) -> list[Event]:
        if self._stopped:
            return []
        self._stopped = True
        reason = stop_reason(finish_reason, matched_stop, used_tools=self._used_tools)
        return [*self._close(), ("messageStop", {"stopReason": reason})]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("contentBlockStop", {"contentBlockIndex": self._open_index})]

    def _block(self, key: tuple[str, int], start: dict[str, Any] | None = None) -> tuple[list[Event], int]:
        """The contentBlockIndex for `key`, closing the open block and starting a new one when it changes."""
        if self._open == key:
            return [], self._open_index
        # A late delta for an earlier call (never seen from vLLM) goes to that call's block.
        if key[0] == "tool" and key[1] in self._tool_blocks:
            return [], self._tool_blocks[key[1]]
        events = self._close()
        self._open, self._open_index = key, self._next_index
        self._next_index += 1
        if start is not None:
            events.append(("contentBlockStart", {"start": start, "contentBlockIndex": self._open_index}))
        return events, self._open_index

    def _delta(self, key: tuple[str, int], delta: dict[str, Any]) -> list[Event]:
        events, index = self._block(key)
        events.append(("contentBlockDelta", {"delta": delta, "contentBlockIndex": index}))
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[Event]:
        self._used_tools = True
        function, key = call.get("function") or {}, ("tool", int(call.get("index", 0)))
        tool_use = {"toolUseId": call.get("id") or f"tooluse_{key[1]}", "name": function.get("name") or ""}
        events, index = self._block(key, {"toolUse": tool_use})
        self._tool_blocks.setdefault(key[1], index)
        if function.get("arguments"):
            events += self._delta(key, {"toolUse": {"input": function["arguments"]}})
        return events


# --- AWS event-stream framing --------------------------------------------------------------------------

_STRING_HEADER = 7  # header value type: utf-8 string with a 2-byte length


def _header(name: str, value: str) -> bytes:
    key, text = name.encode(), value.encode()
    return struct.pack(f"!B{len(key)}sBH{len(text)}s", len(key), key, _STRING_HEADER, len(text), text)


def _frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One message: prelude (total length, headers length, CRC32 of those 8 bytes), headers, payload, and
    the CRC32 of everything before it. All integers big-endian."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack("!II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack("!I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message))


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def encode_event(event_type: str, payload: dict[str, Any]) -> bytes:
    """One event message; `event_type` is the member name in the stream union (e.g. `contentBlockDelta`)."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return _frame(headers, _json(payload))


def encode_exception(exception_type: str, message: str) -> bytes:
    """An in-stream error, which boto3 raises as EventStreamError with this code.

    botocore looks `:exception-type` up among the stream union's members, which are lowerCamelCase
    (`throttlingException`), so the shape name (`ThrottlingException`) is accepted and converted.
    """
    member = exception_type[:1].lower() + exception_type[1:]
    headers = {":exception-type": member, ":content-type": "application/json", ":message-type": "exception"}
    return _frame(headers, _json({"message": message}))


# --- InvokeModel: the model body is the OpenAI chat.completions JSON itself -----------------------------


def invoke_body_to_openai(model: str, body: bytes, *, stream: bool = False) -> dict[str, Any]:
    """An InvokeModel / InvokeModelWithResponseStream body → a chat request for `model`.

    As with OpenAI models on Bedrock, `model` and `stream` may be omitted and are filled in; when given
    they must match the path's modelId and the operation. Usage reporting (`stream_options`) is left to the
    gateway, which meters every route the same way. The body is held to the chat route's allow-list
    (serving.gateway.request_fields), as on `/v1/chat/completions`: an engine-only field (`chat_template`,
    `ignore_eos`, `priority` …) or a value out of range (`n: -1`) is refused naming it, never forwarded.
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BedrockValidationError(f"body: not valid JSON ({error})") from error
    except RecursionError as error:  # the parser's own limit, some 1,000 levels
        raise BedrockValidationError("body: nested too deeply to read; send a flatter JSON object") from error
    payload = _object(payload, "body")
    _list(payload.get("messages"), "body.messages")
    if payload.get("model") not in (None, model):
        _fail("body.model", f"must match the modelId in the path ({model!r}) or be omitted")
    if payload.get("stream") not in (None, stream):
        _fail("body.stream", f"must be {str(stream).lower()} for this operation or be omitted")
    request = {**payload, "model": model, "stream": stream}
    problem = request_fields.check("chat.completions", request)
    if problem is not None:
        _fail(f"body.{problem.field}", problem.rule)
    return request


def openai_to_invoke_body(response: dict[str, Any]) -> bytes:
    """The InvokeModel response body: the chat.completions response unchanged."""
    return _json(response)


def invoke_stream_chunk(openai_chunk_bytes: bytes) -> bytes:
    """An InvokeModelWithResponseStream `chunk` event; the blob travels base64-encoded in JSON."""
    return encode_event("chunk", {"bytes": base64.b64encode(openai_chunk_bytes).decode("ascii")})


def error_body(exception_type: str, message: str) -> dict[str, str]:
    """The JSON body of a Bedrock error response.

    Send it with status ERROR_STATUS[exception_type] and header `x-amzn-ErrorType: <exception_type>`:
    ValidationException 400, AccessDeniedException 403, ResourceNotFoundException 404,
    ModelTimeoutException 408, ModelErrorException 424, ThrottlingException and ModelNotReadyException 429,
    InternalServerException 500, ServiceUnavailableException 503 (service-2.json). An unknown name raises
    ValueError: boto3 would turn it into a bare ClientError no caller catches.
    """
    if exception_type not in ERROR_STATUS:
        raise ValueError(f"unknown Bedrock exception type {exception_type!r}")
    return {"message": message}
