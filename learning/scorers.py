"""Scorers: how good one answer is, as a number, or None with the reason it could not be scored.

An evaluation names its scorers as a list of specs (JSON objects), checked by `check_specs` when it is
created and built by `build` when it runs:
    {"kind": "exact_match", "ignore_case"?: bool}     1 when the answer equals the reference (ends trimmed)
    {"kind": "regex", "pattern": str}                 1 when the pattern is found in the answer
    {"kind": "json", "schema"?: object}               1 when the answer is JSON (valid against the schema)
    {"kind": "similarity", "deployment": str}         cosine of the answer's and the reference's embeddings
    {"kind": "judge", "deployment": str, "rubric"?: str}   1 to 10, from a judge deployment's JSON verdict
Each may carry a "name" (default: its kind, numbered when repeated), the key of its scores.

The first three are 0-or-1 scores (their interval is Wilson's); similarity and the judge are graded.
The two that need a model ask the gateway through `Ask` (learning.evaluations passes the gateway's own
path), so their tokens are metered like the answers'. A judgement that does not parse as
{"score": 1–10, "reason": "…"} scores None and says so: it is counted, never guessed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import regex

from learning.choices import ScorerKind

# (route, payload) → (HTTP status, JSON answer); the gateway's own path in production.
Ask = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]

BINARY_KINDS = frozenset({ScorerKind.EXACT_MATCH, ScorerKind.REGEX, ScorerKind.JSON})
# The range of each kind's scores.
BOUNDS: dict[str, tuple[float, float]] = {
    ScorerKind.EXACT_MATCH: (0.0, 1.0),
    ScorerKind.REGEX: (0.0, 1.0),
    ScorerKind.JSON: (0.0, 1.0),
    ScorerKind.SIMILARITY: (-1.0, 1.0),
    ScorerKind.JUDGE: (1.0, 10.0),
}
MAX_PATTERN = 1000
PLACEHOLDER = re.compile(r"\{(prompt|reference|answer)\}")
REGEX_TIMEOUT_SECONDS = 1.0  # a search of one answer; far above what a sane pattern needs
MAX_RUBRIC = 8000
JUDGE_MAX_TOKENS = 200
DEFAULT_RUBRIC = """You are grading an assistant's answer to a user's request.

Request:
{prompt}

Reference answer (may be empty):
{reference}

Assistant's answer:
{answer}

Rate the assistant's answer from 1 (useless or wrong) to 10 (correct, complete and clear).
Reply with only a JSON object, nothing else:
{"score": <an integer from 1 to 10>, "reason": "<one sentence>"}"""


@dataclass(frozen=True)
class Score:
    value: float | None
    note: str = ""
    tokens: int = 0  # what scoring spent (the judge's and the embeddings' tokens)


@dataclass(frozen=True)
class Item:
    """What a scorer sees of one record and one answer."""

    messages: list[dict[str, str]]
    reference: str | None
    answer: str


class SpecError(ValueError):
    """A scorer spec that cannot run; `field` is where (scorers[1].pattern)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


def _usage_tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage") or {}
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)


class Scorer:
    kind: str = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def binary(self) -> bool:
        return self.kind in BINARY_KINDS

    async def score(self, item: Item, ask: Ask) -> Score:
        raise NotImplementedError


class ExactMatch(Scorer):
    kind = ScorerKind.EXACT_MATCH

    def __init__(self, name: str, ignore_case: bool = False) -> None:
        super().__init__(name)
        self.ignore_case = ignore_case

    async def score(self, item: Item, ask: Ask) -> Score:
        if item.reference is None:
            return Score(None, "The record has no reference answer to match.")
        answer, reference = item.answer.strip(), item.reference.strip()
        if self.ignore_case:
            answer, reference = answer.casefold(), reference.casefold()
        return Score(1.0 if answer == reference else 0.0)


class Regex(Scorer):
    """A search for the pattern in the answer. The pattern is the customer's and the answer the model's,
    so a pattern that backtracks without end (`(a|aa)+$`) would hold the worker's event loop, and every
    worker the evaluation is resumed on, for ever: the `regex` module's search gives up after
    REGEX_TIMEOUT_SECONDS, and the item is left unscored with a note."""

    kind = ScorerKind.REGEX

    def __init__(self, name: str, pattern: str) -> None:
        super().__init__(name)
        self.pattern = regex.compile(pattern)

    async def score(self, item: Item, ask: Ask) -> Score:
        try:
            found = self.pattern.search(item.answer, timeout=REGEX_TIMEOUT_SECONDS)
        except TimeoutError:
            return Score(
                None,
                f"The pattern took more than {REGEX_TIMEOUT_SECONDS} s on this answer; "
                "simplify its nested repetitions.",
            )
        return Score(1.0 if found else 0.0)


