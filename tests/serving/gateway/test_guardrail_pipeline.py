"""Guardrails in the gateway's one pipeline, through the platform's whole ASGI application in process, with a
stand-in engine whose answer the test chooses and which notes what reached it: input masked before the
engine sees it or answered with the blocked-input message without calling it, output masked or blocked
(plain and streamed, an entity split across the stream's pieces at every position), the strictest of the
guardrails attached to the key, the router and the deployment, Bedrock's guardrailConfig (and another
organisation's guardrail refused), and every intervention counted, recorded and logged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from botocore.eventstream import EventStreamBuffer
from django.conf import settings
from prometheus_client import REGISTRY

from learning import guardrails as policies
from learning.capture import QUEUE_KEY as LOG_QUEUE_KEY
from learning.guardrails import service
from learning.models import (
    Guardrail,
    GuardrailAttachment,
    GuardrailIntervention,
    InvocationLogSettings,
    Router,
)
from marketplace.accounts.models import ApiKey, Organization
from marketplace.accounts.services import create_api_key
from serving.gateway.metering import QUEUE_KEY as USAGE_QUEUE_KEY
from serving.gateway.metering import flush_usage
from serving.models import Deployment, UsageRecord
from tests.serving.gateway.conftest import CHAT, deploy
from tests.serving.gateway.guardrail_engine import GuardedEngine, guarded_engine, prompts
from tests.serving.gateway.in_process import key_headers, post

pytestmark = pytest.mark.usefixtures("transactional_catalog")

CONFIG = {
    "personal_data": {"EMAIL": "mask", "CARD": "block"},
    "words": ["project falcon"],
    "blocked_input_message": "We cannot help with that.",
    "blocked_output_message": "That answer was withheld.",
}
EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"
INTERVENTIONS = "marketplace_gateway_guardrail_interventions_total"


@pytest.fixture
def engine() -> Iterator[str]:
    with guarded_engine() as url:
        yield url


@pytest.fixture
def queues() -> Iterator[redis.Redis]:
    """The usage and invocation log queues, empty before and after."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.delete(USAGE_QUEUE_KEY, LOG_QUEUE_KEY)
    try:
        yield connection
    finally:
        connection.delete(USAGE_QUEUE_KEY, LOG_QUEUE_KEY)
        connection.close()


@pytest.fixture
def chat(acme: Organization, engine: str) -> Deployment:
    return deploy(acme, "chat", CHAT, engine)


@pytest.fixture
def key(acme: Organization, chat: Deployment) -> tuple[ApiKey, str]:
    return create_api_key(organization=acme, name="k", created_by=None, expires_at=None)


def published(organization: Organization, name: str = "support", **config: Any) -> Guardrail:
    guardrail = service.create_guardrail(
        organization=organization, user=None, name=name, config={**CONFIG, **config}
    )
    service.publish(guardrail, None)
    return guardrail


@pytest.fixture
def guardrail(acme: Organization, chat: Deployment) -> Guardrail:
    made = published(acme)
    GuardrailAttachment.objects.create(guardrail=made, deployment=chat)
    return made


def ask(text: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}], "stream": stream}


def sse(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]


def streamed_text(body: bytes) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in sse(body) for choice in chunk["choices"])


def queued(connection: redis.Redis, key: str, field: str, request_id: str) -> dict[str, Any]:
    """The one record of the call in a queue (another test's spooled record may be replayed there)."""
    [record] = [
        found for line in connection.lrange(key, 0, -1) if (found := json.loads(line))[field] == request_id
    ]
    return record


def counted(guardrail: str, kind: str, direction: str, action: str) -> float:
    labels = {"guardrail": guardrail, "kind": kind, "direction": direction, "action": action}
    return REGISTRY.get_sample_value(INTERVENTIONS, labels) or 0.0


# --- Input --------------------------------------------------------------------------------------------------


