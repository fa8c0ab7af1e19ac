"""A stand-in chat engine for the guardrail tests, over real HTTP: it answers a text the test sets, streamed
in the pieces the test chooses (as vLLM streams: a role delta, the pieces, a finish reason, the usage
chunk, `[DONE]`), and notes every request it was sent, so a test sees what reached the engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.standin_http import JsonHandler, serving

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _response_events(pieces: list[str], tool_input: list[str] | None = None) -> list[bytes]:
    """A streamed Responses API answer saying `pieces` (then, with `tool_input`, calling a custom tool
    with that input in pieces), with the engine's events (`event:` and `data:`)."""
    text = "".join(pieces)
    response = {"id": "resp-1", "object": "response", "created_at": 1, "model": "standin", "output": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    item = {"type": "message", "id": "msg-1", "role": "assistant", "status": "in_progress", "content": []}
    done_part = {**part, "text": text}
    done_item = {**item, "status": "completed", "content": [done_part]}
    place = {"item_id": "msg-1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **place, "part": part},
        *({"type": "response.output_text.delta", **place, "delta": piece} for piece in pieces),
        {"type": "response.output_text.done", **place, "text": text},
        {"type": "response.content_part.done", **place, "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
    ]  # fmt: skip
    output = [done_item]
    if tool_input:
        tool = {"type": "custom_tool_call", "id": "ctc-1", "call_id": "call-1", "name": "note", "input": ""}
        done_tool = {**tool, "input": "".join(tool_input)}
        events += [
            {"type": "response.output_item.added", "output_index": 1, "item": tool},
            *({"type": "response.custom_tool_call_input.delta", "item_id": "ctc-1", "output_index": 1,
               "delta": piece} for piece in tool_input),
            {"type": "response.custom_tool_call_input.done", "item_id": "ctc-1", "output_index": 1,
             "input": done_tool["input"]},
            {"type": "response.output_item.done", "output_index": 1, "item": done_tool},
        ]  # fmt: skip
        output.append(done_tool)
    usage = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    completed = {**response, "status": "completed", "output": output, "usage": usage}
    events.append({"type": "response.completed", "response": completed})
    return [
        f"event: {event['type']}\n".encode() + _event({**event, "sequence_number": number})
        for number, event in enumerate(events)
    ]


class GuardedEngine(JsonHandler):
    pieces: list[str] = ["Hello", " there"]
    extra: dict[str, Any] = {}  # more fields of an unstreamed chat answer's message (tool calls, reasoning)
    tool_pieces: list[str] = []  # a streamed chat answer's tool call: its arguments' pieces, after the text
    received: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with GuardedEngine.lock:
            GuardedEngine.received.append((self.path, payload))
        text, chat = "".join(GuardedEngine.pieces), self.path == "/v1/chat/completions"
        if self.path == "/v1/responses" and payload.get("stream"):
            events = _response_events(GuardedEngine.pieces, GuardedEngine.tool_pieces)
            self.send_bytes(b"".join(events), "text/event-stream")
            return
        if payload.get("stream"):
            head = {"id": "s", "object": "chat.completion.chunk", "created": 1, "model": "standin"}
            events = []
            if chat:
                events.append(_event({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
            for piece in GuardedEngine.pieces:
                part = {"delta": {"content": piece}} if chat else {"text": piece}
                events.append(_event({**head, "choices": [{"index": 0, **part}]}))
            if chat and GuardedEngine.tool_pieces:
                call = {"index": 0, "id": "call-1", "type": "function",
                        "function": {"name": "send_mail", "arguments": ""}}  # fmt: skip
                events.append(_event({**head, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}))
                for piece in GuardedEngine.tool_pieces:
                    delta = {"content": None, "tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    events.append(_event({**head, "choices": [{"index": 0, "delta": delta}]}))
            end = {"delta": {}} if chat else {"text": ""}
            finish = "tool_calls" if chat and GuardedEngine.tool_pieces else "stop"
            events.append(_event({**head, "choices": [{"index": 0, **end, "finish_reason": finish}]}))
            events.append(_event({**head, "choices": [], "usage": USAGE}))
            self.send_bytes(b"".join([*events, b"data: [DONE]\n\n"]), "text/event-stream")
            return
        if chat:
            choice: dict[str, Any] = {
                "message": {"role": "assistant", "content": text, **GuardedEngine.extra}
            }
        else:
            choice = {"text": text}
        body = {"id": "c", "object": "chat.completion" if chat else "text_completion", "created": 1,
                "model": "standin", "choices": [{"index": 0, **choice, "finish_reason": "stop"}],
                "usage": USAGE}  # fmt: skip
        self.send_json(body)


@contextmanager
def guarded_engine() -> Iterator[str]:
    """The stand-in's URL while it serves; what it answers and what it received start afresh."""
    GuardedEngine.pieces = ["Hello", " there"]
    GuardedEngine.extra = {}
    GuardedEngine.tool_pieces = []
    GuardedEngine.received = []
    with serving(GuardedEngine) as url:
        yield url


def prompts() -> list[Any]:
    """The messages (or prompt) of each request the engine received."""
    return [payload.get("messages", payload.get("prompt")) for _, payload in GuardedEngine.received]
