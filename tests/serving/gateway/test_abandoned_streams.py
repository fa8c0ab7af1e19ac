"""Metering a caller cannot dodge: a stream its caller leaves before the engine's usage chunk is charged
for the tokens it relayed, on every streaming route, against the tokens per minute of the key and of the
organisation and against the monthly budget; and the admission estimate counts everything the engine
reads, tools included.

Through the platform's own ASGI application, in process, with the slow stand-in engine (a token every
0.1 s, never a usage chunk); the limiter's Redis counters show what was charged."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import AbstractUser

from marketplace.accounts.models import Organization, Quota
from marketplace.accounts.services import create_api_key
from serving.gateway import pipeline
from serving.gateway.limits import RateLimiter
from tests.serving.gateway.conftest import CHAT, deploy, slow_streaming_engine
from tests.serving.gateway.in_process import browser_headers, key_headers, post

DELTAS = 5  # the caller leaves after this many tokens
HELLO = "Hello there"
CHAT_MESSAGES = [{"role": "user", "content": HELLO}]
STREAMS = {
    "/v1/chat/completions": {"model": "slow", "stream": True, "messages": CHAT_MESSAGES},
    "/v1/completions": {"model": "slow", "stream": True, "prompt": HELLO},
    "/model/slow/converse-stream": {"messages": [{"role": "user", "content": [{"text": HELLO}]}]},
    "/model/slow/invoke-with-response-stream": {"messages": CHAT_MESSAGES},
}  # fmt: skip


class Charges:
    """What the limiter has counted for one key (or the playground's person) and its organisation."""

    def __init__(self, organization: Organization, key_id: int | None) -> None:
        self.connection = redis.Redis.from_url(settings.REDIS_URL)
        counters, month_prefix = RateLimiter(self.connection)._keys(key_id, organization.pk)
        self.key_tokens, self.org_tokens = counters[2], counters[3]
        self.month = month_prefix + datetime.datetime.now(datetime.UTC).strftime("%Y-%m")
        self.connection.delete(*counters, self.month)  # a counter of an earlier run with the same ids

    def now(self) -> dict[str, int]:
        read = self.connection.hget
        return {
            "key tokens per minute": int(read(self.key_tokens, "total") or 0),
            "organisation tokens per minute": int(read(self.org_tokens, "total") or 0),
            "monthly budget": int(self.connection.get(self.month) or 0),
        }


@pytest.fixture
def slow_engine(transactional_catalog: None) -> Iterator[str]:
    with slow_streaming_engine() as endpoint:
        yield endpoint


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


@pytest.mark.parametrize("path", list(STREAMS))
def test_a_stream_left_midway_is_charged_for_the_tokens_it_relayed(
    path: str, acme: Organization, slow_engine: str, metered: list[pipeline.Call]
) -> None:
    deploy(acme, "slow", CHAT, slow_engine)
    key, secret = create_api_key(organization=acme, name="k", created_by=None, expires_at=None)
    charges = Charges(acme, key.pk)
    answer = post(path, STREAMS[path], key_headers(secret), leave_after_tokens=DELTAS)
    assert answer.status == 200 and len(metered) == 1
    least = metered[0].estimated_prompt_tokens + DELTAS
    assert all(charged >= least for charged in charges.now().values()), (least, charges.now())


@pytest.mark.parametrize("path", list(STREAMS))
def test_a_stream_left_midway_is_metered_as_closed_by_its_caller(
    path: str, acme: Organization, slow_engine: str, metered: list[pipeline.Call]
) -> None:
    """Its answer was cut short: metered 499 (as an unstreamed call whose caller left), not 200."""
    deploy(acme, "slow", CHAT, slow_engine)
    _, secret = create_api_key(organization=acme, name="k", created_by=None, expires_at=None)
    post(path, STREAMS[path], key_headers(secret), leave_after_tokens=DELTAS)
    assert [call.status_code for call in metered] == [pipeline.CLIENT_CLOSED]


def test_a_playground_chat_stopped_midway_is_charged_for_the_tokens_it_relayed(
    acme: Organization, member: AbstractUser, slow_engine: str, metered: list[pipeline.Call]
) -> None:
    deployment = deploy(acme, "slow", CHAT, slow_engine)
    charges = Charges(acme, None)  # the playground spends the organisation's limits, without a key
    path, body = f"/deployments/{deployment.pk}/playground/chat/", {"messages": CHAT_MESSAGES}
    answer = post(path, body, browser_headers(member), leave_after_tokens=DELTAS)
    assert answer.status == 200 and len(metered) == 1
    least = metered[0].estimated_prompt_tokens + DELTAS
    assert all(charged >= least for charged in charges.now().values()), (least, charges.now())


def test_the_engines_usage_replaces_the_relayed_count() -> None:
    call = pipeline.Call(
        caller=None, target=None, route="chat.completions", model="m", streamed=True,  # type: ignore[arg-type]
        estimated_prompt_tokens=10,
    )  # fmt: skip
    for _ in range(3):
        call.relayed({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    call.saw_usage({"prompt_tokens": 7, "completion_tokens": 4})
    call.relayed({"choices": [{"index": 0, "delta": {"content": "late"}}]})
    assert (call.prompt_tokens, call.completion_tokens) == (7, 4)


@pytest.mark.parametrize(
    ("chunk", "tokens"),
    [
        ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, 0),  # vLLM's opening
        ({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}, 1),
        ({"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}, 1),
        ({"choices": [{"index": 0, "delta": {"reasoning": "hmm"}}]}, 1),
        ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]}, 1),
        ({"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]}, 2),
        ({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, 0),
        ({"choices": [{"index": 0, "text": " Paris"}]}, 1),  # completions
        ({"choices": [{"index": 0, "text": ""}]}, 0),
        ({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}, 0),
    ],
)  # fmt: skip
def test_each_relayed_delta_of_generated_text_counts_one_token(chunk: dict[str, Any], tokens: int) -> None:
    assert pipeline.relayed_tokens(chunk) == tokens


# --- the admission estimate -------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{n}",
            "description": "Looks things up. " * 25,
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for n in range(100)
]  # fmt: skip  (about 50 KB: some 12,000 tokens at four characters a token)
SPECS = [
    {"toolSpec": {"name": f"tool_{n}", "description": "Looks things up. " * 25,
                  "inputSchema": {"json": {"type": "object", "properties": {}}}}}
    for n in range(100)
]  # fmt: skip
QUESTION = [{"role": "user", "content": "Which tool?"}]
WITH_TOOLS = {
    "/v1/chat/completions": {"model": "chat", "messages": QUESTION, "tools": TOOLS},
    "/model/chat/invoke": {"messages": QUESTION, "tools": TOOLS},
    "/model/chat/converse": {"messages": [{"role": "user", "content": [{"text": "Which tool?"}]}],
                             "toolConfig": {"tools": SPECS}},
}  # fmt: skip


def test_a_large_tools_array_counts_at_admission(acme: Organization, transactional_catalog: None) -> None:
    """Refused by a tokens-per-minute limit the question alone fits in many times over, on each route a
    tools array can come in by: the engine reads the tools, so they are counted (they were not, and such
    a call was admitted)."""
    Quota.objects.filter(organization=acme).update(tokens_per_minute=2000)
    deploy(acme, "chat", CHAT, "http://127.0.0.1:9")  # nothing listens: an admitted call would fail there
    key, secret = create_api_key(organization=acme, name="k", created_by=None, expires_at=None)
    Charges(acme, key.pk)  # counting from zero
    statuses = {path: post(path, body, key_headers(secret)).status for path, body in WITH_TOOLS.items()}
    assert statuses == dict.fromkeys(WITH_TOOLS, 429)


LARGE = "r" * 40_000  # some 10,000 tokens


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": QUESTION, "tools": TOOLS},
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + LARGE}},
        ]}]},
        {"messages": [*QUESTION, {"role": "tool", "tool_call_id": "c1", "content": LARGE}]},
        {"messages": [{"role": "system", "content": LARGE}, *QUESTION]},
        {"prompt": "def f():", "suffix": LARGE},
        {"input": [LARGE]},
    ],
    ids=["tools", "content parts", "tool results", "system prompt", "suffix", "embedding input"],
)  # fmt: skip
def test_the_estimate_counts_every_field_the_engine_reads(payload: dict[str, Any]) -> None:
    assert pipeline.estimate_prompt_tokens(payload) >= 10_000
