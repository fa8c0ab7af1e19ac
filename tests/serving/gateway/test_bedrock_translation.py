"""Bedrock runtime ⇄ OpenAI translation, and that boto3 itself parses every byte we produce.

No network and no database: botocore's own parser reads our bytes against the real `bedrock-runtime`
service model, and an unmodified boto3 client is answered from its `before-send` hook.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.session
import pytest
import urllib3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer, EventStreamError
from botocore.parsers import create_parser
from botocore.response import StreamingBody

from serving.gateway.bedrock import (
    ERROR_STATUS,
    BedrockValidationError,
    ConverseStreamTranslator,
    converse_to_openai,
    encode_event,
    encode_exception,
    error_body,
    invoke_body_to_openai,
    invoke_stream_chunk,
    openai_to_converse,
    openai_to_invoke_body,
)

SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
WEATHER_SPEC = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def chat_response(
    content: str | None = "Hello!", *, finish: str = "stop", tool_calls: Any = None, **choice: Any
) -> dict[str, Any]:
    """A chat.completions response as vLLM sends it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "tiny-chat",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny-chat",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}
TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo!"}),
    chunk({"content": ""}, "stop", stop_reason=None),
    USAGE_CHUNK,
]
TOOL_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "chatcmpl-tool-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
    USAGE_CHUNK,
]


def translate(chunks: list[dict[str, Any]], latency_ms: int = 42) -> list[tuple[str, dict[str, Any]]]:
    translator = ConverseStreamTranslator()
    events = [event for item in chunks for event in translator.feed(item)]
    return events + translator.finish(latency_ms)


def raw_body(data: bytes) -> urllib3.HTTPResponse:
    """What botocore hands its parser for an event stream: the undecoded urllib3 response."""
    return urllib3.HTTPResponse(body=io.BytesIO(data), preload_content=False)


def parse(operation: str, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    """Parse a response exactly as the boto3 client does for `operation`, minus the socket."""
    model = SERVICE.operation_model(operation)
    if status < 300 and model.has_event_stream_output:
        wire: Any = raw_body(body)
    elif status < 300 and model.has_streaming_output:
        wire = StreamingBody(io.BytesIO(body), len(body))
    else:
        wire = body
    response = {
        "status_code": status,
        "headers": headers or {},
        "body": wire,
        "context": {"operation_name": operation},
    }
    return create_parser("rest-json").parse(response, model.output_shape)


@pytest.fixture
def bedrock_client() -> Iterator[Callable[[Callable[[AWSPreparedRequest], AWSResponse]], Any]]:
    """An unmodified boto3 client whose HTTP exchange is answered by the given function."""

    def make(answer: Callable[[AWSPreparedRequest], AWSResponse]) -> Any:
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url="http://gateway.invalid",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"total_max_attempts": 1}),
        )
        client.meta.events.register("before-send.bedrock-runtime.*", lambda request, **_: answer(request))
        return client

    yield make


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> AWSResponse:
    return AWSResponse("http://gateway.invalid", status, headers or {}, raw_body(body))


# --- Converse request → chat request ---------------------------------------------------------------


def test_converse_text_conversation_becomes_chat_messages() -> None:
    body = {
        "system": [{"text": "Be brief."}, {"text": "Answer in French."}],
        "messages": [
            user({"text": "Hi"}, {"text": "there"}),
            {"role": "assistant", "content": [{"text": "Salut"}]},
            user({"text": "Weather?"}),
        ],
    }
    assert converse_to_openai("tiny-chat", body) == {
        "model": "tiny-chat",
        "messages": [
            {"role": "system", "content": "Be brief.\nAnswer in French."},
            {"role": "user", "content": "Hi\nthere"},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": "Weather?"},
        ],
    }


