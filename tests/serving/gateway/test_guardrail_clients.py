"""Guardrails as unmodified clients see them, through the real gateway under gunicorn: the `openai` client
(plain and streamed) and `boto3`'s bedrock-runtime (Converse with guardrailConfig, ConverseStream ending
`guardrail_intervened`), against the real SmolLM2 engine, and against the stand-in engine where the test
must choose the answer (an e-mail address split across the stream's pieces, a card number to block).
What reached the engine is read from the invocation log's queue (logging on, masking of the log off)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.exceptions
import openai
import pytest
import redis
from botocore.config import Config
from django.conf import settings

from learning.capture import QUEUE_KEY as LOG_QUEUE_KEY
from learning.guardrails import service
from learning.models import Guardrail, GuardrailAttachment, GuardrailIntervention, InvocationLogSettings
from marketplace.accounts import services as account_services
from serving.models import Deployment
from tests.conftest import make_user
from tests.serving.gateway.conftest import CHAT, GATEWAY_REDIS_DB, Tenant, deploy
from tests.serving.gateway.guardrail_engine import GuardedEngine, guarded_engine, prompts

pytestmark = pytest.mark.slow

CONFIG = {
    "personal_data": {"EMAIL": "mask", "CARD": "block"},
    "words": ["project falcon"],
    "blocked_input_message": "We cannot help with that.",
    "blocked_output_message": "That answer was withheld.",
}
EMAIL = "jane.doe@example.org"


@pytest.fixture
def guardrail(tenant: Tenant) -> Guardrail:
    organization = tenant.organization
    made = service.create_guardrail(organization=organization, user=None, name="support", config=CONFIG)
    service.publish(made, None)
    GuardrailAttachment.objects.create(guardrail=made, deployment=tenant.chat)
    return made


@pytest.fixture
def standin(tenant: Tenant, guardrail: Guardrail) -> Iterator[Deployment]:
    """A chat deployment of the tenant served by the stand-in engine, with the guardrail attached."""
    with guarded_engine() as url:
        deployment = deploy(tenant.organization, "scripted", CHAT, url)
        GuardrailAttachment.objects.create(guardrail=guardrail, deployment=deployment)
        yield deployment


@pytest.fixture
def log_queue(tenant: Tenant) -> Iterator[redis.Redis]:
    InvocationLogSettings.objects.create(
        organization=tenant.organization, enabled=True, mask_personal_data=False
    )
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    connection.delete(LOG_QUEUE_KEY)
    try:
        yield connection
    finally:
        connection.close()


def client(gateway_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=60)


def runtime(gateway_url: str, key: str, monkeypatch: Any) -> Any:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=gateway_url,
        config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )  # fmt: skip


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    """Whether `check` holds within `timeout` seconds (the gateway records after the answer)."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def written(guardrail: Guardrail, **fields: str) -> bool:
    """Whether the gateway has written the intervention (it does so after the answer; a test that ends
    before would race the next test's emptying of the tables)."""
    return eventually(GuardrailIntervention.objects.filter(guardrail=guardrail, **fields).exists)


def logged(connection: redis.Redis, count: int = 1) -> list[dict[str, Any]]:
    """The invocation records the gateway queued."""
    eventually(lambda: connection.llen(LOG_QUEUE_KEY) >= count)
    return [json.loads(line) for line in connection.lrange(LOG_QUEUE_KEY, 0, -1)]


# --- openai -------------------------------------------------------------------------------------------------


def test_the_real_engine_receives_the_prompt_masked(
    gateway_url: str, tenant: Tenant, guardrail: Guardrail, log_queue: redis.Redis
) -> None:
    answer = client(gateway_url, tenant.key).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": f"Say hello to {EMAIL}."}], max_tokens=8
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    [record] = logged(log_queue)
    assert record["request"]["messages"] == [{"role": "user", "content": "Say hello to [EMAIL]."}]
    assert EMAIL not in json.dumps(record)
    assert (record["guardrails"][0]["kind"], record["guardrails"][0]["action"]) == ("personal_data", "masked")
    assert written(guardrail, direction="input", action="masked")


def test_a_blocked_prompt_gets_content_filter_from_the_openai_client(
    gateway_url: str, tenant: Tenant, guardrail: Guardrail, log_queue: redis.Redis
) -> None:
    answer = client(gateway_url, tenant.key).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "What is project Falcon?"}], max_tokens=8
    )
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == "We cannot help with that."
    assert answer.usage is not None and answer.usage.completion_tokens == 0  # the engine never ran
    [record] = logged(log_queue)
    assert record["guardrails"][0]["action"] == "blocked"
    assert written(guardrail, direction="input", action="blocked")


def test_a_blocked_streamed_prompt_gets_content_filter(
    gateway_url: str, tenant: Tenant, guardrail: Guardrail
) -> None:
    stream = client(gateway_url, tenant.key).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "Card 4111 1111 1111 1111"}], stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "We cannot help with that."
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert written(guardrail, direction="input", action="blocked")


def test_a_clean_streamed_answer_of_the_real_engine_passes(
    gateway_url: str, tenant: Tenant, guardrail: Guardrail
) -> None:
    stream = client(gateway_url, tenant.key).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_a_streamed_address_split_across_chunks_reaches_the_openai_client_masked(
    gateway_url: str, tenant: Tenant, standin: Deployment, guardrail: Guardrail
) -> None:
    GuardedEngine.pieces = ["Write to jane", ".doe@exa", "mple.org", " today."]
    stream = client(gateway_url, tenant.key).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Who?"}], stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == "Write to [EMAIL] today."
    assert not any("jane" in piece or "exa" in piece for piece in pieces)
    assert written(guardrail, direction="output", action="masked")


