"""A prompt router called by its name with the unmodified `openai` and `boto3` clients on every invoke
route, through a real gateway (two worker processes) to stand-in engines whose answers say who answered:
the trained router sends a sum to the small deployment and an essay to the large one, every answer says
who served (`x-router-deployment`, and Bedrock Converse's `trace.promptRouter.invokedModelId`) and its
request id, and the usage records name the router and its choice. Shadow calls, with the router's
daily cap, run in the gateway processes too."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
import redis
from botocore.config import Config

from learning.models import Router, RouterSample
from learning.storage import get_store
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from serving.gateway.metering import QUEUE_KEY
from tests.conftest import make_user
from tests.serving.gateway.conftest import CHAT, GATEWAY_REDIS_DB, deploy
from tests.serving.gateway.router_engines import (
    ESSAYS,
    SUMS,
    RouterEngine,
    answer_of,
    engine,
    make_router,
    train,
    write_two_cards,
)  # fmt: skip

pytestmark = pytest.mark.slow

SUM, ESSAY = SUMS[1], ESSAYS[1]


@dataclass
class Routed:
    organization: Organization
    key: str
    router: Router
    engines: dict[str, type[RouterEngine]]
    redis: redis.Redis


@pytest.fixture
def routed(transactional_db: None, gateway_data_dir: Path, settings: Any) -> Iterator[Routed]:
    """An organisation with the small and large stand-ins deployed and a trained router "auto" over them,
    its predictor in the gateway processes' object store."""
    settings.DATA_DIR = str(gateway_data_dir)
    get_store.cache_clear()
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    connection.flushdb()
    write_two_cards()
    organization = account_services.create_organization(slug="rt", name="Routed", owner=make_user("rita"))
    Quota.objects.filter(organization=organization).update(
        requests_per_minute=10_000, tokens_per_minute=10**7
    )
    _, key = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    with engine("small") as small, engine("large") as large:
        deploy(organization, "small", CHAT, small[0])
        deploy(organization, "large", CHAT, large[0])
        router = train(make_router(organization))
        yield Routed(organization, key, router, {"small": small[1], "large": large[1]}, connection)
    get_store.cache_clear()
    connection.close()


def openai_client(gateway_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=30)


def runtime(gateway_url: str, key: str, monkeypatch: Any) -> Any:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=gateway_url,
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )  # fmt: skip


def converse_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def chat_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def usage_records(connection: redis.Redis, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The gateway's queued usage records, once `count` have arrived (metering runs after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in connection.lrange(QUEUE_KEY, 0, -1)]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_openai_chat_through_a_router_is_answered_by_its_choice_with_who_served_and_the_request_id(
    gateway_url: str, routed: Routed
) -> None:
    api = openai_client(gateway_url, routed.key)
    for prompt, expected in ((SUM, "small"), (ESSAY, "large")):
        raw = api.chat.completions.with_raw_response.create(model="auto", messages=chat_messages(prompt))
        assert raw.headers["x-router-deployment"] == expected
        assert raw.parse().choices[0].message.content == answer_of(expected)
    records = usage_records(routed.redis, 2)
    assert raw.headers["x-request-id"] == records[-1]["request_id"]
    assert [(r["model"], r["router"], r["router_choice"]) for r in records] == [
        ("auto", "auto", "small"), ("auto", "auto", "large")
    ]  # fmt: skip


def test_openai_streams_and_completions_through_a_router(gateway_url: str, routed: Routed) -> None:
    api = openai_client(gateway_url, routed.key)
    with api.chat.completions.with_streaming_response.create(
        model="auto", messages=chat_messages(SUM), stream=True
    ) as streamed:
        assert streamed.headers["x-router-deployment"] == "small"
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    completion = api.completions.with_raw_response.create(model="auto", prompt=ESSAY)
    with api.completions.with_streaming_response.create(model="auto", prompt=SUM, stream=True) as stream:
        streamed_text = "".join(c.choices[0].text for c in stream.parse() if c.choices)
        stream_served = stream.headers["x-router-deployment"]
    assert text == answer_of("small")
    assert (completion.headers["x-router-deployment"], completion.parse().choices[0].text) == (
        "large", answer_of("large")
    )  # fmt: skip
    assert (stream_served, streamed_text) == ("small", answer_of("small"))


def test_bedrock_converse_through_a_router_traces_the_invoked_model(
    gateway_url: str, routed: Routed, monkeypatch: Any
) -> None:
    client = runtime(gateway_url, routed.key, monkeypatch)
    answer = client.converse(modelId="auto", messages=converse_messages(SUM))
    assert answer["trace"] == {"promptRouter": {"invokedModelId": "small"}}
    assert answer["output"]["message"]["content"][0]["text"] == answer_of("small")
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-router-deployment"] == "small"