def test_inference_config_becomes_sampling_parameters() -> None:
    body = {
        "messages": [user({"text": "Hi"})],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 0.9, "stopSequences": ["###"]},
    }
    request = converse_to_openai("tiny-chat", body)
    assert {key: request[key] for key in ("max_tokens", "temperature", "top_p", "stop")} == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["###"],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"auto": {}}, "auto"),
        ({"any": {}}, "required"),
        ({"tool": {"name": "get_weather"}}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_config_becomes_functions_and_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = {
        "messages": [user({"text": "Weather?"})],
        "toolConfig": {"tools": [{"toolSpec": WEATHER_SPEC}], "toolChoice": choice},
    }
    request = converse_to_openai("tiny-chat", body)
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    assert request["tool_choice"] == expected


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages() -> None:
    body = {
        "messages": [
            user({"text": "Weather in Paris?"}),
            {
                "role": "assistant",
                "content": [
                    {"text": "Checking."},
                    {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}},
                ],
            },
            user(
                {"text": "Thanks"},
                {"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": 21}}, {"text": "sunny"}]}},
            ),
        ],
        "toolConfig": {"tools": [{"toolSpec": WEATHER_SPEC}]},
    }
    assert converse_to_openai("tiny-chat", body)["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        # the tool message comes first although the text came first: OpenAI wants it next to the call
        {"role": "tool", "tool_call_id": "t1", "content": '{"temp": 21}\nsunny'},
        {"role": "user", "content": "Thanks"},
    ]


def test_assistant_message_with_only_tool_use_has_no_content() -> None:
    block = {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}
    messages = converse_to_openai(
        "m", {"messages": [user({"text": "Hi"}), {"role": "assistant", "content": [block]}]}
    )["messages"]
    assert messages[1]["content"] is None


def test_failed_tool_result_is_said_in_words() -> None:
    result = {"toolResult": {"toolUseId": "t1", "content": [{"text": "city unknown"}], "status": "error"}}
    assert converse_to_openai("m", {"messages": [user(result)]})["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error: city unknown"}
    ]


def test_cache_points_are_ignored() -> None:
    body = {
        "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
        "messages": [user({"text": "Hi"}, {"cachePoint": {"type": "default"}})],
    }
    assert converse_to_openai("m", body)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_allow_listed_additional_fields_are_passed_to_the_engine() -> None:
    body = {
        "messages": [user({"text": "Hi"})],
        "additionalModelRequestFields": {"top_k": 40, "repetition_penalty": 1.1},
    }
    request = converse_to_openai("m", body)
    assert (request["top_k"], request["repetition_penalty"]) == (40, 1.1)


def test_stream_request_asks_the_engine_for_usage() -> None:
    request = converse_to_openai("m", {"messages": [user({"text": "Hi"})]}, stream=True)
    assert (request["stream"], request["stream_options"]) == (True, {"include_usage": True})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"messages": [user({"text": "Look"}, {"image": {"format": "png", "source": {"bytes": "AA=="}}})]},
            "messages[0].content[1]: unsupported content block 'image'",
        ),
        (
            {"messages": [user({"document": {"name": "d", "format": "txt", "source": {"bytes": "AA=="}}})]},
            "messages[0].content[0]: unsupported content block 'document'",
        ),
        (
            {"messages": [user({"guardContent": {"text": {"text": "x"}}})]},
            "messages[0].content[0]: unsupported content block 'guardContent'",
        ),
        (
            {"system": [{"guardContent": {"text": {"text": "x"}}}], "messages": [user({"text": "Hi"})]},
            "system[0]: unsupported system block 'guardContent'",
        ),
        (
            {
                "messages": [user({"text": "Hi"})],
                "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"},
            },
            "guardrailConfig: unsupported field",
        ),
        (
            {"messages": [user({"text": "Hi"})], "inferenceConfig": {"topK": 3}},
            "inferenceConfig.topK: unsupported field",
        ),
        (
            {"messages": [user({"text": "Hi"})], "inferenceConfig": {"temperature": 1.5}},
            "inferenceConfig.temperature: must be between 0 and 1",
        ),
        (
            {"messages": [user({"text": "Hi"})], "inferenceConfig": {"maxTokens": "10"}},
            "inferenceConfig.maxTokens: must be an integer",
        ),
        ({}, "messages: must be a non-empty list"),
        (
            {"messages": [{"role": "system", "content": [{"text": "Hi"}]}]},
            "messages[0].role: must be 'user' or 'assistant'",
        ),
        (
            {"messages": [user({"toolUse": {"toolUseId": "t", "name": "n", "input": {}}})]},
            "messages[0].content[0]: content block 'toolUse' is not allowed in a user message",
        ),
        (
            {"messages": [user({"text": "Hi", "image": {}})]},
            "messages[0].content[0]: must have exactly one member, got ['image', 'text']",
        ),
        (
            {"messages": [user({"toolResult": {"toolUseId": "t", "content": [{"image": {}}]}})]},
            "messages[0].content[0].toolResult.content[0]: unsupported tool result block 'image'",
        ),
        (
            {
                "messages": [user({"text": "Hi"})],
                "toolConfig": {"tools": [{"systemTool": {"name": "nova_grounding"}}]},
            },
            "toolConfig.tools[0]: unsupported tool 'systemTool'",
        ),
        (
            {"messages": [user({"text": "Hi"})], "additionalModelRequestFields": {"model": "other"}},
            "additionalModelRequestFields.model: unsupported field",
        ),
    ],
)
def test_untranslatable_request_is_refused_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BedrockValidationError) as error:
        converse_to_openai("m", body)
    assert str(error.value).startswith(message)


