"""A prompt router over two real vLLM deployments, called by name with the unmodified `openai` and `boto3`
clients through the platform under gunicorn: each answer says who served it (the x-router-deployment
header, Bedrock's trace), a real engine answered it, and the usage is metered under the router and the
deployment.

The two deployments, "small" and "large", are this package's SmolLM2 engine, which also answers to
those names (tests/serving/gateway/conftest.py), called through this package's gateway: the router
costs no engine start of its own. vLLM refuses a model name it does not serve and answers under its
first name, so a real engine's 200 shows the gateway asked it for the chosen deployment by name, not
which process answered; that a router sends each call to its chosen deployment's own replicas is shown
against distinct stand-in engines (test_router_decisions, test_router_clients). Quality is not tested
here (one 135M model is not a quality signal); the router's predictor is trained, as the API would
train it, from an evaluation with a known ground truth (tests/learning/routerdata.py: small right on
sums, large right on everything, large ten times the price), so a sum goes to small and an essay to
large.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config
from django.conf import settings
from openai import OpenAI

from learning import router_service, router_training
from learning.models import Router, RouterVersion, TrainingStatus
from learning.storage import get_store
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from serving.gateway.metering import QUEUE_KEY, flush_usage
from serving.models import UsageRecord
from tests.conftest import make_user
from tests.engines import ROUTER_CANDIDATES
from tests.learning.routerdata import make_evaluation, router_fields
from tests.serving.gateway.conftest import CHAT, GATEWAY_REDIS_DB, deploy

pytestmark = pytest.mark.slow

SUM = "What is 123 plus 456?"
ESSAY = "Write an essay about the sea and its history. Part 7."


@pytest.fixture
def metered() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    connection.flushdb()
    try:
        yield connection
    finally:
        connection.flushdb()
        connection.close()


@pytest.fixture
def routed(
    transactional_catalog: None,
    engines: dict[str, str],
    gateway_data_dir: Path,
    settings: Any,
    metered: redis.Redis,
) -> Iterator[tuple[Organization, Router, str]]:
    """An organisation with the two deployments, an API key, and the router `auto` over them, trained
    from the ground-truth evaluation and active."""
    settings.OBJECT_STORE_BUCKET = ""
    settings.DATA_DIR = str(gateway_data_dir)
    get_store.cache_clear()
    owner = make_user("rhea")
    organization = account_services.create_organization(slug="routed", name="Routed", owner=owner)
    Quota.objects.filter(organization=organization).update(
        requests_per_minute=10_000, tokens_per_minute=10**7
    )
    for name in ROUTER_CANDIDATES:
        deploy(organization, name, CHAT, engines[CHAT])
    setup = make_evaluation(get_store(), organization, count=160)
    router = router_service.create_router(
        organization=organization, user=owner, **router_fields(mode="active")
    )
    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    assert router_training.run(training.pk) == TrainingStatus.SUCCEEDED
    router_service.activate(router, RouterVersion.objects.get(router=router, kind="ngram"))
    _, key = account_services.create_api_key(
        organization=organization, name="app", created_by=owner, expires_at=None
    )
    try:
        yield organization, router, key
    finally:
        get_store.cache_clear()


def usage_of(connection: redis.Redis, organization: Organization) -> list[UsageRecord]:
    """What the gateway metered, once flushed to PostgreSQL as the periodic task does."""
    import time

    deadline = time.monotonic() + 10
    while connection.llen(QUEUE_KEY) == 0 and time.monotonic() < deadline:  # metering runs after answers
        time.sleep(0.1)
    time.sleep(0.5)
    flush_usage(connection)
    return list(
        UsageRecord.objects.filter(organization=organization)
        .select_related("deployment")
        .order_by("created_at")
    )


def test_the_openai_client_calls_the_router_by_name_and_each_prompt_is_answered_by_the_chosen_engine(
    gateway_url: str, routed: tuple[Organization, Router, str], metered: redis.Redis
) -> None:
    organization, _, key = routed
    client = OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=120)
    assert "auto" in {model.id for model in client.models.list()}
    served = {}
    for prompt in (SUM, ESSAY):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
        )
        answer = raw.parse()
        served[prompt] = raw.headers["x-router-deployment"]
        assert answer.model == "tiny-chat"  # the real engine answered (under its first name)
        assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    assert served == {SUM: "small", ESSAY: "large"}

    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=[{"role": "user", "content": ESSAY}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True},
    ) as streamed:  # fmt: skip
        assert streamed.headers["x-router-deployment"] == "large"
        chunks = list(streamed.parse())
    assert {chunk.model for chunk in chunks} == {"tiny-chat"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    records = usage_of(metered, organization)
    assert [(r.model, r.router, r.router_choice, r.deployment.name, r.streamed) for r in records] == [
        ("auto", "auto", "small", "small", False),
        ("auto", "auto", "large", "large", False),
        ("auto", "auto", "large", "large", True),
    ]
    assert all(r.status_code == 200 and r.completion_tokens > 0 for r in records)


def test_the_boto3_client_converses_with_the_router_and_its_trace_names_the_engine_that_answered(
    gateway_url: str, routed: tuple[Organization, Router, str], metered: redis.Redis, monkeypatch: Any
) -> None:
    organization, _, key = routed
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    runtime = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=gateway_url,
        config=Config(retries={"max_attempts": 1}, read_timeout=120),
    )  # fmt: skip
    invoked = {}
    for prompt in (SUM, ESSAY):
        answer = runtime.converse(
            modelId="auto", messages=[{"role": "user", "content": [{"text": prompt}]}],
            inferenceConfig={"maxTokens": 12, "temperature": 0},
        )  # fmt: skip
        invoked[prompt] = answer["trace"]["promptRouter"]["invokedModelId"]
        assert answer["output"]["message"]["content"][0]["text"] and answer["usage"]["outputTokens"] > 0
    assert invoked == {SUM: "small", ESSAY: "large"}

    events = list(
        runtime.converse_stream(
            modelId="auto", messages=[{"role": "user", "content": [{"text": SUM}]}],
            inferenceConfig={"maxTokens": 12, "temperature": 0},
        )["stream"]
    )  # fmt: skip
    metadata = events[-1]["metadata"]
    assert metadata["trace"]["promptRouter"]["invokedModelId"] == "small"
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)

    records = usage_of(metered, organization)
    assert [(r.route, r.router, r.router_choice, r.deployment.name) for r in records] == [
        ("bedrock.converse", "auto", "small", "small"),
        ("bedrock.converse", "auto", "large", "large"),
        ("bedrock.converse-stream", "auto", "small", "small"),
    ]
    assert all(r.status_code == 200 and r.completion_tokens > 0 for r in records)
