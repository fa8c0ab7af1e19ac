"""What the gateway accepts of the engine's scoring APIs: `/v1/rerank` (Jina's and Cohere's rerank shape)
and `/v1/score` (pairs of texts scored), for deployments of reranker and cross-encoder cards.

The allow-list of the other engine routes is serving.gateway.request_fields; this is its counterpart for
the two scoring routes, whose inputs are lists of texts rather than a prompt, and it answers in the same
`Problem`s. Checked before anything is spent:

1. A field the route does not accept is refused, as elsewhere. vLLM's scoring requests also take
   `chat_template_kwargs` and `instruction` (a template for every pair), `priority`, `request_id`,
   `cache_salt` and `mm_processor_kwargs`: fields that change what the engine runs or who is served
   first, so not forwarded.
2. The texts: `query` a non-empty string; `documents` a string or a non-empty array of strings, at most
   MAX_DOCUMENTS (each document is one engine request for a cross-encoder, so the count, not only the
   body's size, is what a request costs). Score takes one pair of inputs, `queries` and `documents`
   (vLLM's current names) or `text_1` and `text_2` (its older ones), each a string or an array of
   strings, paired one to one, one to many or many to many, as the engine scores them; any other
   count is refused here rather than by the engine.
   Only text: the engine's multimodal items would fetch media for cards that read none.

Pure: plain values in, a request_fields.Problem or None out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.gateway.request_fields import UNKNOWN, Problem, Rule, _boolean, _text, whole

# Texts on one side of a request: Cohere's recommended maximum for one rerank request (vLLM sets none).
MAX_DOCUMENTS = 1000
ROUTES = frozenset({"rerank", "score"})
# Score's two accepted pairs of inputs, in the order they are looked for.
PAIRS = (("queries", "documents"), ("text_1", "text_2"))


_COMMON: dict[str, Rule | None] = {
    "model": None, "user": _text, "truncate_prompt_tokens": whole(-1), "use_activation": _boolean,
}  # fmt: skip
FIELDS: dict[str, dict[str, Rule | None]] = {
    "rerank": {**_COMMON, "query": None, "documents": None, "top_n": whole(0)},
    "score": {**_COMMON, "queries": None, "documents": None, "text_1": None, "text_2": None},
}
# The fields a request must have, as the API documentation states them.
REQUIRED = {"rerank": ("model", "query", "documents"), "score": ("model",)}


def check(route: str, payload: Mapping[str, Any]) -> Problem | None:
    """The first problem of a rerank or score request, or None when it may be sent as it is.

    In order: a field the route does not accept; `model`; the texts; then each other field's value."""
    fields = FIELDS[route]
    for name in payload:
        if name not in fields:
            return Problem(name, UNKNOWN)
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return Problem("model", "must be the name of one of your deployments")
    problem = _rerank_texts(payload) if route == "rerank" else _score_texts(payload)
    if problem:
        return problem
    for name, value in payload.items():
        rule = fields[name]
        if rule is not None and value is not None and (wrong := rule(value)):
            return Problem(name, wrong)
    return None


def _texts(value: Any) -> str | None:
    """What is wrong with one side of the texts to score (None when it is a string or a non-empty
    array of at most MAX_DOCUMENTS strings)."""
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        return "must be a string or a non-empty array of strings"
    if len(value) > MAX_DOCUMENTS:
        return (
            f"must hold at most {MAX_DOCUMENTS} texts (this request has {len(value)}); "
            "split it into several requests"
        )
    return None


def _rerank_texts(payload: Mapping[str, Any]) -> Problem | None:
    query = payload.get("query")
    if not isinstance(query, str) or not query:
        return Problem("query", "must be a non-empty string")
    problem = _texts(payload.get("documents"))
    return Problem("documents", problem) if problem else None


def _score_texts(payload: Mapping[str, Any]) -> Problem | None:
    """One pair of inputs, each side well formed, in counts the engine pairs (1:1, 1:N, N:N)."""
    present = [pair for pair in PAIRS if any(name in payload for name in pair)]
    if not present:
        return Problem("queries", "must be given, with 'documents' (or 'text_1' with 'text_2')")
    first, second = present[0]
    if len(present) > 1:
        other = next(name for name in present[1] if name in payload)
        return Problem(other, f"cannot be combined with '{first}' and '{second}': send one pair")
    for name in (first, second):
        if name not in payload:
            return Problem(name, f"must be given with '{first if name == second else second}'")
        problem = _texts(payload[name])
        if problem:
            return Problem(name, problem)
    left, right = (1 if isinstance(payload[name], str) else len(payload[name]) for name in (first, second))
    if left not in (1, right):
        return Problem(first, f"must hold one text, or as many as '{second}' ({right}); it holds {left}")
    return None


def repeated_characters(payload: Mapping[str, Any]) -> int:
    """The characters of a request's one query that the engine reads again with each further text it
    is paired with (a cross-encoder reads every pair whole), for the admission estimate: a rerank of
    1,000 documents reads its query 1,000 times."""
    for one, many in (("query", "documents"), *PAIRS):
        single, texts = payload.get(one), payload.get(many)
        if isinstance(single, list) and len(single) == 1:
            single = single[0]
        if isinstance(single, str) and isinstance(texts, list) and len(texts) > 1:
            return len(single) * (len(texts) - 1)
    return 0