def test_request_serialized_by_boto3_translates(bedrock_client: Any) -> None:
    seen: list[dict[str, Any]] = []

    def engine(request: AWSPreparedRequest) -> AWSResponse:
        seen.append(converse_to_openai("tiny-chat", json.loads(request.body)))
        return answer(200, json.dumps(openai_to_converse(chat_response(), latency_ms=5)).encode())

    bedrock_client(engine).converse(
        modelId="tiny-chat",
        system=[{"text": "Be brief."}],
        messages=[user({"text": "Hi"})],
        inferenceConfig={"maxTokens": 8},
        toolConfig={"tools": [{"toolSpec": WEATHER_SPEC}], "toolChoice": {"any": {}}},
    )
    assert seen[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (seen[0]["max_tokens"], seen[0]["tool_choice"]) == (8, "required")


# --- chat response → Converse response ---------------------------------------------------------------


def test_text_reply_becomes_converse_response() -> None:
    assert openai_to_converse(chat_response(), latency_ms=120) == {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello!"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
        "metrics": {"latencyMs": 120},
    }


def test_tool_call_reply_becomes_tool_use_with_parsed_input() -> None:
    calls = [
        {
            "id": "chatcmpl-tool-1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    converse = openai_to_converse(chat_response(None, finish="tool_calls", tool_calls=calls), latency_ms=1)
    assert converse["output"]["message"]["content"] == [
        {"toolUse": {"toolUseId": "chatcmpl-tool-1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    assert converse["stopReason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "matched", "expected"),
    [
        ("stop", None, "end_turn"),
        ("length", None, "max_tokens"),
        ("tool_calls", None, "tool_use"),
        ("content_filter", None, "content_filtered"),
        ("stop", "###", "stop_sequence"),
        ("stop", 128009, "end_turn"),
    ],
)
def test_finish_reason_becomes_stop_reason(finish: str, matched: Any, expected: str) -> None:
    response = chat_response(finish=finish, stop_reason=matched)
    assert openai_to_converse(response, latency_ms=1)["stopReason"] == expected


def test_unparseable_tool_arguments_are_reported_as_malformed_tool_use() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": '}}]
    converse = openai_to_converse(chat_response(None, finish="tool_calls", tool_calls=calls), latency_ms=1)
    assert converse["stopReason"] == "malformed_tool_use"
    assert converse["output"]["message"]["content"][0]["toolUse"]["input"] == '{"city": '


def test_reasoning_becomes_a_reasoning_block_before_the_text() -> None:
    response = chat_response("42")
    response["choices"][0]["message"]["reasoning_content"] = "Think."
    assert openai_to_converse(response, latency_ms=1)["output"]["message"]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Think."}}},
        {"text": "42"},
    ]


def test_empty_reply_is_one_empty_text_block() -> None:
    assert openai_to_converse(chat_response(""), latency_ms=1)["output"]["message"]["content"] == [
        {"text": ""}
    ]


def test_botocore_parses_converse_response() -> None:
    calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    ours = openai_to_converse(chat_response("Checking.", finish="tool_calls", tool_calls=calls), latency_ms=7)
    parsed = parse("Converse", json.dumps(ours).encode())
    parsed.pop("ResponseMetadata")
    assert parsed == ours


def test_boto3_client_returns_converse_reply(bedrock_client: Any) -> None:
    body = json.dumps(openai_to_converse(chat_response(), latency_ms=9)).encode()
    reply = bedrock_client(lambda request: answer(200, body)).converse(
        modelId="tiny-chat", messages=[user({"text": "Hi"})]
    )
    assert reply["output"]["message"]["content"][0]["text"] == "Hello!"
    assert reply["usage"]["totalTokens"] == 15


# --- ConverseStream ------------------------------------------------------------------------------------


def test_text_stream_becomes_converse_stream_events() -> None:
    assert translate(TEXT_STREAM) == [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"delta": {"text": "Hel"}, "contentBlockIndex": 0}),
        ("contentBlockDelta", {"delta": {"text": "lo!"}, "contentBlockIndex": 0}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        (
            "metadata",
            {
                "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
                "metrics": {"latencyMs": 42},
            },
        ),
    ]


def test_tool_stream_becomes_tool_use_block_with_partial_json() -> None:
    assert translate(TOOL_STREAM)[1:-1] == [
        (
            "contentBlockStart",
            {
                "start": {"toolUse": {"toolUseId": "chatcmpl-tool-1", "name": "get_weather"}},
                "contentBlockIndex": 0,
            },
        ),
        ("contentBlockDelta", {"delta": {"toolUse": {"input": '{"city": '}}, "contentBlockIndex": 0}),
        ("contentBlockDelta", {"delta": {"toolUse": {"input": '"Paris"}'}}, "contentBlockIndex": 0}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "tool_use"}),
    ]


def test_text_then_two_tool_calls_are_three_blocks_in_order() -> None:
    calls = [
        chunk(
            {
                "tool_calls": [
                    {"index": i, "id": f"c{i}", "function": {"name": "get_weather", "arguments": "{}"}}
                ]
            }
        )
        for i in (0, 1)
    ]
    events = translate([chunk({"content": "Let me check."}), *calls, chunk({}, "tool_calls")])
    assert [(name, payload.get("contentBlockIndex")) for name, payload in events[1:-2]] == [
        ("contentBlockDelta", 0),
        ("contentBlockStop", 0),
        ("contentBlockStart", 1),
        ("contentBlockDelta", 1),
        ("contentBlockStop", 1),
        ("contentBlockStart", 2),
        ("contentBlockDelta", 2),
        ("contentBlockStop", 2),
    ]


def test_finish_closes_a_stream_that_never_said_it_stopped() -> None:
    events = translate([chunk({"content": "Hi"})], latency_ms=3)
    assert [name for name, _ in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[-1][1]["usage"] == {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}


def test_finish_is_idempotent() -> None:
    translator = ConverseStreamTranslator()
    translator.finish(1)
    assert translator.finish(1) == []


def test_stop_sequence_in_stream_is_reported() -> None:
    events = translate([chunk({"content": "a"}), chunk({}, "stop", stop_reason="###")])
    assert ("messageStop", {"stopReason": "stop_sequence"}) in events


def test_botocore_parses_converse_stream() -> None:
    ours = translate(TOOL_STREAM)
    stream = parse("ConverseStream", b"".join(encode_event(name, payload) for name, payload in ours))[
        "stream"
    ]
    assert [next(iter(event.items())) for event in stream] == ours


def test_boto3_client_iterates_converse_stream(bedrock_client: Any) -> None:
    wire = b"".join(encode_event(name, payload) for name, payload in translate(TEXT_STREAM))
    reply = bedrock_client(lambda request: answer(200, wire)).converse_stream(
        modelId="tiny-chat", messages=[user({"text": "Hi"})]
    )
    text = "".join(
        event["contentBlockDelta"]["delta"]["text"]
        for event in reply["stream"]
        if "contentBlockDelta" in event
    )
    assert text == "Hello!"


def test_boto3_raises_stream_exception_with_its_code(bedrock_client: Any) -> None:
    wire = encode_event("messageStart", {"role": "assistant"}) + encode_exception(
        "ModelStreamErrorException", "engine died"
    )
    reply = bedrock_client(lambda request: answer(200, wire)).converse_stream(
        modelId="tiny-chat", messages=[user({"text": "Hi"})]
    )
    with pytest.raises(EventStreamError) as error:
        list(reply["stream"])
    assert error.value.response["Error"] == {"Code": "modelStreamErrorException", "Message": "engine died"}


# --- event-stream framing ------------------------------------------------------------------------------


def test_encoded_event_round_trips_through_botocore_buffer() -> None:
    buffer = EventStreamBuffer()
    data = encode_event("contentBlockDelta", {"delta": {"text": "héllo"}, "contentBlockIndex": 0}) * 2
    for offset in range(0, len(data), 7):  # arbitrary network chunking
        buffer.add_data(data[offset : offset + 7])
    messages = list(buffer)
    assert len(messages) == 2
    assert messages[0].headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(messages[0].payload) == {"delta": {"text": "héllo"}, "contentBlockIndex": 0}


def test_encoded_exception_carries_the_union_member_name() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(encode_exception("ThrottlingException", "slow down"))
    message = next(iter(buffer))
    assert message.headers[":message-type"] == "exception"
    assert message.headers[":exception-type"] == "throttlingException"
    assert json.loads(message.payload) == {"message": "slow down"}


# --- InvokeModel ---------------------------------------------------------------------------------------


def test_invoke_body_is_the_chat_request_for_the_path_model() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}).encode()
    assert invoke_body_to_openai("tiny-chat", body) == {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "model": "tiny-chat",
        "stream": False,
    }


