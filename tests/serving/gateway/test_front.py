"""The invoke API's ASGI front (serving/gateway/asgi.py), in process: which requests it serves itself,
what reaches Django, the body limit, and metering drained at shutdown. The real clients' view of it is
the rest of this package's part (they all go through it)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from marketplace.accounts.services import create_api_key, create_organization
from serving.gateway import pipeline, upstream
from serving.gateway.asgi import GatewayFront
from tests.serving.gateway.conftest import CHAT, deploy, slow_streaming_engine, wait_until_aborted


class Recorder:
    """A stand-in for Django's ASGI application that notes the paths it was given."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope.get("path", scope["type"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(
    front: GatewayFront, path: str, body: bytes = b"", method: str = "POST", headers: list[Any] | None = None
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # the client stays until the answer is sent
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(b"content-type", b"application/json"), *(headers or [])]}  # fmt: skip
    asyncio.run(front(scope, receive, send))
    return sent


def test_the_ui_the_rest_api_and_metrics_go_to_django() -> None:
    django = Recorder()
    front = GatewayFront(django)
    for path in ("/", "/api/models/", "/metrics", "/healthz", "/v1/unknown", "/model/x/unknown"):
        call(front, path, method="GET")
    assert django.paths == ["/", "/api/models/", "/metrics", "/healthz", "/v1/unknown", "/model/x/unknown"]


def test_invoke_routes_are_answered_without_django(db: None) -> None:
    django = Recorder()
    sent = call(GatewayFront(django), "/v1/chat/completions", b"{}")
    assert django.paths == []
    start, body = sent
    assert start["status"] == 401  # no API key: the view itself answered, in OpenAI's format
    assert json.loads(body["body"])["error"]["code"] == "invalid_api_key"
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]


def test_a_body_over_the_limit_is_a_413_in_each_apis_format(settings: Any, transactional_db: None) -> None:
    organization = create_organization(slug="front", name="Front", owner=None)
    _, secret = create_api_key(organization=organization, name="k", created_by=None, expires_at=None)
    settings.GATEWAY_MAX_BODY_BYTES = 1024
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    openai = call(GatewayFront(Recorder()), "/v1/embeddings", b"x" * 5000, headers=headers)
    assert openai[0]["status"] == 413 and "limit is 1024" in json.loads(openai[1]["body"])["error"]["message"]
    bedrock = call(GatewayFront(Recorder()), "/model/x/invoke", b"x" * 5000, headers=headers)
    assert bedrock[0]["status"] == 413
    assert (b"x-amzn-errortype", b"ValidationException") in [(k.lower(), v) for k, v in bedrock[0]["headers"]]


def test_metering_in_flight_is_written_before_shutdown_completes(monkeypatch: Any) -> None:
    """`finish` returns at once; the lifespan shutdown waits for the usage record it queued."""
    from serving.gateway.directory import Caller, Target
    from serving.gateway.limits import Limits

    order: list[str] = []

    class SlowQueue:
        async def push(self, record: dict[str, Any]) -> None:
            await asyncio.sleep(0.2)
            order.append(f"usage of {record['request_id']} written")

    class Services:
        queue = SlowQueue()

    monkeypatch.setattr(pipeline, "services", lambda: Services())
    call_ = pipeline.Call(
        caller=Caller(
            key_id=1, organization_id=1, allowed_deployments=frozenset(), limits=Limits(None, None, 1, 1, 1)
        ),
        target=Target(
            deployment_id=1, name="chat", model_slug="m", endpoints=(), routes=("chat.completions",)
        ),
        route="chat.completions", model="chat", streamed=False, estimated_prompt_tokens=1, request_id="r1",
    )  # fmt: skip

    async def scenario() -> None:
        await pipeline.finish(call_)
        order.append("answer sent")
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            order.append(message["type"])

        await GatewayFront(Recorder())({"type": "lifespan"}, receive, send)

    asyncio.run(scenario())
    assert order == [
        "answer sent",
        "lifespan.startup.complete",
        "usage of r1 written",
        "lifespan.shutdown.complete",
    ]


