"""An evaluation's results per deployment, from its items. Pure: plain values in, plain values out.

1. Scores: per scorer, the mean over the items it scored, with a 95% confidence interval: Wilson's
   score interval for 0-or-1 scorers (exact match, regex, JSON; it stays inside [0, 1] and is not zero
   width when every item agrees), Student's t for graded ones (similarity, the judge). Items a scorer
   could not score (no reference, an unparseable judgement, a failed call) are counted apart, not as 0.
2. Latency: p50 and p95 of the answers' latencies (nearest rank), over calls that succeeded.
3. Cost: the deployment's hourly price (instance price × replicas, when the evaluation was created)
   for the time it was busy answering: the union of the items' [start, start + latency] intervals, so
   concurrent items are not paid twice and a pause between a lost worker and its successor is not paid
   at all. Its measured throughput (tokens per busy second) gives the price per million tokens: the
   customer's own figure for this traffic on this deployment, not a list price.
"""

from __future__ import annotations

import datetime
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Z95 = 1.959963984540054
# Student's t, two-sided 95%, for 1 to 30 degrees of freedom; beyond, the normal's 1.96 is close enough.
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
    2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
    2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class ItemResult:
    """What the summary reads of one evaluation item."""

    deployment: str
    started_at: datetime.datetime
    latency_ms: int
    ok: bool
    prompt_tokens: int
    completion_tokens: int
    scoring_tokens: int
    scores: dict[str, float | None] = field(default_factory=dict)


def wilson(successes: float, count: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion."""
    if count == 0:
        return 0.0, 1.0
    share = successes / count
    denominator = 1 + Z95**2 / count
    centre = (share + Z95**2 / (2 * count)) / denominator
    half = Z95 * math.sqrt(share * (1 - share) / count + Z95**2 / (4 * count**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95% interval of the mean by Student's t; None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    critical = T95[len(values) - 2] if len(values) - 1 <= len(T95) else Z95
    half = critical * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile; None of nothing."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def busy_seconds(intervals: Iterable[tuple[datetime.datetime, datetime.datetime]]) -> float:
    """The length of the union of the intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_start is not None and current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_start is not None and current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def score_summary(
    values: list[float | None], binary: bool, bounds: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Mean and 95% interval of the scored values; the interval is clipped to the scorer's `bounds`
    (a t-interval of a few cosines near 1 would otherwise reach past 1)."""
    scored = [value for value in values if value is not None]
    summary: dict[str, Any] = {"scored": len(scored), "unscored": len(values) - len(scored)}
    if not scored:
        return {**summary, "mean": None, "ci95": None}
    mean = statistics.fmean(scored)
    interval = wilson(sum(scored), len(scored)) if binary else t_interval(scored)
    if interval and bounds:
        interval = (max(bounds[0], interval[0]), min(bounds[1], interval[1]))
    rounded = [round(bound, 4) for bound in interval] if interval else None
    return {**summary, "mean": round(mean, 4), "ci95": rounded}


def summarize(
    items: Sequence[ItemResult],
    deployments: Sequence[str],
    scorers: Sequence[tuple[str, bool, tuple[float, float]]],
    prices: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One summary per deployment, in the evaluation's order. `scorers`: (name, binary, bounds); `prices`:
    {deployment: {"hourly_usd": str | float, "replicas": int}}."""
    summaries = []
    for name in deployments:
        mine = [item for item in items if item.deployment == name]
        answered = [item for item in mine if item.ok]
        prompt = sum(item.prompt_tokens for item in mine)
        completion = sum(item.completion_tokens for item in mine)
        busy = busy_seconds(
            (item.started_at, item.started_at + datetime.timedelta(milliseconds=item.latency_ms))
            for item in mine
        )
        price = prices.get(name) or {}
        hourly = float(price.get("hourly_usd") or 0) * max(1, int(price.get("replicas") or 1))
        cost = hourly * busy / 3600
        throughput = (prompt + completion) / busy if busy > 0 else None
        latencies = [float(item.latency_ms) for item in answered]
        summaries.append(
            {
                "deployment": name,
                "items": len(mine),
                "errors": len(mine) - len(answered),
                "scores": {
                    scorer: score_summary([item.scores.get(scorer) for item in mine], binary, bounds)
                    for scorer, binary, bounds in scorers
                },
                "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
                "tokens": {
                    "prompt": prompt,
                    "completion": completion,
                    "scoring": sum(item.scoring_tokens for item in mine),
                },
                "busy_seconds": round(busy, 3),
                "tokens_per_second": round(throughput, 2) if throughput is not None else None,
                "hourly_usd": round(hourly, 6),
                "cost_usd": round(cost, 6),
                "usd_per_million_tokens": (
                    round(hourly / 3600 / throughput * 1e6, 4) if throughput else None
                ),
            }
        )
    return summaries
