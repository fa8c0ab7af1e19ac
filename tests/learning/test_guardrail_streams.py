"""Output checks on a stream: a masked entity never reaches the caller in pieces, wherever the stream
splits it, and a block is known before the blocked text is released."""

from __future__ import annotations

import pytest

from learning.guardrails import BLOCKED, MASKED, OUTPUT, StreamGuard, check, compile_policy

POLICY = compile_policy(
    {"personal_data": {"EMAIL": "mask", "CARD": "mask", "IBAN": "mask", "PHONE": "mask", "US_SSN": "block"},
     "words": ["project falcon"]}
)  # fmt: skip
PROSE = "The weather report for the coming days says light rain in the morning and sun later. " * 3


def released(pieces: list[str]) -> tuple[list[str], StreamGuard]:
    guard = StreamGuard(POLICY)
    out = [guard.feed(piece) for piece in pieces]
    out.append(guard.finish())
    return out, guard


@pytest.mark.parametrize(
    "entity",
    ["jane.doe@example.org", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "+44 20 7946 0958"],
)
def test_an_entity_split_at_every_position_is_masked_whole(entity: str) -> None:
    text = f"{PROSE}Contact: {entity} today. {PROSE}"
    expected = check(POLICY, text, direction=OUTPUT).text
    assert "[" in expected and entity not in expected
    start = text.index(entity)
    for split in range(start, start + len(entity) + 1):
        out, guard = released([text[:split], text[split:]])
        assert "".join(out) == expected, split
        assert guard.verdict().action == MASKED


def test_an_entity_fed_character_by_character_never_leaks_a_prefix() -> None:
    entity = "jane.doe@example.org"
    text = f"{PROSE}Write to {entity}, thanks. {PROSE}"
    expected = check(POLICY, text, direction=OUTPUT).text
    guard = StreamGuard(POLICY)
    sent = ""
    for char in text:
        sent += guard.feed(char)
        assert expected.startswith(sent)  # nothing released ever differs from the final masked text
        assert "jane" not in sent
    sent += guard.finish()
    assert sent == expected


def test_clean_text_flows_with_only_the_hold_back_window_kept() -> None:
    guard = StreamGuard(POLICY)
    sent = "".join(guard.feed(PROSE[index : index + 7]) for index in range(0, len(PROSE), 7))
    assert len(PROSE) - len(sent) <= POLICY.hold_back + 20  # at most the window and the word it cuts
    assert sent + guard.finish() == PROSE


def test_a_blocked_entity_stops_the_stream_before_it_is_released() -> None:
    text = f"{PROSE}Your SSN is 123-45-6789 and more text follows here. {PROSE}"
    guard = StreamGuard(POLICY)
    sent = ""
    for index in range(0, len(text), 5):
        sent += guard.feed(text[index : index + 5])
        if guard.blocked:
            break
    assert guard.blocked is not None and guard.blocked.action == BLOCKED
    assert guard.blocked.message == POLICY.blocked_output_message
    assert "123-45" not in sent
    assert guard.feed("more") == "" and guard.finish() == ""
    assert guard.verdict().interventions[-1].name == "US_SSN"


def test_a_blocked_phrase_split_across_pieces_is_caught() -> None:
    out, guard = released([PROSE, "about Project Fal", "con and", " more"])
    assert guard.blocked is not None
    assert "Fal" not in "".join(out)


def test_denied_topics_are_checked_at_the_end_when_given_the_answer_embedding() -> None:
    policy = compile_policy(
        {"topics": [{"name": "t", "examples": ["x"], "threshold": 0.9}], "embedding_deployment": "e"},
        topic_vectors=[[[1.0, 0.0]]],
    )
    guard = StreamGuard(policy)
    guard.feed("short")
    assert guard.finish(embedding=[1.0, 0.01]) == ""
    assert guard.blocked is not None and guard.blocked.interventions[0].kind == "topic"


def test_text_without_spaces_in_another_script_still_flows() -> None:
    text = "这是一个关于天气的很长的回答，今天早上下雨，下午晴天。" * 10
    guard = StreamGuard(POLICY)
    sent = "".join(guard.feed(text[index : index + 3]) for index in range(0, len(text), 3))
    assert len(text) - len(sent) <= POLICY.hold_back + 3
    assert sent + guard.finish() == text


def test_a_long_email_address_is_held_whole_until_it_ends() -> None:
    address = "a.very.long.local.part.of.an.address.that.keeps.going@subdomain.example-company.co.uk"
    assert len(address) > POLICY.hold_back
    text = f"{PROSE}Reply to {address} please. {PROSE}"
    out, _ = released([text[index : index + 2] for index in range(0, len(text), 2)])
    assert "".join(out) == check(POLICY, text, direction=OUTPUT).text
    assert not any("a.very" in piece for piece in out)


def test_a_long_run_without_spaces_is_not_held_whole() -> None:
    blob = "QUJD" * 2500  # 10,000 characters of base64
    guard = StreamGuard(POLICY)
    sent = "".join(guard.feed(blob[index : index + 4]) for index in range(0, len(blob), 4))
    assert len(sent) >= len(blob) - POLICY.hold_back - 400
    assert sent + guard.finish() == blob


def test_a_long_answer_with_many_entities_is_masked_as_a_whole_text_would_be() -> None:
    text = "".join(
        f"{PROSE[: 40 + n % 50]} mail user{n}@example.org, card 4111 1111 1111 1111. " for n in range(300)
    )
    out, guard = released([text[index : index + 3] for index in range(0, len(text), 3)])
    assert "".join(out) == check(POLICY, text, direction=OUTPUT).text
    assert guard.text == text
    assert len(guard.verdict().interventions) == 600


def test_the_first_digits_of_a_card_arriving_do_not_block_as_a_phone_number() -> None:
    policy = compile_policy({"personal_data": {"CARD": "mask", "PHONE": "block"}})
    text = f"{PROSE}Your card 4111 1111 1111 1111 is on file. {PROSE}"
    guard = StreamGuard(policy)
    sent = "".join(guard.feed(text[index : index + 5]) for index in range(0, len(text), 5)) + guard.finish()
    assert guard.blocked is None
    assert sent == check(policy, text, direction=OUTPUT).text
    assert [hit.name for hit in guard.verdict().interventions] == ["CARD"]
