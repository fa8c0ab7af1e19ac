"""A client of the platform's whole ASGI application (the invoke API's front, then Django) in this process:
what a real server hands the application, without starting one. It can go away mid-answer, as a caller
who closes the connection does."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from botocore.eventstream import EventStreamBuffer
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.test import Client

from serving.gateway import pipeline

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def carries_a_token(body: bytes) -> bool:
    """Whether one body message of an answer carries a token of the slow stand-in engine: a server-sent
    event with its "x", or an AWS event-stream message with a content delta (ConverseStream) or a chunk
    (InvokeModelWithResponseStream)."""
    if body.startswith(b"data: "):
        return b'"x"' in body
    buffer = EventStreamBuffer()
    buffer.add_data(body)
    return any(message.headers.get(":event-type") in ("contentBlockDelta", "chunk") for message in buffer)


def post(
    path: str,
    body: Any,
    headers: Headers,
    *,
    leave_after_tokens: int | None = None,
    content_type: bytes = b"application/json",
) -> Answer:
    """POST `body` (as JSON, or bytes as they are) to `path` and read the answer; with
    `leave_after_tokens`, go away as soon as that many tokens have arrived. Returns once the
    application is done and its metering written."""
    from marketplace.asgi import application

    answer = Answer()

    async def scenario() -> None:
        leave = asyncio.Event()
        tokens = 0
        sent = body if isinstance(body, bytes) else json.dumps(body).encode()
        inbox = [{"type": "http.request", "body": sent, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop(0)
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal tokens
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                return
            answer.body += message.get("body", b"")
            if leave_after_tokens is not None and carries_a_token(message.get("body", b"")):
                tokens += 1
                if tokens >= leave_after_tokens:
                    leave.set()

        scope = {
            "type": "http", "method": "POST", "path": path, "query_string": b"", "scheme": "http",
            "server": ("localhost", 80), "client": ("127.0.0.1", 50000),
            "headers": [(b"host", b"localhost"), (b"content-type", content_type), *headers],
        }  # fmt: skip
        await application(scope, receive, send)
        await pipeline.drain()

    asyncio.run(scenario())
    return answer


def key_headers(secret: str) -> Headers:
    return [(b"authorization", f"Bearer {secret}".encode())]


def browser_headers(user: AbstractUser) -> Headers:
    """The cookies and CSRF header of a browser `user` is signed in with, for the web UI's endpoints."""
    browser = Client()
    browser.force_login(user)
    csrf = "c" * 32
    session = browser.cookies[settings.SESSION_COOKIE_NAME].value
    cookies = f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={csrf}"
    return [(b"cookie", cookies.encode()), (b"x-csrftoken", csrf.encode())]
