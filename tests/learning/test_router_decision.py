"""learning.routing.decide and prompt_text: the decision rule at τ's edges, with candidates out of
capacity, untrained, and in shadow mode. Pure: no database, a predictor with fixed predictions."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from learning.routing import Candidate, Route, decide, prompt_text


@dataclasses.dataclass
class Fixed:
    """A predictor that predicts the same qualities for every prompt."""

    predictions: dict[str, float]
    kind: str = "fixed"
    needs_embedding: bool = False
    candidates: tuple[str, ...] = ()

    def predict(self, text: str, embedding: Any = None) -> dict[str, float]:
        return dict(self.predictions)


# small < medium < large in cost; large is the fallback.
CANDIDATES = (Candidate("small", 0.1), Candidate("medium", 0.5), Candidate("large", 2.0))


def route(
    predictions: dict[str, float] | None, tau: float = 0.1, mode: str = "active", **extra: Any
) -> Route:
    return Route(
        router_id=1, organization_id=1, name="auto", candidates=CANDIDATES, fallback="large",
        quality_difference=tau, mode=mode, version=None if predictions is None else 3,
        predictor=None if predictions is None else Fixed(predictions, **extra), embedding_deployment="",
        shadow_rate=0.0, shadow_tokens_per_day=0,
    )  # fmt: skip


def everyone(name: str) -> bool:
    return True


def all_but(*down: str) -> Any:
    return lambda name: name not in down


def test_the_cheapest_candidate_within_tau_of_the_fallback_answers() -> None:
    choice = decide(route({"small": 0.5, "medium": 0.85, "large": 0.9}, tau=0.1), "hi", everyone)
    assert (choice.deployment, choice.chosen) == ("medium", "medium")  # 0.85 ≥ 0.81; small's 0.5 is not
    assert choice.reason == "predicted cheapest within 10% of the fallback"
    assert choice.predicted == {"small": 0.5, "medium": 0.85, "large": 0.9}


def test_a_prediction_exactly_at_the_floor_is_good_enough() -> None:
    choice = decide(route({"small": 0.72, "medium": 0.1, "large": 0.8}, tau=0.1), "hi", everyone)
    assert choice.deployment == "small"  # 0.72 = (1 − 0.1) × 0.8


def test_tau_zero_takes_a_cheaper_candidate_only_when_predicted_at_least_as_good() -> None:
    assert (
        decide(route({"small": 0.79, "medium": 0.0, "large": 0.8}, tau=0.0), "hi", everyone).deployment
        == "large"
    )
    assert (
        decide(route({"small": 0.8, "medium": 0.0, "large": 0.8}, tau=0.0), "hi", everyone).deployment
        == "small"
    )


def test_tau_one_always_takes_the_cheapest() -> None:
    assert (
        decide(route({"small": 0.0, "medium": 0.5, "large": 1.0}, tau=1.0), "hi", everyone).deployment
        == "small"
    )


def test_no_cheaper_candidate_good_enough_leaves_it_to_the_fallback() -> None:
    choice = decide(route({"small": 0.1, "medium": 0.2, "large": 0.9}), "hi", everyone)
    assert choice.deployment == "large" and "fallback" in choice.reason


def test_a_candidate_without_capacity_is_skipped() -> None:
    choice = decide(route({"small": 0.9, "medium": 0.9, "large": 0.9}), "hi", all_but("small"))
    assert choice.deployment == "medium"


def test_an_unavailable_fallback_hands_over_to_the_best_available_candidate() -> None:
    choice = decide(route({"small": 0.3, "medium": 0.6, "large": 0.9}), "hi", all_but("large"))
    assert choice.deployment == "medium"
    assert choice.reason == "fallback unavailable: best available candidate"


def test_with_nothing_available_the_fallback_is_named() -> None:
    choice = decide(route({"small": 0.9, "medium": 0.9, "large": 0.9}), "hi", lambda name: False)
    assert choice.deployment == "large" and "no candidate available" in choice.reason


def test_an_untrained_router_sends_everything_to_the_fallback_and_says_so() -> None:
    choice = decide(route(None), "hi", everyone)
    assert (choice.deployment, choice.reason, choice.predicted) == (
        "large",
        "untrained: the fallback answers",
        {},
    )


def test_an_untrained_router_whose_fallback_is_down_sends_to_the_cheapest_available() -> None:
    choice = decide(route(None), "hi", all_but("large", "small"))
    assert choice.deployment == "medium" and "cheapest available" in choice.reason


def test_a_semantic_predictor_without_an_embedding_leaves_it_to_the_fallback() -> None:
    choice = decide(route({"small": 1.0, "medium": 1.0, "large": 1.0}, needs_embedding=True), "hi", everyone)
    assert choice.deployment == "large" and "no prompt embedding" in choice.reason
    with_it = decide(route({"small": 1.0, "medium": 1.0, "large": 1.0}, needs_embedding=True), "hi", everyone,
                     embedding=np.zeros(3))  # fmt: skip
    assert with_it.deployment == "small"


def test_a_candidate_the_predictor_does_not_know_is_never_chosen_over_a_predicted_one() -> None:
    choice = decide(route({"medium": 0.9, "large": 0.9}), "hi", everyone)
    assert choice.deployment == "medium"


def test_a_fallback_the_predictor_does_not_know_answers_rather_than_the_cheapest() -> None:
    # Trained before large became a candidate and the fallback: there is no quality to be within τ of.
    choice = decide(route({"small": 0.3, "medium": 0.4}), "hi", everyone)
    assert choice.deployment == "large"
    assert choice.reason == "the predictor does not know the fallback: the fallback answers"


def test_shadow_mode_answers_with_the_fallback_and_records_the_decision() -> None:
    choice = decide(route({"small": 0.9, "medium": 0.9, "large": 0.9}, mode="shadow"), "hi", everyone)
    assert (choice.deployment, choice.chosen) == ("large", "small")
    assert choice.reason.startswith("shadow mode: the fallback answers")


def test_shadow_mode_with_the_fallback_down_answers_with_the_best_available() -> None:
    choice = decide(route({"small": 0.2, "medium": 0.7, "large": 0.9}, mode="shadow"), "hi", all_but("large"))
    assert (choice.deployment, choice.chosen) == ("medium", "medium")


def test_an_unknown_cost_is_treated_as_the_most_expensive() -> None:
    unknown = dataclasses.replace(
        route({"small": 0.9, "medium": 0.9, "large": 0.9}),
        candidates=(Candidate("small", math.inf), Candidate("medium", 0.5), Candidate("large", 2.0)),
    )
    assert decide(unknown, "hi", everyone).deployment == "medium"


SHAPES = [
    (
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        "Be brief.\nHi",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image_url"}]}
            ]
        },
        "Look",
    ),
    ({"system": [{"text": "Sys"}], "messages": [{"role": "user", "content": [{"text": "Q?"}]}]}, "Sys\nQ?"),
    ({"prompt": "Once upon a time"}, "Once upon a time"),
    ({"prompt": ["a", "b", 3]}, "a\nb"),
    ({"messages": "not a list", "prompt": 5}, ""),
    ({"messages": [None, {"content": None}, {"content": 7}]}, ""),
]


@pytest.mark.parametrize(("payload", "text"), SHAPES)
def test_the_prompt_text_is_taken_from_every_request_shape(payload: dict[str, Any], text: str) -> None:
    assert prompt_text(payload) == text


def test_a_huge_prompt_is_cut_to_its_end() -> None:
    text = prompt_text({"prompt": "x" * 100_000 + "the question"})
    assert len(text) == 4000 and text.endswith("the question")
