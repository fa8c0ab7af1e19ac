"""Datasets as data: uploads in OpenAI chat or Bedrock conversation format, refusals that name the line
and the field, a split fixed by its seed, de-duplication, and records made from logged calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from learning import datasets


def lines(*records: Any) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ],
    "metadata": {"topic": "geography"},
}
BEDROCK = {
    "schemaVersion": "bedrock-conversation-2024",
    "system": [{"text": "Be brief."}],
    "messages": [
        {"role": "user", "content": [{"text": "Capital of "}, {"text": "Italy?"}]},
        {"role": "assistant", "content": [{"text": "Rome"}]},
    ],
}


def test_an_openai_chat_line_becomes_a_prompt_and_its_reference() -> None:
    [record] = datasets.parse_upload(lines(OPENAI))
    assert record == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "reference": "Paris",
        "metadata": {"topic": "geography"},
    }


def test_a_bedrock_conversation_line_becomes_the_same_shape() -> None:
    [record] = datasets.parse_upload(lines(BEDROCK))
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Italy?"},
    ]
    assert record["reference"] == "Rome"


def test_a_prompt_without_an_answer_has_no_reference() -> None:
    [record] = datasets.parse_upload(lines({"messages": [{"role": "user", "content": "Hi"}]}))
    assert record["reference"] is None and record["metadata"] == {}


def test_openai_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    [record] = datasets.parse_upload(lines({"messages": [{"role": "user", "content": parts}]}))
    assert record["messages"][0]["content"] == "Hello"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", "Line 2: line: is not JSON"),
        ({"messages": []}, "Line 2: messages: must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "Line 2: messages[0].role: must be one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "Line 2: messages[0].content: must be a string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "Line 2: messages[0].content[0]: must be a text part",
        ),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "Line 2: messages: must end with a user"),
        (
            {"messages": [{"role": "user", "content": "x"}], "metadata": []},
            "Line 2: metadata: must be a JSON object",
        ),
        ({**BEDROCK, "schemaVersion": "v9"}, "Line 2: schemaVersion: must be 'bedrock-conversation-2024'"),
        ({**BEDROCK, "system": "Be brief."}, "Line 2: system: must be a list of text blocks"),
        ({**BEDROCK, "messages": 5}, "Line 2: messages: must be a non-empty list"),
        ({**BEDROCK, "messages": True}, "Line 2: messages: must be a non-empty list"),
    ],
)
def test_a_bad_line_is_refused_naming_its_number_and_field(line: Any, error: str) -> None:
    with pytest.raises(datasets.UploadError) as refused:
        datasets.parse_upload(lines(OPENAI, line))
    assert refused.value.errors[0].startswith(error), refused.value.errors


def test_every_bad_line_is_reported_and_blank_lines_keep_the_numbering() -> None:
    with pytest.raises(datasets.UploadError) as refused:
        datasets.parse_upload(lines(OPENAI, "", "[]", OPENAI, "{"))
    assert [e.split(":")[0] for e in refused.value.errors] == ["Line 3", "Line 5"]


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(datasets.UploadError, match="holds no records"):
        datasets.parse_upload(b"\n\n")


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(datasets.UploadError, match="not UTF-8"):
        datasets.parse_upload(b'{"messages": "\xff"}')


def test_the_split_is_fixed_by_count_fraction_and_seed() -> None:
    first = datasets.heldout_positions(100, 0.2, seed=7)
    assert len(first) == 20
    assert datasets.heldout_positions(100, 0.2, seed=7) == first
    assert datasets.heldout_positions(100, 0.2, seed=8) != first


def test_a_small_dataset_holds_out_at_least_one_and_never_all() -> None:
    assert len(datasets.heldout_positions(3, 0.05, seed=0)) == 1
    assert len(datasets.heldout_positions(2, 0.9, seed=0)) == 1
    assert datasets.heldout_positions(1, 0.5, seed=0) == set()
    assert datasets.heldout_positions(10, 0.0, seed=0) == set()


def test_stored_records_are_numbered_and_carry_their_split() -> None:
    records = [{"messages": [{"role": "user", "content": str(n)}], "reference": None} for n in range(5)]
    stored = datasets.finish(records, 0.4, seed=1)
    assert [r["id"] for r in stored] == ["1", "2", "3", "4", "5"]
    assert sum(r["split"] == "heldout" for r in stored) == 2
    assert len(datasets.in_part(stored, "train")) == 3 and len(datasets.in_part(stored, "all")) == 5


def test_deduplication_keeps_the_first_of_equal_prompts() -> None:
    def record(text: str, reference: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": text}], "reference": reference}

    kept = datasets.deduplicate([record("Hi", "a"), record(" Hi ", "b"), record("Bye", "c")])
    assert [r["reference"] for r in kept] == ["a", "c"]


def logged(text: str, answer: str = "Paris", **fields: Any) -> dict[str, Any]:
    return {
        "id": "r1", "deployment": "chat", "time": "2026-12-01T09:00:00+00:00", "status": 200,
        "request": {"model": "chat", "messages": [{"role": "user", "content": text}]},
        "answer": {"choices": [{"message": {"role": "assistant", "content": answer}}]},
        **fields,
    }  # fmt: skip


def test_a_logged_chat_call_becomes_a_record_with_its_answer_as_reference() -> None:
    record = datasets.from_log_record(logged("Capital of France?"), with_reference=True)
    assert record is not None
    assert record["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert record["reference"] == "Paris"
    assert record["metadata"]["request_id"] == "r1"


def test_a_bedrock_answer_is_read_too() -> None:
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Rome"}]}}}
    assert datasets.answer_text(answer) == "Rome"


@pytest.mark.parametrize(
    "fields",
    [{"request": None}, {"status": 429}, {"request": {"input": "embed me"}}],
    ids=["no body kept", "failed call", "not a chat call"],
)
def test_logged_calls_that_cannot_make_a_record_are_skipped(fields: dict[str, Any]) -> None:
    assert datasets.from_log_record(logged("Hi", **fields), with_reference=True) is None


def test_a_log_selection_deduplicates_then_draws_its_sample_by_seed() -> None:
    logs = [logged(f"question {n % 30}") for n in range(60)]
    chosen = datasets.LogSelection(sample_size=10, seed=3).choose(logs)
    assert len(chosen) == 10
    assert len({r["messages"][0]["content"] for r in chosen}) == 10
    assert datasets.LogSelection(sample_size=10, seed=3).choose(logs) == chosen
    assert len(datasets.LogSelection(sample_size=100, seed=3).choose(logs)) == 30
