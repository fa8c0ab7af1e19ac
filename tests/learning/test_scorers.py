"""Scorers: exact match, regular expression, valid JSON (against a schema), cosine similarity by an
embeddings deployment, and an LLM judge whose unparseable verdicts are counted, never guessed; specs
refused by the field that is wrong."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from learning import scorers
from learning.scorers import Item, Score

PROMPT = [{"role": "user", "content": "Capital of France?"}]


def score(scorer: scorers.Scorer, answer: str, reference: str | None = "Paris", replies: Any = None) -> Score:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def ask(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        asked.append((route, payload))
        return replies(route, payload) if replies else (500, {})

    return asyncio.run(scorer.score(Item(PROMPT, reference, answer), ask))


def test_exact_match_compares_with_the_reference_ends_trimmed() -> None:
    assert score(scorers.ExactMatch("exact"), " Paris\n").value == 1.0
    assert score(scorers.ExactMatch("exact"), "paris").value == 0.0
    assert score(scorers.ExactMatch("exact", ignore_case=True), "paris").value == 1.0


def test_exact_match_without_a_reference_is_not_scored() -> None:
    verdict = score(scorers.ExactMatch("exact"), "Paris", reference=None)
    assert verdict.value is None and "no reference" in verdict.note


def test_a_regex_is_searched_in_the_answer() -> None:
    assert score(scorers.Regex("regex", r"\bParis\b"), "It is Paris.").value == 1.0
    assert score(scorers.Regex("regex", r"\bParis\b"), "It is Lyon.").value == 0.0


def test_a_regex_that_backtracks_without_end_gives_up_unscored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scorers, "REGEX_TIMEOUT_SECONDS", 0.2)
    # (a|aa)+$ against a's and a final "!" tries every way of splitting the a's: exponential in re
    verdict = score(scorers.Regex("regex", r"(a|aa)+$"), "a" * 36 + "!")
    assert verdict.value is None and "more than 0.2 s" in verdict.note


def test_a_schema_pattern_that_backtracks_without_end_gives_up_unscored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scorers, "REGEX_TIMEOUT_SECONDS", 0.2)
    schema = {"type": "object", "properties": {"city": {"type": "string", "pattern": "(a|aa)+$"}}}
    verdict = score(scorers.ValidJson("json", schema), json.dumps({"city": "a" * 36 + "!"}))
    assert verdict.value is None and "more than 0.2 s" in verdict.note


def test_a_schema_pattern_still_decides_validity() -> None:
    schema = {"type": "string", "pattern": "^[A-Z]", "patternProperties": {}}
    keys = {"type": "object", "patternProperties": {"^n": {"type": "integer"}}}
    assert score(scorers.ValidJson("json", schema), '"Paris"').value == 1.0
    assert score(scorers.ValidJson("json", schema), '"paris"').value == 0.0
    assert score(scorers.ValidJson("json", keys), '{"n1": 3}').value == 1.0
    assert score(scorers.ValidJson("json", keys), '{"n1": "three"}').value == 0.0


def test_valid_json_with_and_without_a_schema() -> None:
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    assert score(scorers.ValidJson("json"), '{"city": "Paris"}').value == 1.0
    assert score(scorers.ValidJson("json"), '```json\n{"city": 1}\n```').value == 1.0
    assert score(scorers.ValidJson("json"), "Paris").value == 0.0
    wrong = score(scorers.ValidJson("json", schema), '{"city": 1}')
    assert wrong.value == 0.0 and "at city" in wrong.note
    assert score(scorers.ValidJson("json", schema), '{"city": "Paris"}').value == 1.0


def embeddings(vectors: list[list[float]]) -> Any:
    def reply(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert route == "embeddings" and payload["model"] == "minilm"
        data = [{"index": i, "embedding": v} for i, v in reversed(list(enumerate(vectors)))]
        return 200, {"data": data, "usage": {"prompt_tokens": 6, "total_tokens": 6}}

    return reply


def test_similarity_is_the_cosine_of_the_two_embeddings() -> None:
    verdict = score(scorers.Similarity("similarity", "minilm"), "Paris", replies=embeddings([[1, 0], [1, 1]]))
    assert verdict.value == pytest.approx(0.707107, abs=1e-6)
    assert verdict.tokens == 6


def test_similarity_of_a_failed_embeddings_call_is_not_scored() -> None:
    def refused(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 429, {"error": {"message": "Rate limit reached"}}

    verdict = score(scorers.Similarity("similarity", "minilm"), "Paris", replies=refused)
    assert verdict.value is None and "429: Rate limit reached" in verdict.note


def judge_says(text: str) -> Any:
    def reply(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert route == "chat.completions" and payload["model"] == "judge"
        content = payload["messages"][0]["content"]
        assert "Capital of France?" in content and "Assistant's answer:\nLyon" in content
        choice = {"message": {"role": "assistant", "content": text}}
        return 200, {"choices": [choice], "usage": {"total_tokens": 90}}

    return reply


def test_the_judge_reads_a_score_and_a_reason() -> None:
    verdict = score(
        scorers.Judge("judge", "judge"), "Lyon",
        replies=judge_says('Sure! {"score": 2, "reason": "Lyon is not the capital."}'),
    )  # fmt: skip
    assert (verdict.value, verdict.note, verdict.tokens) == (2.0, "Lyon is not the capital.", 90)


@pytest.mark.parametrize(
    "text", ["I'd say 8/10", '{"score": 11, "reason": "x"}', '{"score": "8"}', '{"score": true}', ""]
)
def test_an_unparseable_judgement_is_counted_not_guessed(text: str) -> None:
    verdict = score(scorers.Judge("judge", "judge"), "Lyon", replies=judge_says(text))
    assert verdict.value is None and verdict.note.startswith("Unparseable judgement")


def test_an_edited_rubric_is_filled_without_touching_other_braces() -> None:
    item = Item(PROMPT, "Paris", "Lyon")
    filled = scorers.fill_rubric('Q: {prompt}\nA: {answer}\nRef: {reference}\n{"score": n}', item)
    assert filled == 'Q: user: Capital of France?\nA: Lyon\nRef: Paris\n{"score": n}'


def test_placeholders_inside_the_filled_texts_stay_as_written() -> None:
    item = Item([{"role": "user", "content": "What does {answer} mean in a template?"}], "{prompt}", "Lyon")
    filled = scorers.fill_rubric("Q: {prompt}\nA: {answer}\nRef: {reference}", item)
    assert filled == "Q: user: What does {answer} mean in a template?\nA: Lyon\nRef: {prompt}"


def test_specs_get_unique_names() -> None:
    specs = scorers.check_specs([{"kind": "regex", "pattern": "a"}, {"kind": "regex", "pattern": "b"}])
    assert [s["name"] for s in specs] == ["regex", "regex-2"]


@pytest.mark.parametrize(
    ("specs", "field"),
    [
        ([], "scorers"),
        ([{"kind": "vibes"}], "scorers[0].kind"),
        ([{"kind": ["regex"]}], "scorers[0].kind"),
        ([{"kind": {"regex": 1}}], "scorers[0].kind"),
        ([{"kind": "exact_match"}, {"kind": "regex", "pattern": "("}], "scorers[1].pattern"),
        ([{"kind": "json", "schema": {"type": 5}}], "scorers[0].schema"),
        ([{"kind": "similarity"}], "scorers[0].deployment"),
        ([{"kind": "judge", "deployment": "j", "rubric": "no placeholder"}], "scorers[0].rubric"),
        ([{"kind": "regex", "pattern": "a", "flags": "i"}], "scorers[0].flags"),
        ([{"kind": "regex", "pattern": "a", "name": "Bad Name"}], "scorers[0].name"),
    ],
)
def test_a_bad_spec_is_refused_naming_its_field(specs: Any, field: str) -> None:
    with pytest.raises(scorers.SpecError) as refused:
        scorers.check_specs(specs)
    assert refused.value.field == field
