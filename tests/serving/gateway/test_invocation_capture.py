"""Invocation logging in the gateway: every route's record (the request as sent to the engine, the answer,
a stream assembled with its finish reason and usage, embeddings' input only), the calls that are not
logged (logging off, outside the narrowing, a sample rate of 0, another organisation's choice), the web
playground, the log's writes drained at shutdown, a full queue counted, and nothing unmasked reaching
the store.

Through the platform's own ASGI application, in process, with the scripted stand-in engine; the log's
Redis queue shows what was captured."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.test import Client
from prometheus_client import REGISTRY

from learning import writer
from learning.capture import OVERFLOW_KEY, QUEUE_KEY, Policy
from learning.datasets import from_log_record
from learning.models import InvocationLogSettings
from learning.storage import FolderStore
from marketplace.accounts.models import ApiKey, Organization
from marketplace.accounts.services import create_api_key
from serving.gateway import invocation_log, pipeline
from serving.gateway.asgi import GatewayFront
from serving.gateway.directory import Caller, Target
from serving.gateway.limits import Limits
from serving.models import Deployment
from tests.serving.gateway.conftest import CHAT, EMBED, deploy, slow_streaming_engine
from tests.serving.gateway.in_process import browser_headers, key_headers, post
from tests.serving.gateway.scripted_engine import ANSWER, TOOL_CALL, USAGE, scripted_engine

HELLO = [{"role": "user", "content": "Hello there"}]
OVERFLOW_METRIC = "marketplace_invocation_logs_overflow_total"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
def engine(transactional_catalog: None) -> Iterator[str]:
    with scripted_engine() as endpoint:
        yield endpoint


@pytest.fixture
def queue() -> Iterator[redis.Redis]:
    """The log's Redis keys, empty before and after."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.delete(QUEUE_KEY, OVERFLOW_KEY)
    try:
        yield connection
    finally:
        connection.delete(QUEUE_KEY, OVERFLOW_KEY)
        connection.close()


@pytest.fixture
def chat(acme: Organization, engine: str) -> Deployment:
    return deploy(acme, "chat", CHAT, engine)


@pytest.fixture
def key(acme: Organization, chat: Deployment) -> tuple[ApiKey, str]:
    return create_api_key(organization=acme, name="k", created_by=None, expires_at=None)


@pytest.fixture
def metered(monkeypatch: Any) -> list[pipeline.Call]:
    """Every call the gateway meters, as it meters it."""
    calls: list[pipeline.Call] = []
    real_finish = pipeline.finish

    async def finish(call: pipeline.Call) -> None:
        calls.append(call)
        await real_finish(call)

    monkeypatch.setattr(pipeline, "finish", finish)
    return calls


def log_everything(organization: Organization, **choices: Any) -> None:
    InvocationLogSettings.objects.create(
        organization=organization, enabled=True, mask_personal_data=False, **choices
    )


def queued(connection: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(line) for line in connection.lrange(QUEUE_KEY, 0, -1)]


def the_record(connection: redis.Redis) -> dict[str, Any]:
    [record] = queued(connection)
    return record


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_chat_completion_is_logged_with_the_request_the_answer_and_the_figures(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis, chat: Deployment
) -> None:
    log_everything(acme)
    body = {"model": "chat", "messages": HELLO, "max_tokens": 8}
    answer = post("/v1/chat/completions", body, key_headers(key[1]))
    record = the_record(queue)
    assert answer.status == 200
    assert record["request"] == body
    assert record["answer"]["choices"][0]["message"]["content"] == ANSWER
    expected = {"organization_id": acme.pk, "key_prefix": key[0].prefix, "deployment_id": chat.pk,
                "deployment": "chat", "route": "openai.chat", "status": 200,
                "tokens": {"prompt": 9, "completion": 4}, "time_to_first_token_ms": None}  # fmt: skip
    assert {name: record[name] for name in expected} == expected
    assert record["latency_ms"] >= 0 and record["time"].endswith("+00:00")


def test_a_streamed_chat_is_stored_assembled_with_its_finish_reason_and_usage(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    log_everything(acme)
    body = {"model": "chat", "messages": HELLO, "stream": True}
    answer = post("/v1/chat/completions", body, key_headers(key[1]))
    record = the_record(queue)
    assert b'"usage"' not in answer.body  # the caller did not ask for it; the log has it all the same
    assert record["answer"]["object"] == "chat.completion"
    assert record["answer"]["choices"] == [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}
    ]
    assert record["answer"]["usage"] == USAGE
    assert record["request"]["stream_options"] == {"include_usage": True}  # as sent to the engine
    assert record["time_to_first_token_ms"] is not None and record["route"] == "openai.chat"