def strip_code_fence(text: str) -> str:
    """The inside of a ```json … ``` block that is the whole answer; the answer as is otherwise."""
    match = re.fullmatch(r"\s*```[A-Za-z]*\n?(.*?)\n?```\s*", text, flags=re.DOTALL)
    return match.group(1) if match else text


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """JSON schema's `pattern`, searched with a timeout (see Regex)."""
    if validator.is_type(instance, "string") and not regex.search(
        pattern, instance, timeout=REGEX_TIMEOUT_SECONDS
    ):
        yield jsonschema.ValidationError(f"{instance!r:.80} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    """JSON schema's `patternProperties`, searched with a timeout (see Regex)."""
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        for key, value in instance.items():
            if regex.search(pattern, key, timeout=REGEX_TIMEOUT_SECONDS):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


# The schema is the customer's and the answer the model's: its patterns get the regex scorer's timeout.
TimedValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)


class ValidJson(Scorer):
    kind = ScorerKind.JSON

    def __init__(self, name: str, schema: dict[str, Any] | None = None) -> None:
        super().__init__(name)
        self.validator = TimedValidator(schema) if schema is not None else None

    async def score(self, item: Item, ask: Ask) -> Score:
        try:
            value = json.loads(strip_code_fence(item.answer))
        except ValueError as error:
            return Score(0.0, f"Not JSON: {error.args[0]}")
        if self.validator is not None:
            try:
                problem = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
            except TimeoutError:
                return Score(
                    None,
                    f"A pattern of the schema took more than {REGEX_TIMEOUT_SECONDS} s on this answer; "
                    "simplify its nested repetitions.",
                )
            if problem is not None:
                where = "/".join(str(part) for part in problem.absolute_path) or "(the root)"
                return Score(0.0, f"Not valid against the schema at {where}: {problem.message:.200}")
        return Score(1.0)


def cosine(left: list[float], right: list[float]) -> float | None:
    """The cosine of two vectors; None when either is all zeros or their lengths differ."""
    if len(left) != len(right) or not left:
        return None
    dot = sum(a * b for a, b in zip(left, right, strict=True))
    norms = math.sqrt(sum(a * a for a in left)) * math.sqrt(sum(b * b for b in right))
    return dot / norms if norms else None


class Similarity(Scorer):
    kind = ScorerKind.SIMILARITY

    def __init__(self, name: str, deployment: str) -> None:
        super().__init__(name)
        self.deployment = deployment

    async def score(self, item: Item, ask: Ask) -> Score:
        if item.reference is None:
            return Score(None, "The record has no reference answer to compare with.")
        status, answer = await ask(
            "embeddings", {"model": self.deployment, "input": [item.answer or " ", item.reference or " "]}
        )
        tokens = _usage_tokens(answer)
        if status != 200:
            return Score(None, f"The embeddings deployment answered {status}: {error_text(answer)}", tokens)
        try:
            vectors = [row["embedding"] for row in sorted(answer["data"], key=lambda row: row["index"])]
            value = cosine(vectors[0], vectors[1])
        except (KeyError, IndexError, TypeError):
            return Score(None, "The embeddings deployment's answer has no two embeddings.", tokens)
        if value is None:
            return Score(None, "The embeddings cannot be compared (zero or of different lengths).", tokens)
        return Score(round(value, 6), tokens=tokens)


def error_text(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:300]
    return "no message"