def test_streamed_invoke_body_asks_for_a_stream() -> None:
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    assert invoke_body_to_openai("tiny-chat", body, stream=True)["stream"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body: not valid JSON"),
        (b"[1]", "body: must be an object"),
        (b'{"prompt": "Hi"}', "body.messages: must be a non-empty list"),
        (b'{"model": "other", "messages": [{"role": "user", "content": "Hi"}]}', "body.model: must match"),
        (b'{"stream": true, "messages": [{"role": "user", "content": "Hi"}]}', "body.stream: must be false"),
    ],
)
def test_invalid_invoke_body_is_refused_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(BedrockValidationError, match=f"^{message}"):
        invoke_body_to_openai("tiny-chat", body)


def test_boto3_client_reads_invoke_model_body(bedrock_client: Any) -> None:
    seen: list[dict[str, Any]] = []

    def engine(request: AWSPreparedRequest) -> AWSResponse:
        seen.append(invoke_body_to_openai("tiny-chat", request.body))
        return answer(200, openai_to_invoke_body(chat_response()), {"Content-Type": "application/json"})

    request = {"messages": [{"role": "user", "content": "Hi"}]}
    reply = bedrock_client(engine).invoke_model(modelId="tiny-chat", body=json.dumps(request))
    assert seen[0]["model"] == "tiny-chat"
    assert json.loads(reply["body"].read()) == chat_response()