def test_a_client_that_leaves_mid_stream_closes_the_engine_request_and_is_metered(
    transactional_catalog: None, monkeypatch: Any
) -> None:
    with slow_streaming_engine() as endpoint:
        metered = _leave_mid_stream(endpoint, monkeypatch)
        assert wait_until_aborted() is not None, "the engine kept generating for a caller that had left"
    assert upstream._outstanding[endpoint] == 0
    assert metered == [pipeline.CLIENT_CLOSED]  # metered once, as a stream its caller cut short


class LingeringEngine(BaseHTTPRequestHandler):
    """A stand-in engine that streams a whole answer, its usage chunk and `[DONE]`, then holds the
    connection open for two seconds before closing it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"content": "Paris."}}]}\n\n')
        self.wfile.write(b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n')
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        time.sleep(2)

    def log_message(self, *args: object) -> None:
        pass


def test_a_client_that_leaves_on_the_last_event_has_had_the_whole_answer_and_is_metered_200(
    transactional_catalog: None, monkeypatch: Any
) -> None:
    """Clients close the connection as soon as they read `[DONE]`, which may be before the relay has seen
    the engine's stream end: that answer was whole, not cut short."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), LingeringEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        assert _leave_mid_stream(endpoint, monkeypatch, leave_on=b"data: [DONE]") == [200]
    finally:
        server.shutdown()
        server.server_close()


def _leave_mid_stream(endpoint: str, monkeypatch: Any, leave_on: bytes = b"") -> list[int]:
    """A streamed chat through the front whose client reads the first event that holds `leave_on` and
    goes away; the status of every metering of it."""
    organization = create_organization(slug="leave", name="Leave", owner=None)
    deploy(organization, "slow", CHAT, endpoint)
    _, secret = create_api_key(organization=organization, name="k", created_by=None, expires_at=None)
    metered: list[int] = []
    real_finish = pipeline.finish

    async def finish(call: Any) -> None:
        metered.append(call.status_code)
        await real_finish(call)

    monkeypatch.setattr(pipeline, "finish", finish)
    body = json.dumps(
        {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()

    async def scenario() -> None:
        chunks = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await chunks.wait()  # the client reads the first event, then goes away
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if body and leave_on in body:
                chunks.set()

        headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {secret}".encode())]
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                 "headers": headers}  # fmt: skip
        await GatewayFront(Recorder())(scope, receive, send)
        await pipeline.drain()

    asyncio.run(scenario())
    return metered


def test_calls_are_refused_while_an_organisations_guardrails_cannot_be_read(
    settings: Any, transactional_catalog: None, monkeypatch: Any
) -> None:
    from serving.gateway import directory

    organization = create_organization(slug="walled", name="Walled", owner=None)
    _, secret = create_api_key(organization=organization, name="k", created_by=None, expires_at=None)
    deploy(organization, "chat", CHAT, "http://127.0.0.1:9")  # never reached: nothing is sent unchecked
    headers = [(b"authorization", f"Bearer {secret}".encode())]

    def unreadable(organization_id: int) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(directory, "attached_policies", unreadable)
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
    openai = call(GatewayFront(Recorder()), "/v1/chat/completions", body, headers=headers)
    assert openai[0]["status"] == 503
    assert "guardrails" in json.loads(openai[1]["body"])["error"]["message"]
    converse = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    bedrock = call(GatewayFront(Recorder()), "/model/chat/converse", converse, headers=headers)
    assert bedrock[0]["status"] == 503 and "guardrails" in json.loads(bedrock[1]["body"])["message"]
    assert (b"x-amzn-errortype", b"ServiceUnavailableException") in [
        (k.lower(), v) for k, v in bedrock[0]["headers"]
    ]


def test_a_failed_guardrail_read_keeps_the_last_one_in_force(
    transactional_catalog: None, monkeypatch: Any
) -> None:
    from serving.gateway import directory

    organization = create_organization(slug="kept", name="Kept", owner=None)
    deploy(organization, "chat", CHAT, "http://127.0.0.1:9")
    known = directory.Directory()
    first = known._load_catalog(organization.pk)

    def unreadable(organization_id: int) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(directory, "attached_policies", unreadable)
    assert known._load_catalog(organization.pk).guardrails is first.guardrails
    with pytest.raises(directory.GuardrailsUnavailable):
        directory.Directory()._load_catalog(organization.pk)  # a process that never read them refuses