def parse_judgement(text: str) -> tuple[int, str] | None:
    """(score, reason) from a judge's answer: the JSON object in it (a code fence or text around it is
    tolerated) with an integer score from 1 to 10 and a reason string; None for anything else."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        verdict = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(verdict, dict):
        return None
    score, reason = verdict.get("score"), verdict.get("reason", "")
    if isinstance(score, float) and score.is_integer():
        score = int(score)
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10:
        return None
    if not isinstance(reason, str):
        return None
    return score, reason.strip()[:1000]


def fill_rubric(rubric: str, item: Item) -> str:
    """The rubric with {prompt}, {reference} and {answer} filled in, in one pass: braces elsewhere (as in
    the JSON the rubric asks for) stay as written, and so does a placeholder inside a filled text (a prompt
    that mentions "{answer}" is not given the answer)."""
    values = {
        "prompt": "\n".join(f"{m['role']}: {m['content']}" for m in item.messages),
        "reference": item.reference or "",
        "answer": item.answer,
    }
    return PLACEHOLDER.sub(lambda found: values[found[1]], rubric)


class Judge(Scorer):
    kind = ScorerKind.JUDGE

    def __init__(self, name: str, deployment: str, rubric: str = DEFAULT_RUBRIC) -> None:
        super().__init__(name)
        self.deployment = deployment
        self.rubric = rubric

    async def score(self, item: Item, ask: Ask) -> Score:
        payload = {
            "model": self.deployment,
            "messages": [{"role": "user", "content": fill_rubric(self.rubric, item)}],
            "max_tokens": JUDGE_MAX_TOKENS,
            "temperature": 0,
        }
        status, answer = await ask("chat.completions", payload)
        tokens = _usage_tokens(answer)
        if status != 200:
            return Score(None, f"The judge deployment answered {status}: {error_text(answer)}", tokens)
        try:
            text = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            text = ""
        verdict = parse_judgement(text)
        if verdict is None:
            return Score(None, f"Unparseable judgement: {text.strip()[:300]!r}", tokens)
        return Score(float(verdict[0]), verdict[1], tokens)


# --- Specs -------------------------------------------------------------------------------------------------

_OPTIONS: dict[str, set[str]] = {
    ScorerKind.EXACT_MATCH: {"ignore_case"},
    ScorerKind.REGEX: {"pattern"},
    ScorerKind.JSON: {"schema"},
    ScorerKind.SIMILARITY: {"deployment"},
    ScorerKind.JUDGE: {"deployment", "rubric"},
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def _holds_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character in any string or key: PostgreSQL's jsonb, where the
    evaluation keeps its specs, refuses one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _check_one(spec: Any, field: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise SpecError(field, "Each scorer is an object with a kind.")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in _OPTIONS:  # a list or object as kind is not hashable
        raise SpecError(f"{field}.kind", f"The kind must be one of {', '.join(_OPTIONS)}, not {kind!r:.40}.")
    unknown = sorted(set(spec) - _OPTIONS[kind] - {"kind", "name"})
    if unknown:
        raise SpecError(f"{field}.{unknown[0]}", f"A {kind} scorer takes no '{unknown[0]}'.")
    for key, value in spec.items():
        if _holds_nul(value):
            raise SpecError(f"{field}.{key}", "Must not contain a NUL character (0x00); remove it.")
    if "name" in spec and (not isinstance(spec["name"], str) or not _NAME.fullmatch(spec["name"])):
        raise SpecError(f"{field}.name", "A name is 1 to 40 lowercase letters, digits, '-' or '_'.")
    if kind == ScorerKind.EXACT_MATCH and not isinstance(spec.get("ignore_case", False), bool):
        raise SpecError(f"{field}.ignore_case", "ignore_case is true or false.")
    if kind == ScorerKind.REGEX:
        pattern = spec.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise SpecError(
                f"{field}.pattern", f"A regex scorer needs a pattern of 1 to {MAX_PATTERN} characters."
            )
        try:
            regex.compile(pattern)
        except regex.error as error:
            raise SpecError(f"{field}.pattern", f"The pattern does not compile: {error}.") from None
    if kind == ScorerKind.JSON and "schema" in spec:
        try:
            jsonschema.Draft202012Validator.check_schema(spec["schema"])
        except jsonschema.SchemaError as error:
            raise SpecError(f"{field}.schema", f"Not a JSON schema: {error.message:.200}.") from None
    needs_deployment = kind in (ScorerKind.SIMILARITY, ScorerKind.JUDGE)
    if needs_deployment and (not isinstance(spec.get("deployment"), str) or not spec["deployment"]):
        raise SpecError(f"{field}.deployment", f"A {kind} scorer names the deployment that scores.")
    if kind == ScorerKind.JUDGE and "rubric" in spec:
        rubric = spec["rubric"]
        if not isinstance(rubric, str) or "{answer}" not in rubric or len(rubric) > MAX_RUBRIC:
            raise SpecError(
                f"{field}.rubric",
                f"A rubric is at most {MAX_RUBRIC} characters and contains {{answer}} where the answer goes.",
            )
    return dict(spec)


def check_specs(specs: Any) -> list[dict[str, Any]]:
    """The specs with a unique name each, or SpecError naming the field (scorers[1].pattern)."""
    if not isinstance(specs, list) or not specs:
        raise SpecError("scorers", "Choose at least one scorer.")
    if len(specs) > 10:
        raise SpecError("scorers", "At most 10 scorers an evaluation.")
    checked, names = [], set()
    for index, spec in enumerate(specs):
        spec = _check_one(spec, f"scorers[{index}]")
        name = spec.get("name") or spec["kind"]
        if name in names and "name" in spec:
            raise SpecError(f"scorers[{index}].name", f"Two scorers are named '{name}'.")
        base, number = name, 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.add(name)
        checked.append({**spec, "name": name})
    return checked


def deployments_of(specs: list[dict[str, Any]]) -> set[str]:
    """The deployments the scorers call."""
    return {spec["deployment"] for spec in specs if "deployment" in spec}


def build(specs: list[dict[str, Any]]) -> list[Scorer]:
    """Scorers from checked specs."""
    scorers: list[Scorer] = []
    for spec in specs:
        name, kind = spec["name"], spec["kind"]
        if kind == ScorerKind.EXACT_MATCH:
            scorers.append(ExactMatch(name, spec.get("ignore_case", False)))
        elif kind == ScorerKind.REGEX:
            scorers.append(Regex(name, spec["pattern"]))
        elif kind == ScorerKind.JSON:
            scorers.append(ValidJson(name, spec.get("schema")))
        elif kind == ScorerKind.SIMILARITY:
            scorers.append(Similarity(name, spec["deployment"]))
        else:
            scorers.append(Judge(name, spec["deployment"], spec.get("rubric") or DEFAULT_RUBRIC))
    return scorers
