"""A guardrail whose personal-data detector is Microsoft Presidio's pattern recognizers works at the gateway
as the built-in one does, through the platform's whole ASGI application and a stand-in engine over real
HTTP: a prompt reaches the engine masked, an answer is masked, a streamed entity split at any position
never reaches the caller in pieces, and a blocked stream ends with content_filter before the entity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from learning import guardrails as policies
from learning.guardrails import service
from learning.models import GuardrailAttachment
from marketplace.accounts.models import ApiKey, Organization
from marketplace.accounts.services import create_api_key
from tests.serving.gateway.conftest import CHAT, deploy
from tests.serving.gateway.guardrail_engine import GuardedEngine, guarded_engine, prompts
from tests.serving.gateway.in_process import key_headers, post

pytestmark = pytest.mark.usefixtures("transactional_catalog")

CONFIG = {
    "personal_data": {"EMAIL": "mask", "PHONE": "mask", "CARD": "block"},
    "detector": "presidio",
    "blocked_output_message": "That answer was withheld.",
}
PHONE = "+44 20 7946 0958"
TEXT = f"Sure, call {PHONE} and we will answer."
START = TEXT.index(PHONE)


@pytest.fixture
def engine() -> Iterator[str]:
    with guarded_engine() as url:
        yield url


@pytest.fixture
def key(acme: Organization, engine: str) -> tuple[ApiKey, str]:
    chat = deploy(acme, "chat", CHAT, engine)
    guardrail = service.create_guardrail(organization=acme, user=None, name="presidio", config=CONFIG)
    service.publish(guardrail, None)
    GuardrailAttachment.objects.create(guardrail=guardrail, deployment=chat)
    return create_api_key(organization=acme, name="k", created_by=None, expires_at=None)


def ask(text: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}], "stream": stream}


def sse(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]


def streamed_text(body: bytes) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in sse(body) for choice in chunk["choices"])


def test_the_gateway_compiles_the_guardrail_with_presidio(
    key: tuple[ApiKey, str], acme: Organization
) -> None:
    [policy] = policies.policies_of(acme.pk, max_age=0).values()
    assert policy.detector == policies.PRESIDIO


def test_a_prompt_reaches_the_engine_masked(key: tuple[ApiKey, str]) -> None:
    answer = post("/v1/chat/completions", ask("Write to jane.doe@example.org please"), key_headers(key[1]))
    assert answer.status == 200
    assert prompts() == [[{"role": "user", "content": "Write to [EMAIL] please"}]]


def test_an_answer_is_masked(key: tuple[ApiKey, str]) -> None:
    GuardedEngine.pieces = [TEXT]
    answer = post("/v1/chat/completions", ask("Who?"), key_headers(key[1]))
    assert answer.json()["choices"][0]["message"]["content"] == "Sure, call [PHONE] and we will answer."


@pytest.mark.parametrize("cut", [START + 1, START + 4, START + 9, START + len(PHONE) - 1, START + len(PHONE)])
def test_a_streamed_entity_split_at_any_position_never_reaches_the_caller_in_pieces(
    cut: int, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = [TEXT[:cut], TEXT[cut:]]
    answer = post("/v1/chat/completions", ask("Who?", stream=True), key_headers(key[1]))
    assert streamed_text(answer.body) == "Sure, call [PHONE] and we will answer."
    assert "7946" not in answer.body.decode()
    assert sse(answer.body)[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_blocked_stream_stops_with_content_filter_before_the_entity(key: tuple[ApiKey, str]) -> None:
    GuardedEngine.pieces = ["Your card: ", "4111 1111 ", "1111 1111", " is on file. " * 10]
    answer = post("/v1/chat/completions", ask("Card?", stream=True), key_headers(key[1]))
    assert "4111 1111" not in answer.body.decode()
    assert streamed_text(answer.body).endswith("That answer was withheld.")
    assert sse(answer.body)[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert answer.body.endswith(b"data: [DONE]\n\n")