def test_botocore_parses_invoke_stream_chunks() -> None:
    chunks = [json.dumps(item).encode() for item in TEXT_STREAM]
    stream = parse("InvokeModelWithResponseStream", b"".join(invoke_stream_chunk(item) for item in chunks))[
        "body"
    ]
    assert [event["chunk"]["bytes"] for event in stream] == chunks


def test_invoke_stream_chunk_payload_is_base64_json() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(invoke_stream_chunk(b'{"a":1}'))
    event = next(iter(buffer))
    assert event.headers[":event-type"] == "chunk"
    assert json.loads(event.payload) == {"bytes": base64.b64encode(b'{"a":1}').decode()}


# --- errors --------------------------------------------------------------------------------------------


def test_error_statuses_are_those_of_the_service_model() -> None:
    modeled = {shape.name: shape.metadata["error"]["httpStatusCode"] for shape in SERVICE.error_shapes}
    assert {name: status for name, status in modeled.items() if name in ERROR_STATUS} == ERROR_STATUS


@pytest.mark.parametrize("exception_type", sorted(ERROR_STATUS))
def test_botocore_reads_error_code_and_message(exception_type: str) -> None:
    parsed = parse(
        "Converse",
        json.dumps(error_body(exception_type, "nope")).encode(),
        status=ERROR_STATUS[exception_type],
        headers={"x-amzn-errortype": exception_type},
    )
    assert parsed["Error"] == {"Code": exception_type, "Message": "nope"}


def test_boto3_raises_the_modeled_exception(bedrock_client: Any) -> None:
    body = json.dumps(
        error_body("ValidationException", "messages[0].content[1]: unsupported content block 'image'")
    ).encode()
    client = bedrock_client(lambda request: answer(400, body, {"x-amzn-ErrorType": "ValidationException"}))
    with pytest.raises(client.exceptions.ValidationException, match="unsupported content block 'image'"):
        client.converse(modelId="tiny-chat", messages=[user({"text": "Hi"})])


def test_unknown_exception_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="Throttled"):
        error_body("Throttled", "slow down")
