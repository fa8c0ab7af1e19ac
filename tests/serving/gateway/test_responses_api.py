"""POST /v1/responses, OpenAI's Responses API: the unmodified openai client's `responses.create`, plain and
streamed, through a real gateway to the real SmolLM2 engine, with the keys, limits and metering of chat
(usage as the engine counts it, from its `input_tokens` and `output_tokens`). What the gateway refuses
before the engine is asked is checked in process, with the scripted stand-in engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
import pytest
import redis
from django.conf import settings

from marketplace.accounts.models import Organization
from marketplace.accounts.services import create_api_key
from serving.gateway.metering import QUEUE_KEY, flush_usage
from serving.models import UsageRecord
from tests.serving.gateway.conftest import CHAT, EMBED, GATEWAY_REDIS_DB, Tenant, deploy
from tests.serving.gateway.scripted_engine import ScriptedEngine, scripted_engine
from tests.serving.gateway.test_routes_by_capability import openai_client

QUESTION = "What is the capital of France?"


def gateway_client(gateway_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=60)


def metered(tenant: Tenant, count: int) -> list[UsageRecord]:
    """The gateway's usage records, once `count` of them have been queued, flushed to PostgreSQL."""
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    deadline = time.monotonic() + 10
    while connection.llen(QUEUE_KEY) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    flush_usage(connection)
    return list(UsageRecord.objects.filter(organization=tenant.organization, route="responses"))


@pytest.mark.slow
def test_responses_create_answers_and_is_metered_in_the_engines_input_and_output_tokens(
    gateway_url: str, tenant: Tenant
) -> None:
    answer = gateway_client(gateway_url, tenant.key).responses.create(
        model="tiny-chat", input=QUESTION, max_output_tokens=20, temperature=0
    )
    assert "Paris" in answer.output_text
    assert answer.usage is not None and answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    [record] = metered(tenant, 1)
    assert (record.prompt_tokens, record.completion_tokens, record.streamed, record.status_code) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
        False,
        200,
    )


@pytest.mark.slow
def test_a_streamed_response_passes_the_engines_events_through_and_is_metered(
    gateway_url: str, tenant: Tenant
) -> None:
    events = list(
        gateway_client(gateway_url, tenant.key).responses.create(
            model="tiny-chat", input=QUESTION, max_output_tokens=20, temperature=0, stream=True
        )
    )
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert "Paris" in text
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None
    [record] = metered(tenant, 1)
    assert (record.prompt_tokens, record.completion_tokens, record.streamed) == (
        usage.input_tokens,
        usage.output_tokens,
        True,
    )
    assert record.time_to_first_token_ms is not None


# --- Refused before the engine is asked (in process, stand-in engine) ------------------------------------


@pytest.fixture
def secret(acme: Organization, transactional_catalog: None) -> Iterator[str]:
    with scripted_engine() as url:
        deploy(acme, "chat", CHAT, url)
        deploy(acme, "embed", EMBED, url)
        yield create_api_key(organization=acme, name="k", created_by=None, expires_at=None)[1]


def refused(secret: str, **request: object) -> openai.APIStatusError:
    async def run() -> object:
        return await openai_client(secret).responses.create(**request)  # type: ignore[call-overload]

    with pytest.raises(openai.APIStatusError) as raised:
        asyncio.run(run())
    assert ScriptedEngine.received == []
    return raised.value


def test_a_response_that_asks_the_engine_to_store_it_is_refused_naming_the_field(secret: str) -> None:
    error = refused(secret, model="chat", input="hi", previous_response_id="resp_1")
    assert isinstance(error, openai.BadRequestError)
    assert error.body["param"] == "previous_response_id"  # type: ignore[index]


def test_a_response_without_input_is_refused_naming_the_field(secret: str) -> None:
    error = refused(secret, model="chat", input=[])
    assert isinstance(error, openai.BadRequestError)
    assert error.body["param"] == "input"  # type: ignore[index]


def test_a_response_from_an_embedding_deployment_is_refused_naming_what_it_serves(secret: str) -> None:
    error = refused(secret, model="embed", input="hi")
    assert isinstance(error, openai.BadRequestError)
    assert "cannot answer /v1/responses: it serves /v1/embeddings." in error.body["message"]  # type: ignore[index]


def test_outsider_cannot_call_another_organisations_deployment_for_a_response(
    globex: Organization, secret: str
) -> None:
    theirs = create_api_key(organization=globex, name="k", created_by=None, expires_at=None)[1]
    error = refused(theirs, model="chat", input="hi")
    assert isinstance(error, openai.NotFoundError)
