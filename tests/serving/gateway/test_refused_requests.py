"""Calls the engine refuses cost nothing, and a caller without a key is told so.

A prompt past the engine's max model length is refused by the engine (400) before anything is generated,
and the engine reports no usage. The admission estimate counted for it is given back: the usage record
says 0 tokens and the limiter's per-minute counters and monthly budget are where they were. Through the
platform's own ASGI application, in process, with a stand-in engine that refuses long prompts as vLLM
does and otherwise answers like the scripted engine."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest
import redis
from django.conf import settings

from marketplace.accounts.models import Organization
from marketplace.accounts.services import create_api_key
from serving.gateway.limits import RateLimiter
from serving.gateway.metering import QUEUE_KEY, flush_usage
from serving.models import UsageRecord
from tests.serving.gateway.conftest import CHAT, deploy
from tests.serving.gateway.in_process import key_headers, post
from tests.serving.gateway.scripted_engine import USAGE, ScriptedEngine
from tests.serving.gateway.test_abandoned_streams import Charges

MAX_MODEL_LEN = 2048
LONG = "word " * 5000  # some 6,000 estimated tokens: past the stand-in's max model length
REFUSED = {
    "/v1/chat/completions": {"model": "chat", "messages": [{"role": "user", "content": LONG}]},
    "/v1/chat/completions (streamed)": {
        "model": "chat", "stream": True, "messages": [{"role": "user", "content": LONG}],
    },
    "/v1/completions": {"model": "chat", "prompt": LONG, "max_tokens": 5},
    "/model/chat/converse": {"messages": [{"role": "user", "content": [{"text": LONG}]}]},
}  # fmt: skip


class RefusingEngine(ScriptedEngine):
    """Refuses a prompt longer than MAX_MODEL_LEN characters with vLLM's 400 and no usage."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["content-length"]))
        if len(raw) > MAX_MODEL_LEN:
            message = (
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{len(raw) // 4} tokens in the messages. Please reduce the length of the messages."
            )
            body = {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
            self._send(400, "application/json", json.dumps(body).encode())
            return
        self.rfile = io.BytesIO(raw)
        super().do_POST()


@pytest.fixture
def refusing_engine(transactional_catalog: None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingEngine)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def fresh_address() -> Iterator[None]:
    """The in-process client's address starts (and leaves) with its failed-authentication budget whole:
    the keyless calls here count against it."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    address = RateLimiter(connection)._address_key("127.0.0.1")  # type: ignore[arg-type]
    connection.delete(address)
    yield
    connection.delete(address)
    connection.close()


@pytest.fixture
def usage_queue() -> Iterator[redis.Redis]:
    """The gateway's usage queue, empty at the start."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.delete(QUEUE_KEY)
    yield connection
    connection.close()


def _route(path: str) -> str:
    return path.split(" ")[0]


@pytest.mark.parametrize("path", list(REFUSED))
def test_a_prompt_the_engine_refuses_is_charged_nothing(
    path: str, acme: Organization, refusing_engine: str, usage_queue: redis.Redis
) -> None:
    deploy(acme, "chat", CHAT, refusing_engine)
    key, secret = create_api_key(organization=acme, name="k", created_by=None, expires_at=None)
    charges = Charges(acme, key.pk)
    answer = post(_route(path), REFUSED[path], key_headers(secret))
    assert answer.status == 400, answer.body
    assert charges.now() == {
        "key tokens per minute": 0,
        "organisation tokens per minute": 0,
        "monthly budget": 0,
    }
    assert flush_usage(usage_queue) == 1
    record = UsageRecord.objects.get()
    assert (record.status_code, record.prompt_tokens, record.completion_tokens) == (400, 0, 0)


def test_a_refused_call_gives_back_only_its_own_estimate(
    acme: Organization, refusing_engine: str, usage_queue: redis.Redis
) -> None:
    deploy(acme, "chat", CHAT, refusing_engine)
    key, secret = create_api_key(organization=acme, name="k", created_by=None, expires_at=None)
    charges = Charges(acme, key.pk)
    short = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}
    assert post("/v1/chat/completions", short, key_headers(secret)).status == 200
    answered = charges.now()
    assert answered["monthly budget"] == USAGE["prompt_tokens"] + USAGE["completion_tokens"]
    assert post("/v1/chat/completions", REFUSED["/v1/chat/completions"], key_headers(secret)).status == 400
    assert charges.now() == answered


@pytest.mark.parametrize(
    ("path", "status"), [("/v1/chat/completions", 401), ("/v1/models", 401), ("/model/chat/converse", 403)]
)
@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer "])
def test_a_call_without_a_key_is_told_that_no_key_was_given(
    path: str, status: int, authorization: str | None, transactional_catalog: None
) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    answer = post(path, {"model": "chat", "messages": []}, headers)
    assert answer.status == status
    assert "No API key was given" in answer.body.decode()


@pytest.mark.parametrize(("path", "status"), [("/v1/chat/completions", 401), ("/model/chat/converse", 403)])
def test_a_wrong_key_is_still_called_incorrect_or_unknown(
    path: str, status: int, transactional_catalog: None
) -> None:
    answer = post(path, {"model": "chat", "messages": []}, key_headers("mk-not-a-key"))
    assert answer.status == status
    body: Any = answer.json()
    message = body["error"]["message"] if "error" in body else body["message"]
    assert "No API key was given" not in message
    assert "ncorrect" in message or "unknown" in message
