"""A tuning job's training loss as the geometry of an inline SVG line chart: pure, from the job's
[[step, loss], …] points, so the chart is checked without a browser (as marketplace/web/charts.py's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 560, 220, 52, 16, 14, 36


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str  # tooltip and screen-reader text


@dataclass(frozen=True)
class LossChart:
    points: list[Point]
    polyline: str  # the SVG polyline's points
    first_step: int
    last_step: int
    total_steps: int
    max_loss: str
    min_loss: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    baseline: int = HEIGHT - BOTTOM
    right_edge: int = WIDTH - RIGHT


def loss_chart(points: Sequence[Sequence[float]], total_steps: int = 0) -> LossChart | None:
    """The chart of (step, loss) points, steps across (up to the run's total, so a run in progress shows
    how far it has to go) and loss up from 0; None before the first step."""
    usable = sorted((int(step), float(loss)) for step, loss in points)
    if not usable:
        return None
    last = max(total_steps, usable[-1][0], 1)
    top_loss = max(loss for _, loss in usable) or 1.0
    span_x, span_y = WIDTH - RIGHT - LEFT, HEIGHT - BOTTOM - TOP
    drawn = [
        Point(
            x=round(LEFT + span_x * step / last, 1),
            y=round(HEIGHT - BOTTOM - span_y * loss / top_loss, 1),
            label=f"Step {step}: loss {loss:.4f}",
        )
        for step, loss in usable
    ]
    return LossChart(
        points=drawn,
        polyline=" ".join(f"{point.x},{point.y}" for point in drawn),
        first_step=usable[0][0],
        last_step=usable[-1][0],
        total_steps=last,
        max_loss=f"{top_loss:.3f}",
        min_loss=f"{min(loss for _, loss in usable):.3f}",
    )