def test_personal_data_in_the_prompt_reaches_the_engine_masked(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    answer = post("/v1/chat/completions", ask(f"Write to {EMAIL} please"), key_headers(key[1]))
    assert answer.status == 200
    assert prompts() == [[{"role": "user", "content": "Write to [EMAIL] please"}]]


def test_a_blocked_prompt_is_answered_with_the_message_and_never_reaches_the_engine(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    answer = post("/v1/chat/completions", ask("Tell me about Project Falcon"), key_headers(key[1]))
    [choice] = answer.json()["choices"]
    assert (answer.status, choice["finish_reason"]) == (200, "content_filter")
    assert choice["message"]["content"] == "We cannot help with that."
    assert prompts() == []


def test_a_blocked_streamed_prompt_ends_its_stream_with_content_filter(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    answer = post("/v1/chat/completions", ask(f"My card is {CARD}", stream=True), key_headers(key[1]))
    chunks = sse(answer.body)
    assert streamed_text(answer.body) == "We cannot help with that."
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert answer.body.endswith(b"data: [DONE]\n\n")
    assert prompts() == []


def test_a_completion_prompt_is_masked_too(guardrail: Guardrail, key: tuple[ApiKey, str]) -> None:
    post("/v1/completions", {"model": "chat", "prompt": f"Mail {EMAIL}"}, key_headers(key[1]))
    assert prompts() == ["Mail [EMAIL]"]


def test_a_call_without_guardrails_passes_untouched(chat: Deployment, key: tuple[ApiKey, str]) -> None:
    published(chat.organization)  # published, but attached to nothing
    post("/v1/chat/completions", ask(f"Write to {EMAIL}"), key_headers(key[1]))
    assert prompts() == [[{"role": "user", "content": f"Write to {EMAIL}"}]]


# --- Output -------------------------------------------------------------------------------------------------


def test_personal_data_in_an_answer_is_masked(guardrail: Guardrail, key: tuple[ApiKey, str]) -> None:
    GuardedEngine.pieces = [f"Reach me at {EMAIL}."]
    answer = post("/v1/chat/completions", ask("How do I reach you?"), key_headers(key[1]))
    assert answer.json()["choices"][0]["message"]["content"] == "Reach me at [EMAIL]."


def test_a_blocked_answer_is_replaced_and_says_content_filter(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = [f"Use card {CARD}."]
    [choice] = post("/v1/chat/completions", ask("Pay"), key_headers(key[1])).json()["choices"]
    assert (choice["message"]["content"], choice["finish_reason"]) == (
        "That answer was withheld.",
        "content_filter",
    )


def tool_call(arguments: str) -> dict[str, Any]:
    return {"id": "call-1", "type": "function", "function": {"name": "send_mail", "arguments": arguments}}


def test_personal_data_in_an_answers_tool_call_arguments_and_reasoning_is_masked(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = [""]
    GuardedEngine.extra = {
        "tool_calls": [tool_call(json.dumps({"to": EMAIL}))],
        "reasoning_content": f"The user wants mail sent to {EMAIL}.",
    }
    [choice] = post("/v1/chat/completions", ask("Mail Jane"), key_headers(key[1])).json()["choices"]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"to": "[EMAIL]"}
    assert choice["message"]["reasoning_content"] == "The user wants mail sent to [EMAIL]."


def test_an_answer_whose_tool_call_is_blocked_keeps_no_tool_call(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = ["Paying now."]
    GuardedEngine.extra = {"tool_calls": [tool_call(json.dumps({"card": CARD}))]}
    [choice] = post("/v1/chat/completions", ask("Pay"), key_headers(key[1])).json()["choices"]
    assert choice["message"] == {"role": "assistant", "content": "That answer was withheld."}
    assert choice["finish_reason"] == "content_filter"


def streamed_tool_calls(body: bytes) -> list[dict[str, Any]]:
    return [
        call
        for chunk in sse(body)
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or ()
    ]


def test_a_streamed_tool_calls_arguments_arrive_whole_and_masked(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    arguments = json.dumps({"to": EMAIL, "body": "hello"})
    GuardedEngine.pieces, GuardedEngine.tool_pieces = (
        ["Sending."],
        [arguments[:9], arguments[9:14], arguments[14:]],
    )
    answer = post("/v1/chat/completions", ask("Mail Jane", stream=True), key_headers(key[1]))
    [call] = streamed_tool_calls(answer.body)
    assert (call["id"], call["function"]["name"]) == ("call-1", "send_mail")
    assert json.loads(call["function"]["arguments"]) == {"to": "[EMAIL]", "body": "hello"}
    assert EMAIL.split("@")[0] not in answer.body.decode()
    finishes = [
        c.get("finish_reason")
        for chunk in sse(answer.body)
        for c in chunk["choices"]
        if c.get("finish_reason")
    ]
    assert finishes == ["tool_calls"]
    assert streamed_text(answer.body) == "Sending."


def test_a_streamed_tool_call_that_is_blocked_ends_the_stream_without_it(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    arguments = json.dumps({"card": CARD})
    GuardedEngine.pieces, GuardedEngine.tool_pieces = ["Paying."], [arguments[:12], arguments[12:]]
    answer = post("/v1/chat/completions", ask("Pay", stream=True), key_headers(key[1]))
    assert streamed_tool_calls(answer.body) == []
    assert CARD not in answer.body.decode() and CARD[:9] not in answer.body.decode()
    assert sse(answer.body)[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert streamed_text(answer.body).endswith("That answer was withheld.")


def responses_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for event in body.split(b"\n\n") for line in event.split(b"\n")
            if line.startswith(b"data: {")]  # fmt: skip


def test_a_streamed_responses_answer_is_masked_in_its_deltas_and_in_every_whole_text(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = [TEXT[: START + 3], TEXT[START + 3 : START + 11], TEXT[START + 11 :]]
    body = {"model": "chat", "input": "How do I reach you?", "stream": True}
    answer = post("/v1/responses", body, key_headers(key[1]))
    events = responses_events(answer.body)
    masked = TEXT.replace(EMAIL, "[EMAIL]")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == masked and EMAIL[:5] not in answer.body.decode()
    [done] = [e for e in events if e["type"] == "response.output_text.done"]
    [completed] = [e for e in events if e["type"] == "response.completed"]
    assert done["text"] == masked
    assert completed["response"]["output"][0]["content"][0]["text"] == masked


def test_a_streamed_responses_custom_tool_calls_input_arrives_whole_and_masked(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces, GuardedEngine.tool_pieces = (
        ["Noting."],
        [f"write to {EMAIL[:6]}", f"{EMAIL[6:]} soon"],
    )
    body = {"model": "chat", "input": "Note it", "stream": True}
    answer = post("/v1/responses", body, key_headers(key[1]))
    events = responses_events(answer.body)
    assert EMAIL[:6] not in answer.body.decode()
    [done] = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    [completed] = [e for e in events if e["type"] == "response.completed"]
    assert done["input"] == "write to [EMAIL] soon"
    assert completed["response"]["output"][1]["input"] == "write to [EMAIL] soon"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_a_streamed_responses_answer_that_turns_blocked_ends_incomplete_for_content_filter(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = ["Use card ", CARD[:9], CARD[9:], " now."]
    body = {"model": "chat", "input": "Pay", "stream": True}
    answer = post("/v1/responses", body, key_headers(key[1]))
    events = responses_events(answer.body)
    assert CARD[:9] not in answer.body.decode()
    last = events[-1]
    assert (last["type"], last["response"]["incomplete_details"]) == (
        "response.incomplete",
        {"reason": "content_filter"},
    )
    assert last["response"]["output"][0]["content"][0]["text"] == "That answer was withheld."
    assert not [e for e in events if e["type"] == "response.completed"]


def test_tool_call_arguments_in_the_prompt_reach_the_engine_masked(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    history = [
        {"role": "user", "content": "Mail Jane"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call(json.dumps({"to": EMAIL}))]},
        {"role": "tool", "tool_call_id": "call-1", "content": f"sent to {EMAIL}"},
    ]
    post("/v1/chat/completions", {"model": "chat", "messages": history}, key_headers(key[1]))
    [[_, assistant, tool]] = prompts()
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"to": "[EMAIL]"}
    assert tool["content"] == "sent to [EMAIL]"


TEXT = f"Sure, write to {EMAIL} and we will answer."
START = TEXT.index(EMAIL)


# Every position is covered by learning's own StreamGuard tests; through the gateway: its first character,
# the "@", its last character, and just after it.
@pytest.mark.parametrize("cut", [START + 1, TEXT.index("@"), START + len(EMAIL) - 1, START + len(EMAIL)])
def test_a_streamed_entity_split_at_any_position_never_reaches_the_caller_in_pieces(
    cut: int, guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = [TEXT[:cut], TEXT[cut:]]
    answer = post("/v1/chat/completions", ask("Who?", stream=True), key_headers(key[1]))
    assert streamed_text(answer.body) == "Sure, write to [EMAIL] and we will answer."
    assert not any(piece and piece in answer.body.decode() for piece in ("jane", "example.org", "doe@"))
    assert sse(answer.body)[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_streamed_answer_in_one_character_pieces_is_masked(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = list(TEXT)
    answer = post("/v1/chat/completions", ask("Who?", stream=True), key_headers(key[1]))
    assert streamed_text(answer.body) == "Sure, write to [EMAIL] and we will answer."


def test_a_blocked_stream_stops_with_content_filter_before_the_entity(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = ["Your card: ", "4111 1111 ", "1111 1111", " is on file. " * 10]
    answer = post("/v1/chat/completions", ask("Card?", stream=True), key_headers(key[1]))
    text = streamed_text(answer.body)
    assert "4111 1111" not in answer.body.decode()  # whole values: an id may hold "4111"
    assert text.endswith("That answer was withheld.")
    assert sse(answer.body)[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert answer.body.endswith(b"data: [DONE]\n\n")


def test_a_streamed_completion_is_masked(guardrail: Guardrail, key: tuple[ApiKey, str]) -> None:
    GuardedEngine.pieces = ["mail jane.", "doe@exam", "ple.org now"]
    body = {"model": "chat", "prompt": "x", "stream": True}
    answer = post("/v1/completions", body, key_headers(key[1]))
    text = "".join(choice.get("text") or "" for chunk in sse(answer.body) for choice in chunk["choices"])
    assert text == "mail [EMAIL] now"


# --- Which guardrails apply ---------------------------------------------------------------------------------


def test_guardrails_on_the_key_and_the_deployment_both_apply(
    acme: Organization, chat: Deployment, key: tuple[ApiKey, str]
) -> None:
    on_deployment = published(acme, "mails", personal_data={"EMAIL": "mask"}, words=[])
    on_key = published(acme, "words", personal_data={}, words=["banana"], blocked_input_message="No fruit.")
    GuardrailAttachment.objects.create(guardrail=on_deployment, deployment=chat)
    GuardrailAttachment.objects.create(guardrail=on_key, api_key=key[0])
    post("/v1/chat/completions", ask(f"Mail {EMAIL}"), key_headers(key[1]))
    assert prompts() == [[{"role": "user", "content": "Mail [EMAIL]"}]]
    blocked = post("/v1/chat/completions", ask(f"Mail {EMAIL} a banana"), key_headers(key[1]))
    assert blocked.json()["choices"][0]["message"]["content"] == "No fruit."
    assert len(prompts()) == 1


def test_a_guardrail_on_another_key_does_not_apply(
    acme: Organization, chat: Deployment, key: tuple[ApiKey, str]
) -> None:
    other, _ = create_api_key(organization=acme, name="other", created_by=None, expires_at=None)
    GuardrailAttachment.objects.create(guardrail=published(acme), api_key=other)
    post("/v1/chat/completions", ask(f"Mail {EMAIL}"), key_headers(key[1]))
    assert prompts() == [[{"role": "user", "content": f"Mail {EMAIL}"}]]


def test_a_guardrail_on_a_router_applies_to_its_calls(
    acme: Organization, chat: Deployment, key: tuple[ApiKey, str]
) -> None:
    router = Router.objects.create(
        organization=acme, name="auto", candidates=[{"deployment": "chat", "cost_per_1k_tokens": 1}],
        fallback="chat", mode="active",
    )  # fmt: skip
    GuardrailAttachment.objects.create(guardrail=published(acme), router=router)
    post("/v1/chat/completions", {**ask(f"Mail {EMAIL}"), "model": "auto"}, key_headers(key[1]))
    post("/v1/chat/completions", ask(f"Mail {EMAIL}"), key_headers(key[1]))  # by name: not guarded
    assert prompts() == [
        [{"role": "user", "content": "Mail [EMAIL]"}],
        [{"role": "user", "content": f"Mail {EMAIL}"}],
    ]


# --- Bedrock ------------------------------------------------------------------------------------------------

CONVERSE = {"messages": [{"role": "user", "content": [{"text": "Tell me about Project Falcon"}]}]}


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    buffer = EventStreamBuffer()
    buffer.add_data(body)
    return [(str(m.headers.get(":event-type")), json.loads(m.payload or b"{}")) for m in buffer]


def test_converse_with_guardrail_config_names_the_organisations_guardrail(
    acme: Organization, key: tuple[ApiKey, str]
) -> None:
    made = published(acme)
    config = {"guardrailIdentifier": "support", "guardrailVersion": "1", "trace": "enabled"}
    answer = post("/model/chat/converse", {**CONVERSE, "guardrailConfig": config}, key_headers(key[1])).json()
    assert answer["stopReason"] == "guardrail_intervened"
    assert answer["output"]["message"]["content"] == [{"text": "We cannot help with that."}]
    words = answer["trace"]["guardrail"]["inputAssessment"][str(made.pk)]["wordPolicy"]["customWords"]
    assert words[0]["match"] == "Project Falcon"
    assert prompts() == []


def test_converse_stream_ends_with_guardrail_intervened_and_the_trace_in_its_metadata(
    guardrail: Guardrail, key: tuple[ApiKey, str]
) -> None:
    GuardedEngine.pieces = ["Card ", "4111 1111 1111 1111", " ok." * 30]
    config = {"guardrailIdentifier": str(guardrail.pk), "guardrailVersion": "1", "trace": "enabled"}
    body = {"messages": [{"role": "user", "content": [{"text": "Card?"}]}], "guardrailConfig": config}
    answer = post("/model/chat/converse-stream", body, key_headers(key[1]))
    found = events(answer.body)
    kinds = [kind for kind, _ in found]
    assert kinds[-2:] == ["messageStop", "metadata"]
    assert found[-2][1]["stopReason"] == "guardrail_intervened"
    output = found[-1][1]["trace"]["guardrail"]["outputAssessments"][str(guardrail.pk)][0]
    assert output["sensitiveInformationPolicy"]["piiEntities"][0]["action"] == "BLOCKED"
    deltas = [body["delta"].get("text", "") for kind, body in found if kind == "contentBlockDelta"]
    assert "4111" not in "".join(deltas)
    assert deltas[-1] == "That answer was withheld."


def test_another_organisations_guardrail_cannot_be_named(
    globex: Organization, key: tuple[ApiKey, str]
) -> None:
    theirs = published(globex, "theirs")
    for identifier in (str(theirs.pk), "theirs"):
        config = {"guardrailIdentifier": identifier, "guardrailVersion": "1"}
        answer = post("/model/chat/converse", {**CONVERSE, "guardrailConfig": config}, key_headers(key[1]))
        assert answer.status == 400
        assert "guardrailConfig.guardrailIdentifier" in answer.json()["message"]
    assert prompts() == []


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"guardrailIdentifier": "support"}, "guardrailConfig.guardrailVersion"),
        ({"guardrailIdentifier": "support", "guardrailVersion": "DRAFT"}, "guardrailConfig.guardrailVersion"),
        ({"guardrailIdentifier": "support", "guardrailVersion": "9"}, "guardrailConfig.guardrailIdentifier"),
        ({"guardrailIdentifier": "support", "guardrailVersion": "1", "trace": "x"}, "guardrailConfig.trace"),
        ("support", "guardrailConfig"),
    ],
)
def test_a_malformed_guardrail_config_is_refused_naming_the_field(
    config: Any, field: str, acme: Organization, key: tuple[ApiKey, str]
) -> None:
    published(acme)
    answer = post("/model/chat/converse", {**CONVERSE, "guardrailConfig": config}, key_headers(key[1]))
    assert answer.status == 400
    assert answer.json()["message"].startswith(field)
    assert prompts() == []


# --- Visible ------------------------------------------------------------------------------------------------


def test_interventions_are_counted_recorded_and_logged(
    acme: Organization, guardrail: Guardrail, key: tuple[ApiKey, str], queues: redis.Redis
) -> None:
    InvocationLogSettings.objects.create(organization=acme, enabled=True, mask_personal_data=False)
    before = counted("support", "personal_data", "input", "masked")
    GuardedEngine.pieces = ["Say project falcon."]
    answer = post("/v1/chat/completions", ask(f"Mail {EMAIL}"), key_headers(key[1]))
    request_id = answer.headers["x-request-id"]
    assert counted("support", "personal_data", "input", "masked") == before + 1
    expected = [
        {"guardrail_id": guardrail.pk, "guardrail": "support", "version": 1, "direction": "input",
         "kind": "personal_data", "name": "EMAIL", "action": "masked"},
        {"guardrail_id": guardrail.pk, "guardrail": "support", "version": 1, "direction": "output",
         "kind": "word", "name": "project falcon", "action": "blocked"},
    ]  # fmt: skip
    usage = queued(queues, USAGE_QUEUE_KEY, "request_id", request_id)
    assert usage["guardrail_interventions"] == expected
    logged = queued(queues, LOG_QUEUE_KEY, "id", request_id)
    assert logged["guardrails"] == expected
    assert logged["request"]["messages"][0]["content"] == "Mail [EMAIL]"
    assert logged["answer"]["choices"][0]["message"]["content"] == "That answer was withheld."
    flush_usage(queues)
    assert UsageRecord.objects.get(request_id=usage["request_id"]).guardrail_interventions == expected
    rows = GuardrailIntervention.objects.order_by("direction")
    assert [(r.direction, r.kind, r.action, r.request_id) for r in rows] == [
        ("input", "personal_data", "masked", usage["request_id"]),
        ("output", "word", "blocked", usage["request_id"]),
    ]


def test_a_clean_call_records_no_intervention(
    guardrail: Guardrail, key: tuple[ApiKey, str], queues: redis.Redis
) -> None:
    answer = post("/v1/chat/completions", ask("What is the capital of France?"), key_headers(key[1]))
    usage = queued(queues, USAGE_QUEUE_KEY, "request_id", answer.headers["x-request-id"])
    assert "guardrail_interventions" not in usage
    assert not GuardrailIntervention.objects.exists()


def test_reported_personal_data_passes_but_is_recorded(
    acme: Organization, chat: Deployment, key: tuple[ApiKey, str]
) -> None:
    GuardrailAttachment.objects.create(
        guardrail=published(acme, "audit", personal_data={"EMAIL": "report"}, words=[]), deployment=chat
    )
    post("/v1/chat/completions", ask(f"Mail {EMAIL}"), key_headers(key[1]))
    assert prompts() == [[{"role": "user", "content": f"Mail {EMAIL}"}]]
    assert list(GuardrailIntervention.objects.values_list("action", flat=True)) == [policies.REPORTED]