def test_bedrock_converse_stream_through_a_router_traces_the_invoked_model_in_its_metadata(
    gateway_url: str, routed: Routed, monkeypatch: Any
) -> None:
    client = runtime(gateway_url, routed.key, monkeypatch)
    response = client.converse_stream(modelId="auto", messages=converse_messages(ESSAY))
    events = list(response["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == answer_of("large")
    assert events[-1]["metadata"]["trace"] == {"promptRouter": {"invokedModelId": "large"}}
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-router-deployment"] == "large"


def test_bedrock_invoke_model_and_its_stream_through_a_router(
    gateway_url: str, routed: Routed, monkeypatch: Any
) -> None:
    client = runtime(gateway_url, routed.key, monkeypatch)
    body = json.dumps({"messages": chat_messages(SUM)})
    answer = client.invoke_model(modelId="auto", body=body)
    assert json.loads(answer["body"].read())["choices"][0]["message"]["content"] == answer_of("small")
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-router-deployment"] == "small"
    streamed = client.invoke_model_with_response_stream(modelId="auto", body=json.dumps(
        {"messages": chat_messages(ESSAY)}))  # fmt: skip
    chunks = [json.loads(event["chunk"]["bytes"]) for event in streamed["body"]]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text == answer_of("large")
    assert streamed["ResponseMetadata"]["HTTPHeaders"]["x-router-deployment"] == "large"


def test_shadow_calls_ask_the_other_candidate_after_the_answer_and_stop_at_the_daily_cap(
    gateway_url: str, routed: Routed
) -> None:
    # Each shadow call reserves the served call's 12 prompt tokens and the caller's max_tokens, 3: 15 of
    # the day's 20, so the cap admits one.
    Router.objects.filter(pk=routed.router.pk).update(shadow_rate=1.0, shadow_tokens_per_day=20)
    api = openai_client(gateway_url, routed.key)
    for _ in range(2):
        served = api.chat.completions.create(model="auto", messages=chat_messages(SUM), max_tokens=3)
        assert served.choices[0].message.content == answer_of("small")
    records = usage_records(routed.redis, 3)
    shadow = [r for r in records if r["route"] == "router.shadow"]
    assert [(r["api_key_id"], r["router"], r["router_choice"]) for r in shadow] == [(None, "auto", "small")]
    assert [payload["model"] for path, payload in routed.engines["large"].received] == ["large"]
    sample = wait_for_sample(routed.router)
    assert {name: answer["text"] for name, answer in sample.answers.items()} == {
        "small": answer_of("small"), "large": answer_of("large")
    }  # fmt: skip


def test_a_slow_shadow_call_does_not_delay_the_callers_answer(gateway_url: str, routed: Routed) -> None:
    Router.objects.filter(pk=routed.router.pk).update(shadow_rate=1.0, shadow_tokens_per_day=1000)
    routed.engines["large"].delay = 3
    started = time.monotonic()
    served = openai_client(gateway_url, routed.key).chat.completions.create(
        model="auto", messages=chat_messages(SUM)
    )
    answered_in = time.monotonic() - started
    assert served.choices[0].message.content == answer_of("small") and answered_in < 2
    sample = wait_for_sample(routed.router)  # the shadow answer came later
    assert sample.answers["large"]["latency_ms"] >= 3000


def wait_for_sample(router: Router, timeout: float = 10) -> RouterSample:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = RouterSample.objects.filter(router=router).first()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError("no sample was recorded")


def test_a_shadow_call_counts_in_the_organisations_monthly_budget_not_the_keys_minute(
    gateway_url: str, routed: Routed
) -> None:
    Router.objects.filter(pk=routed.router.pk).update(shadow_rate=1.0, shadow_tokens_per_day=1000)
    openai_client(gateway_url, routed.key).chat.completions.create(model="auto", messages=chat_messages(SUM))
    usage_records(routed.redis, 2)
    month = f"gw:month:org:{routed.organization.pk}:{time.strftime('%Y-%m', time.gmtime())}"
    key_minute = next(iter(routed.redis.scan_iter("gw:tpm:key:*")))
    # The caller's call (12 prompt and 3 completion tokens), then the shadow call's, reserved and settled.
    assert wait_for_value(lambda: int(routed.redis.get(month) or 0), 15 + 15) == 30
    assert int(routed.redis.hget(key_minute, "total") or 0) == 15


def wait_for_value(read: Any, expected: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(value)
