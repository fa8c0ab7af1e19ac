"""What one LoRA training run is: its hyperparameters, with defaults, checked before anything starts.

Pure data: the tuning job keeps a run's spec as JSON, the CPU trainer receives it as JSON, and a GPU Job
would receive the same. `TrainingSpec.from_dict` refuses a bad value with a `SpecError` that names the
field and says what would be accepted, so an API can answer 400 with it.

The defaults are the usual starting point for a small instruction-tuned student: LoRA rank 16 (alpha 32,
so the adapter's scale is 2) on every linear layer, dropout 0.05, learning rate 2e-4 with a linear decay,
one epoch, sequences up to 512 tokens.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer but the output head
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")


class SpecError(ValueError):
    """A value a run cannot start with; `field` is which (`rank`, `target_modules[1]`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.args[0]}"


@dataclass(frozen=True)
class TrainingSpec:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    learning_rate: float = 2e-4
    epochs: int = 1
    max_seq_length: int = 512
    batch_size: int = 4
    gradient_accumulation: int = 1
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps between checkpoints (a cancelled run resumes from the last)

    @classmethod
    def from_dict(cls, data: Any) -> TrainingSpec:
        """A spec from JSON-like data: missing fields take their defaults, unknown ones are refused."""
        if not isinstance(data, dict):
            raise SpecError("hyperparameters", "The hyperparameters are an object of named values.")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            names = ", ".join(sorted(known))
            raise SpecError(unknown[0], f"Not a hyperparameter; the known ones are {names}.")
        values: dict[str, Any] = dict(data)
        for name, low, high in _INTEGERS:
            if name in values:
                values[name] = _integer(name, values[name], low, high)
        for name, bottom, top, open_bottom in _NUMBERS:
            if name in values:
                values[name] = _number(name, values[name], bottom, top, open_bottom)
        if "target_modules" in values:
            values["target_modules"] = _target_modules(values["target_modules"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        return data

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation

    def total_steps(self, rows: int) -> int:
        """Optimizer steps for `rows` training rows (the last, partial batch of an epoch counts)."""
        per_epoch = math.ceil(math.ceil(rows / self.batch_size) / self.gradient_accumulation)
        return per_epoch * self.epochs


# (field, lowest, highest) of the whole-number hyperparameters.
_INTEGERS = (
    ("rank", 1, 256),
    ("alpha", 1, 1024),
    ("epochs", 1, 100),
    ("max_seq_length", 16, 32768),
    ("batch_size", 1, 256),
    ("gradient_accumulation", 1, 1024),
    ("seed", 0, 2**32 - 1),
    ("checkpoint_every", 1, 1_000_000),
)
# (field, lowest, highest, whether the lowest itself is refused).
_NUMBERS = (
    ("dropout", 0.0, 0.9, False),
    ("learning_rate", 0.0, 1.0, True),
)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    # bool is an int in Python; true is not a rank.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"A whole number from {low} to {high}, not {value!r:.40}.")
    if not low <= value <= high:
        raise SpecError(name, f"A whole number from {low} to {high}; {value} is outside.")
    return value


def _number(name: str, value: Any, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(name, f"A number from {low:g} to {high:g}, not {value!r:.40}.")
    if value > high or value < low or (low_open and value == low):
        above = "above" if low_open else "from"
        raise SpecError(name, f"A number {above} {low:g} up to {high:g}; {value:g} is outside.")
    return float(value)


def _target_modules(value: Any) -> str | tuple[str, ...]:
    if value == ALL_LINEAR:
        return ALL_LINEAR
    if not isinstance(value, list | tuple) or not value or len(value) > 64:
        raise SpecError(
            "target_modules", f"'{ALL_LINEAR}' or a list of 1 to 64 module names (such as q_proj, v_proj)."
        )
    for index, name in enumerate(value):
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise SpecError(f"target_modules[{index}]", f"Not a module name: {name!r:.40}.")
    return tuple(value)
