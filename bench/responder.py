"""A fast stand-in for an OpenAI-compatible engine, for bench/gateway.py: a raw asyncio HTTP/1.1 server.

    .venv/bin/python bench/responder.py PORT

Every POST gets the same small chat completion at once; with `"stream": true` in the body, a few SSE
chunks, a usage chunk and `data: [DONE]` (chunked transfer encoding, one chunk per event, no delays).
GET /health answers 200. Keep-alive; request bodies must carry a Content-Length, as every client
under test sends.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
STREAMED = re.compile(rb'"stream"\s*:\s*true')
MODEL = "bench-chat"
USAGE = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench."},
                 "finish_reason": "stop"}],
    "usage": USAGE,
}  # fmt: skip


def _chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
            "choices": [choice]}  # fmt: skip


def _response(head: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + head + b"content-length: %d\r\n\r\n" % len(body) + body


PLAIN = _response(b"content-type: application/json\r\n", json.dumps(COMPLETION).encode())
HEALTH = _response(b"content-type: application/json\r\n", b"{}")
EVENTS = [
    _chunk({"role": "assistant", "content": ""}),
    *(_chunk({"content": word}) for word in ("Hello", " from", " the", " bench.")),
    _chunk({}, "stop"),
    {**_chunk({}), "choices": [], "usage": USAGE},
]
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
STREAM_PIECES = [b"data: " + json.dumps(event).encode() + b"\n\n" for event in EVENTS] + [b"data: [DONE]\n\n"]
STREAM_CHUNKS = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in STREAM_PIECES] + [b"0\r\n\r\n"]


class Responder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end_of_head := self.buffer.find(b"\r\n\r\n")) != -1:
            head = self.buffer[:end_of_head]
            found = CONTENT_LENGTH.search(head)
            end = end_of_head + 4 + (int(found.group(1)) if found else 0)
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[end_of_head + 4 : end], self.buffer[end:]
            if head.startswith(b"GET"):
                self.transport.write(HEALTH)
            elif STREAMED.search(body):
                self.transport.write(STREAM_HEAD)
                for chunk in STREAM_CHUNKS:  # one write per event, as an engine sends them
                    self.transport.write(chunk)
            else:
                self.transport.write(PLAIN)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