def test_a_streamed_tool_call_is_stored_joined(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    log_everything(acme)
    body = {"model": "chat", "messages": HELLO, "tools": TOOLS, "stream": True}
    post("/v1/chat/completions", body, key_headers(key[1]))
    [choice] = the_record(queue)["answer"]["choices"]
    arguments = "".join(TOOL_CALL["arguments"])
    function = {"name": TOOL_CALL["name"], "arguments": arguments}
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [{"id": "call-1", "type": "function", "function": function}]


def test_a_stream_its_caller_left_is_logged_as_cut_short_and_makes_no_dataset_record(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    log_everything(acme)
    with slow_streaming_engine() as endpoint:
        deploy(acme, "slow", CHAT, endpoint)
        body = {"model": "slow", "messages": HELLO, "stream": True}
        post("/v1/chat/completions", body, key_headers(key[1]), leave_after_tokens=3)
    record = the_record(queue)
    assert record["status"] == pipeline.CLIENT_CLOSED
    assert record["answer"]["choices"][0]["finish_reason"] is None
    assert from_log_record(record, with_reference=True) is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_completion_is_stored_with_its_text(
    stream: bool, acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    log_everything(acme)
    post("/v1/completions", {"model": "chat", "prompt": "Hi", "stream": stream}, key_headers(key[1]))
    record = the_record(queue)
    assert record["route"] == "openai.completions"
    assert record["answer"]["choices"][0]["text"] == ANSWER
    assert record["answer"]["choices"][0]["finish_reason"] == "length"
    assert record["answer"]["usage"] == USAGE


def test_embeddings_keep_their_input_only(
    acme: Organization, engine: str, queue: redis.Redis, key: tuple[ApiKey, str]
) -> None:
    deploy(acme, "embed", EMBED, engine)
    log_everything(acme)
    post("/v1/embeddings", {"model": "embed", "input": "a sentence to embed"}, key_headers(key[1]))
    record = the_record(queue)
    assert record["route"] == "openai.embeddings"
    assert record["request"]["input"] == "a sentence to embed"
    assert record["answer"] is None
    assert record["tokens"] == {"prompt": 3, "completion": 0}


CONVERSE = {"messages": [{"role": "user", "content": [{"text": "Hello there"}]}]}
BEDROCK = {
    "/model/chat/converse": ("bedrock.converse", CONVERSE),
    "/model/chat/converse-stream": ("bedrock.converse-stream", CONVERSE),
    "/model/chat/invoke": ("bedrock.invoke", {"messages": HELLO}),
    "/model/chat/invoke-with-response-stream": ("bedrock.invoke-stream", {"messages": HELLO}),
}


@pytest.mark.parametrize("path", list(BEDROCK))
def test_each_bedrock_route_stores_the_engine_request_and_the_assembled_answer(
    path: str, acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    from tests.serving.gateway.scripted_engine import ScriptedEngine

    log_everything(acme)
    route, body = BEDROCK[path]
    assert post(path, body, key_headers(key[1])).status == 200
    record = the_record(queue)
    [(_, sent)] = ScriptedEngine.received
    assert (record["route"], record["request"]) == (route, sent)
    assert record["answer"]["choices"][0]["message"]["content"] == ANSWER
    assert record["answer"]["choices"][0]["finish_reason"] == "stop"
    assert record["answer"]["usage"] == USAGE


def test_the_playground_is_logged_without_a_key(
    acme: Organization, member: AbstractUser, chat: Deployment, queue: redis.Redis
) -> None:
    log_everything(acme)
    path = f"/deployments/{chat.pk}/playground/chat/"
    assert post(path, {"messages": HELLO}, browser_headers(member)).status == 200
    record = the_record(queue)
    assert (record["route"], record["key_prefix"]) == ("web.playground", None)
    assert record["answer"]["choices"][0]["message"]["content"] == ANSWER


def test_with_logging_off_nothing_is_queued_and_no_stream_is_assembled(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis, metered: list[pipeline.Call]
) -> None:
    InvocationLogSettings.objects.create(organization=acme, enabled=False)
    post("/v1/chat/completions", {"model": "chat", "messages": HELLO, "stream": True}, key_headers(key[1]))
    post("/v1/chat/completions", {"model": "chat", "messages": HELLO}, key_headers(key[1]))
    assert queue.llen(QUEUE_KEY) == 0
    assert [(call.log, call.assembly, call.answer) for call in metered] == [(None, None, None)] * 2


def test_a_deployment_outside_the_narrowing_is_not_logged(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis, engine: str
) -> None:
    deploy(acme, "other", CHAT, engine)
    log_everything(acme, deployments=["other"])
    post("/v1/chat/completions", {"model": "chat", "messages": HELLO}, key_headers(key[1]))
    post("/v1/chat/completions", {"model": "other", "messages": HELLO}, key_headers(key[1]))
    assert [record["deployment"] for record in queued(queue)] == ["other"]


def test_a_key_outside_the_narrowing_is_not_logged(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    kept, kept_secret = create_api_key(organization=acme, name="kept", created_by=None, expires_at=None)
    log_everything(acme, api_keys=[kept.prefix])
    post("/v1/chat/completions", {"model": "chat", "messages": HELLO}, key_headers(key[1]))
    post("/v1/chat/completions", {"model": "chat", "messages": HELLO}, key_headers(kept_secret))
    assert [record["key_prefix"] for record in queued(queue)] == [kept.prefix]


def test_a_sample_rate_of_zero_logs_nothing(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis, metered: list[pipeline.Call]
) -> None:
    log_everything(acme, sample_rate=0.0)
    for _ in range(5):
        post(
            "/v1/chat/completions", {"model": "chat", "messages": HELLO, "stream": True}, key_headers(key[1])
        )
    assert queue.llen(QUEUE_KEY) == 0
    assert all(call.assembly is None for call in metered) and len(metered) == 5


def test_another_organisations_choice_does_not_log_this_ones_calls(
    acme: Organization, globex: Organization, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    log_everything(globex)
    post("/v1/chat/completions", {"model": "chat", "messages": HELLO}, key_headers(key[1]))
    assert queue.llen(QUEUE_KEY) == 0


def test_a_full_queue_is_counted_in_metrics_and_on_the_settings_page(
    settings: Any, acme: Organization, owner: AbstractUser, key: tuple[ApiKey, str], queue: redis.Redis
) -> None:
    settings.INVOCATION_LOG_QUEUE_MAX = 1
    log_everything(acme)
    before = counter(OVERFLOW_METRIC)
    for _ in range(3):
        assert (
            post("/v1/chat/completions", {"model": "chat", "messages": HELLO}, key_headers(key[1])).status
            == 200
        )
    assert queue.llen(QUEUE_KEY) == 1
    scraped = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    line = next(
        x for x in scraped.splitlines() if x.startswith("marketplace_invocation_logs_overflow_total ")
    )
    assert float(line.split()[1]) - before == 2
    browser = Client()
    browser.force_login(owner)
    assert "2 invocations could not be logged" in browser.get("/invocation-logs/settings/").content.decode()


def test_nothing_unmasked_reaches_the_store(
    acme: Organization, key: tuple[ApiKey, str], queue: redis.Redis, tmp_path: Path
) -> None:
    InvocationLogSettings.objects.create(organization=acme, enabled=True, mask_personal_data=True)
    secret = "Write to ann@example.com or call +44 20 7946 0958"
    body = {"model": "chat", "messages": [{"role": "user", "content": secret}], "stream": True}
    post("/v1/chat/completions", body, key_headers(key[1]))
    store = FolderStore(tmp_path / "objects")
    assert writer.write_queued(queue, store).records == 1
    stored = b"".join(gzip.decompress(path.read_bytes()) for path in tmp_path.rglob("*.jsonl.gz"))
    assert b"ann@example.com" not in stored and b"7946" not in stored
    [line] = stored.splitlines()
    record = json.loads(line)
    assert record["request"]["messages"][0]["content"] == "Write to [EMAIL] or call [PHONE]"
    assert record["masked"] == 2


def test_the_log_write_in_flight_is_done_before_shutdown_completes(monkeypatch: Any) -> None:
    """`finish` returns at once; the lifespan shutdown waits for the invocation record it queues."""
    order: list[str] = []

    class Queue:
        async def push(self, record: dict[str, Any]) -> None:
            order.append("usage written")

    class Services:
        queue = Queue()

    async def slow_capture(record: dict[str, Any], policy: Policy) -> bool:
        await asyncio.sleep(0.2)
        order.append(f"log of {record['id']} written")
        return True

    monkeypatch.setattr(pipeline, "services", lambda: Services())
    monkeypatch.setattr(invocation_log.log_capture, "capture_selected", slow_capture)
    call = pipeline.Call(
        caller=Caller(key_id=1, organization_id=1, allowed_deployments=frozenset(),
                      limits=Limits(None, None, 1, 1, 1), key_prefix="mk-abcdefgh"),
        target=Target(
            deployment_id=1, name="chat", model_slug="m", endpoints=(), routes=("chat.completions",)
        ),
        route="chat.completions", model="chat", streamed=False, estimated_prompt_tokens=1, request_id="r1",
    )  # fmt: skip
    call.log = Policy(enabled=True)

    async def scenario() -> None:
        await pipeline.finish(call)
        order.append("answer sent")
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            order.append(message["type"])

        await GatewayFront(None)({"type": "lifespan"}, receive, send)

    asyncio.run(scenario())
    assert order == [
        "answer sent",
        "lifespan.startup.complete",
        "usage written",
        "log of r1 written",
        "lifespan.shutdown.complete",
    ]
