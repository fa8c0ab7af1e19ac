"""A training run's hyperparameters: the usual LoRA defaults, and every bad value refused by its field."""

from __future__ import annotations

from typing import Any

import pytest

from learning.training.spec import ALL_LINEAR, SpecError, TrainingSpec


def refusal(data: Any) -> SpecError:
    with pytest.raises(SpecError) as refused:
        TrainingSpec.from_dict(data)
    return refused.value


def test_an_empty_spec_takes_the_usual_lora_defaults() -> None:
    spec = TrainingSpec.from_dict({})
    assert (spec.rank, spec.alpha, spec.dropout, spec.target_modules) == (16, 32, 0.05, ALL_LINEAR)
    assert (spec.learning_rate, spec.epochs, spec.max_seq_length) == (2e-4, 1, 512)


def test_a_spec_survives_a_round_trip_through_json_data() -> None:
    spec = TrainingSpec.from_dict({"rank": 8, "target_modules": ["q_proj", "v_proj"], "learning_rate": 1})
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": 16.0}, "rank"),
        ({"rank": True}, "rank"),
        ({"alpha": "32"}, "alpha"),
        ({"epochs": 0}, "epochs"),
        ({"max_seq_length": 8}, "max_seq_length"),
        ({"batch_size": None}, "batch_size"),
        ({"gradient_accumulation": -1}, "gradient_accumulation"),
        ({"seed": -1}, "seed"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": "2e-4"}, "learning_rate"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": "q_proj"}, "target_modules"),
        ({"target_modules": ["q_proj", "v proj"]}, "target_modules[1]"),
        ({"lora_rank": 16}, "lora_rank"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(data: dict[str, Any], field: str) -> None:
    assert refusal(data).field == field


def test_hyperparameters_that_are_not_an_object_are_refused() -> None:
    assert refusal([16, 32]).field == "hyperparameters"


def test_the_refusal_says_what_would_be_accepted() -> None:
    assert "from 1 to 256" in str(refusal({"rank": 512}))


def test_total_steps_count_the_last_partial_batch_of_each_epoch() -> None:
    spec = TrainingSpec(batch_size=4, gradient_accumulation=2, epochs=3)
    assert spec.total_steps(17) == 3 * 3  # 5 batches an epoch, 3 optimizer steps of up to 2 batches
