"""Prompt routing at decision time: what a gateway process holds of a router, and the decision itself.

A router is one callable name over two or more deployments (its candidates). For each prompt it
predicts every candidate's quality (0..1) and sends the prompt to the cheapest candidate predicted to
answer well enough:

1. `prompt_text` takes the text to predict on out of the request (message contents, text parts, prompt),
   bounded in length so a huge prompt costs no more to route than a long one.
2. The predictor (learning.predictors) scores every candidate; an untrained router has none.
3. `decide`: among the available candidates whose prediction is at least (1 − τ) × the fallback's,
   the cheapest answers; else the fallback. Untrained, or a predictor that does not know the fallback
   (it became one after training): the fallback. The fallback unavailable: the best
   available candidate (highest predicted quality; cheapest when untrained). Nothing available: the
   fallback, and the gateway answers as for any unavailable deployment. In shadow mode the fallback
   answers (or the best available) and the decision is only recorded (`chosen`).

`decide` and `prompt_text` are pure and import nothing of Django: they run on every routed call.
`routes_of` (the gateway calls it in a thread and caches it for a few seconds) and `record_sample` read
and write the database; they import Django when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from learning.caching import VersionCache

if TYPE_CHECKING:
    import numpy

MAX_PROMPT_CHARACTERS = 4000
# Predictions are compared with this slack, so a candidate exactly at (1 − τ) × the fallback's prediction
# counts as within τ whatever the float rounding of the product.
SLACK = 1e-9
ACTIVE, SHADOW = "active", "shadow"


@dataclass(frozen=True)
class Candidate:
    deployment: str  # a deployment name of the organisation
    cost_per_1k_tokens: float  # USD, the override if set, else computed; math.inf when unknown


class Predictor(Protocol):
    kind: str  # "ngram" | "semantic"
    needs_embedding: bool
    candidates: tuple[str, ...]

    def predict(self, text: str, embedding: numpy.ndarray | None = None) -> dict[str, float]: ...


@dataclass(frozen=True)
class Route:
    """What a gateway process caches per router name (for a few seconds)."""

    router_id: int
    organization_id: int
    name: str
    candidates: tuple[Candidate, ...]
    fallback: str  # one of the candidates' deployment names
    quality_difference: float  # τ as a fraction 0..1
    mode: str  # "active" | "shadow" (shadow: the fallback answers; the decision is only recorded)
    version: int | None  # the trained predictor's version in use; None = untrained
    predictor: Predictor | None
    embedding_deployment: str  # "" unless the semantic predictor needs a prompt embedding from it
    shadow_rate: float  # 0..1 share of calls whose other candidates are shadow-called
    shadow_tokens_per_day: int  # cap on tokens shadow calls may spend per day (0: shadow calls off)


@dataclass(frozen=True)
class Choice:
    deployment: str  # who answers this call
    chosen: str  # who the router chose (in shadow mode: who it would have chosen)
    reason: str  # in plain words
    predicted: dict[str, float]  # predicted quality per candidate (empty when untrained)


# --- The request's text ------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI text parts, Bedrock content blocks
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def prompt_text(payload: dict[str, Any]) -> str:
    """The text to predict on: the messages' text contents (OpenAI chat, Bedrock converse; a system
    prompt too), or the completion's prompt, at most MAX_PROMPT_CHARACTERS, keeping the end (the latest
    turn is what the answer is about)."""
    pieces: list[str] = []
    system = payload.get("system")
    if system is not None:
        pieces.append(_content_text(system))
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                pieces.append(_content_text(message.get("content")))
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        pieces.append(prompt)
    elif isinstance(prompt, list):
        pieces.extend(part for part in prompt if isinstance(part, str))
    text = "\n".join(piece for piece in pieces if piece)
    return text[-MAX_PROMPT_CHARACTERS:]


# --- The decision ------------------------------------------------------------------------------------------


def _cheapest(candidates: list[Candidate]) -> Candidate:
    return min(candidates, key=lambda candidate: candidate.cost_per_1k_tokens)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def _active_choice(
    route: Route, text: str, available: Callable[[str], bool], embedding: Any
) -> tuple[str, str, dict[str, float]]:
    """(chosen deployment, reason, predictions) as if the router were active."""
    up = [candidate for candidate in route.candidates if available(candidate.deployment)]
    fallback_up = any(candidate.deployment == route.fallback for candidate in up)
    if not up:
        return route.fallback, "no candidate available: the fallback answers", {}
    if route.predictor is None or (route.predictor.needs_embedding and embedding is None):
        why = "untrained" if route.predictor is None else "no prompt embedding"
        if fallback_up:
            return route.fallback, f"{why}: the fallback answers", {}
        return _cheapest(up).deployment, f"{why}, fallback unavailable: cheapest available candidate", {}
    predicted = route.predictor.predict(text, embedding)
    if not fallback_up:
        best = max(up, key=lambda candidate: predicted.get(candidate.deployment, -math.inf))
        return best.deployment, "fallback unavailable: best available candidate", predicted
    if route.fallback not in predicted:
        # A fallback chosen after training has no predicted quality to be within τ of; taking it as 0
        # would let every candidate pass and send everything to the cheapest.
        return route.fallback, "the predictor does not know the fallback: the fallback answers", predicted
    floor = (1.0 - route.quality_difference) * predicted[route.fallback] - SLACK
    good = [candidate for candidate in up if predicted.get(candidate.deployment, -math.inf) >= floor]
    if not good:  # the fallback's own prediction meets its floor unless τ < 0; kept for safety
        return route.fallback, "no candidate predicted good enough: the fallback answers", predicted
    chosen = _cheapest(good)
    if chosen.deployment == route.fallback:
        return (
            chosen.deployment,
            "no cheaper candidate predicted good enough: the fallback answers",
            predicted,
        )
    reason = f"predicted cheapest within {_percent(route.quality_difference)} of the fallback"
    return chosen.deployment, reason, predicted


def decide(
    route: Route, text: str, available: Callable[[str], bool], embedding: numpy.ndarray | None = None
) -> Choice:
    """Who answers this prompt, and why (see the module's docstring). Pure; never raises for a
    candidate missing from the predictions (a candidate added after training counts as unpredicted)."""
    chosen, reason, predicted = _active_choice(route, text, available, embedding)
    if route.mode != SHADOW:
        return Choice(chosen, chosen, reason, predicted)
    if available(route.fallback) or not any(available(c.deployment) for c in route.candidates):
        return Choice(
            route.fallback, chosen, f"shadow mode: the fallback answers; would have: {reason}", predicted
        )
    # The fallback is down: the best available answers, exactly as the active decision would without it.
    return Choice(chosen, chosen, f"shadow mode, {reason}", predicted)


# --- Reading routers (the gateway calls these in a thread) --------------------------------------------------

MAX_CACHED_PREDICTORS = 256
_predictors: VersionCache[Predictor] = VersionCache(MAX_CACHED_PREDICTORS)


def cached_predictor(router_id: int, version: int, load: Callable[[], Predictor]) -> Predictor:
    """The stored predictor of (router, version), loaded once per process: a version never changes, so
    a refresh of the routes does not read or decode it again."""
    return _predictors.get_or_load((router_id, version), load)


def routes_of(organization_id: int) -> dict[str, Route]:
    """Every router of the organisation by name, with its active predictor loaded (from the process
    cache when already loaded). Sync: reads the database and the object store."""
    from learning.router_service import routes_of as read_routes

    return read_routes(organization_id)


def record_sample(router_id: int, request_id: str, prompt: str, answers: dict[str, dict[str, Any]]) -> None:
    """Store the answers of one shadow-called request (the served answer among them) and queue their
    judging, so they become training targets. `answers`: deployment name -> {"text", "prompt_tokens",
    "completion_tokens", "latency_ms", "status"}. Personal data is masked as the organisation masks its
    invocation logs. Sync; a second record of the same request is ignored."""
    from learning.router_service import record_sample as store_sample

    store_sample(router_id, request_id, prompt, answers)
