"""A stand-in engine with answers a test can predict, over real HTTP: OpenAI chat and completions (plain
and streamed, as vLLM streams them: a role delta, one event per token, a finish reason, then the usage
chunk and `[DONE]`), a streamed tool call when the request offers tools, and embeddings.

Every request it was sent is noted in `ScriptedEngine.received` (path, JSON body)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["Hello", " from", " the", " engine"]
ANSWER = "".join(WORDS)
USAGE = {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)}
TOOL_CALL = {"id": "call-1", "name": "get_weather", "arguments": ['{"city": ', '"Paris"}']}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def chat_events(tools: bool) -> list[bytes]:
    head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "scripted"}
    events = [_event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    if tools:
        first = {"index": 0, "id": TOOL_CALL["id"], "type": "function",
                 "function": {"name": TOOL_CALL["name"], "arguments": ""}}  # fmt: skip
        pieces = [first] + [{"index": 0, "function": {"arguments": a}} for a in TOOL_CALL["arguments"]]
        for piece in pieces:
            events.append(_event({**head, "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}))
        finish = "tool_calls"
    else:
        for word in WORDS:
            events.append(_event({**head, "choices": [{"index": 0, "delta": {"content": word}}]}))
        finish = "stop"
    events.append(_event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    events.append(_event({**head, "choices": [], "usage": USAGE}))
    return [*events, b"data: [DONE]\n\n"]


def completion_events() -> list[bytes]:
    head = {"id": "cmpl-s", "object": "text_completion", "created": 1, "model": "scripted"}
    events = [_event({**head, "choices": [{"index": 0, "text": word}]}) for word in WORDS]
    events.append(_event({**head, "choices": [{"index": 0, "text": "", "finish_reason": "length"}]}))
    events.append(_event({**head, "choices": [], "usage": USAGE}))
    return [*events, b"data: [DONE]\n\n"]


class ScriptedEngine(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with ScriptedEngine.lock:
            ScriptedEngine.received.append((self.path, payload))
        if self.path == "/v1/embeddings":
            data = [{"index": 0, "object": "embedding", "embedding": [0.1, 0.2, 0.3]}]
            body = {"object": "list", "data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}}
            self._send(200, "application/json", json.dumps(body).encode())
        elif payload.get("stream"):
            chat = self.path == "/v1/chat/completions"
            events = chat_events(bool(payload.get("tools"))) if chat else completion_events()
            self._send(200, "text/event-stream", b"".join(events))
        elif self.path == "/v1/completions":
            choice = {"index": 0, "text": ANSWER, "finish_reason": "length"}
            body = {"id": "cmpl-s", "object": "text_completion", "choices": [choice], "usage": USAGE}
            self._send(200, "application/json", json.dumps(body).encode())
        else:
            message = {"role": "assistant", "content": ANSWER}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            body = {"id": "chatcmpl-s", "object": "chat.completion", "choices": [choice], "usage": USAGE}
            self._send(200, "application/json", json.dumps(body).encode())

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def scripted_engine() -> Iterator[str]:
    """The engine's URL while it serves; `ScriptedEngine.received` starts empty."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ScriptedEngine.received.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