def test_a_streamed_answer_that_turns_blocked_stops_with_content_filter(
    gateway_url: str, tenant: Tenant, standin: Deployment, guardrail: Guardrail
) -> None:
    GuardedEngine.pieces = ["Your card ", "4111 1111 ", "1111 1111", " is fine." * 20]
    stream = client(gateway_url, tenant.key).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Card?"}], stream=True
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert "4111" not in text and text.endswith("That answer was withheld.")
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert written(guardrail, direction="output", action="blocked")


def test_a_clean_streamed_responses_answer_of_the_real_engine_passes(
    gateway_url: str, tenant: Tenant, guardrail: Guardrail
) -> None:
    stream = client(gateway_url, tenant.key).responses.create(
        model="tiny-chat", input="What is the capital of France?", max_output_tokens=16, stream=True
    )
    events = list(stream)
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text.strip()
    assert events[-1].type == "response.completed" and events[-1].response.output_text == text


def test_a_streamed_responses_answer_that_turns_blocked_ends_incomplete_for_content_filter(
    gateway_url: str, tenant: Tenant, standin: Deployment, guardrail: Guardrail
) -> None:
    GuardedEngine.pieces = ["Your card ", "4111 1111 ", "1111 1111", " is fine." * 20]
    events = list(
        client(gateway_url, tenant.key).responses.create(model="scripted", input="Card?", stream=True)
    )
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert "4111" not in text
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "content_filter"
    assert last.response.output_text == "That answer was withheld."
    assert written(guardrail, direction="output", action="blocked")


# --- boto3 --------------------------------------------------------------------------------------------------


def test_converse_with_guardrail_config_intervenes_with_a_trace(
    gateway_url: str, tenant: Tenant, monkeypatch: Any
) -> None:
    named = service.create_guardrail(
        organization=tenant.organization, user=None, name="by-request", config=CONFIG
    )
    service.publish(named, None)
    answer = runtime(gateway_url, tenant.key, monkeypatch).converse(
        modelId="tiny-chat",
        messages=[{"role": "user", "content": [{"text": "Tell me about Project Falcon."}]}],
        guardrailConfig={"guardrailIdentifier": "by-request", "guardrailVersion": "1", "trace": "enabled"},
    )
    assert answer["stopReason"] == "guardrail_intervened"
    assert answer["output"]["message"]["content"][0]["text"] == "We cannot help with that."
    assessment = answer["trace"]["guardrail"]["inputAssessment"][str(named.pk)]
    assert assessment["wordPolicy"]["customWords"][0]["match"] == "Project Falcon"
    assert written(named, direction="input", action="blocked")


def test_converse_with_a_clean_prompt_answers_from_the_real_engine(
    gateway_url: str, tenant: Tenant, guardrail: Guardrail, monkeypatch: Any
) -> None:
    answer = runtime(gateway_url, tenant.key, monkeypatch).converse(
        modelId="tiny-chat",
        messages=[{"role": "user", "content": [{"text": "What is the capital of France?"}]}],
        inferenceConfig={"maxTokens": 16},
        guardrailConfig={"guardrailIdentifier": str(guardrail.pk), "guardrailVersion": "1"},
    )
    assert answer["stopReason"] in ("end_turn", "max_tokens")
    assert answer["output"]["message"]["content"][0]["text"].strip()


def test_converse_stream_stops_with_guardrail_intervened(
    gateway_url: str, tenant: Tenant, standin: Deployment, guardrail: Guardrail, monkeypatch: Any
) -> None:
    GuardedEngine.pieces = ["Card ", "4111 1111 1111 1111", " ok." * 30]
    stream = runtime(gateway_url, tenant.key, monkeypatch).converse_stream(
        modelId="scripted",
        messages=[{"role": "user", "content": [{"text": "Card?"}]}],
        guardrailConfig={"guardrailIdentifier": "support", "guardrailVersion": "1", "trace": "enabled"},
    )
    found = list(stream["stream"])
    stop = next(event["messageStop"] for event in found if "messageStop" in event)
    metadata = next(event["metadata"] for event in found if "metadata" in event)
    assert stop["stopReason"] == "guardrail_intervened"
    output = metadata["trace"]["guardrail"]["outputAssessments"][str(guardrail.pk)][0]
    assert output["sensitiveInformationPolicy"]["piiEntities"][0]["type"] == "CREDIT_DEBIT_CARD_NUMBER"
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in found if "contentBlockDelta" in e)
    assert "4111" not in text
    assert prompts()  # the engine was asked, and its answer withheld
    assert eventually(GuardrailIntervention.objects.filter(guardrail=guardrail, direction="output").exists)


def test_another_organisations_guardrail_is_refused_naming_the_field(
    gateway_url: str, tenant: Tenant, monkeypatch: Any
) -> None:
    owner = make_user("otto")
    other = account_services.create_organization(slug="other", name="Other", owner=owner)
    theirs = service.create_guardrail(organization=other, user=owner, name="theirs", config=CONFIG)
    service.publish(theirs, owner)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        runtime(gateway_url, tenant.key, monkeypatch).converse(
            modelId="tiny-chat",
            messages=[{"role": "user", "content": [{"text": "Hi"}]}],
            guardrailConfig={"guardrailIdentifier": str(theirs.pk), "guardrailVersion": "1"},
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "guardrailConfig.guardrailIdentifier" in refused.value.response["Error"]["Message"]
