"""Task scorers for structured answers: is it JSON, which fields match, does it agree with the teacher.

At 135M scale embedding similarity cannot tell a right answer from a wrong one (wrong answers scored 0.94
cosine here), so a distilled student is judged on the task itself. An answer counts as JSON when it parses
as one object (a code fence around it is tolerated, as learning.scorers does); a field matches when its
value equals the reference's exactly; an answer agrees with the teacher when every field matches the
teacher's answer. Pure functions; the figures are fractions of the answers given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from learning.scorers import strip_code_fence


def parse_object(answer: str) -> dict[str, Any] | None:
    """The JSON object an answer is, or None."""
    try:
        value = json.loads(strip_code_fence(answer))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def field_matches(answer: str, reference: dict[str, Any], fields: Sequence[str]) -> dict[str, bool]:
    """For each field, whether the answer's value equals the reference's (False when not JSON)."""
    value = parse_object(answer)
    return {name: value is not None and name in value and value[name] == reference[name] for name in fields}


@dataclass(frozen=True)
class TaskScores:
    answers: int
    json_validity: float
    field_accuracy: dict[str, float]  # against the truth
    teacher_agreement: float  # every field as the teacher answered

    def as_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "json_validity": self.json_validity,
            "field_accuracy": self.field_accuracy,
            "teacher_agreement": self.teacher_agreement,
        }


def score_answers(
    answers: Sequence[str],
    truths: Sequence[dict[str, Any]],
    teacher: Sequence[str],
    fields: Sequence[str],
) -> TaskScores:
    """Scores of answers to the same items as `truths` (the known fields) and `teacher` (its answers)."""
    if not len(answers) == len(truths) == len(teacher) or not answers:
        raise ValueError("Score as many answers as there are truths and teacher answers, at least one.")
    count = len(answers)
    valid = sum(parse_object(answer) is not None for answer in answers)
    hits = {name: 0 for name in fields}
    agreed = 0
    for answer, truth, taught in zip(answers, truths, teacher, strict=True):
        for name, hit in field_matches(answer, truth, fields).items():
            hits[name] += hit
        taught_value = parse_object(taught)
        if taught_value is not None and all(field_matches(answer, taught_value, fields).values()):
            agreed += 1
    return TaskScores(
        answers=count,
        json_validity=valid / count,
        field_accuracy={name: hits[name] / count for name in fields},
        teacher_agreement=agreed / count,
    )
