"""Quality against cost per deployment, as the geometry of an inline SVG scatter chart. Pure.

x: what the deployment's answers cost in the evaluation (USD); y: its mean score on one scorer. A point
without a mean (nothing scored yet) is left out and named in `missing`. Axes start at 0 and end at the
largest value, so a deployment up and to the left is better and cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 480, 240, 48, 16, 12, 36


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    name: str
    label: str  # for the tooltip and screen readers


@dataclass(frozen=True)
class ScatterChart:
    scorer: str
    points: list[Point]
    max_cost: float
    max_score: float
    missing: list[str] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: int = HEIGHT - BOTTOM
    right_edge: int = WIDTH - RIGHT
    top: int = TOP


def quality_cost_chart(summaries: list[dict[str, Any]], scorer: str) -> ScatterChart:
    """One point per deployment with a mean score on `scorer` (learning.results summaries)."""
    scored = [s for s in summaries if (s["scores"].get(scorer) or {}).get("mean") is not None]
    max_cost = max([s["cost_usd"] for s in scored] + [0.0]) or 1.0
    max_score = max([s["scores"][scorer]["mean"] for s in scored] + [0.0]) or 1.0
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    points = [
        Point(
            x=round(LEFT + s["cost_usd"] / max_cost * plot_width, 1),
            y=round(HEIGHT - BOTTOM - s["scores"][scorer]["mean"] / max_score * plot_height, 1),
            name=s["deployment"],
            label=f"{s['deployment']}: {scorer} {s['scores'][scorer]['mean']}, ${s['cost_usd']:.6f}",
        )
        for s in scored
    ]
    missing = [s["deployment"] for s in summaries if s not in scored]
    return ScatterChart(scorer, points, max_cost, max_score, missing)
