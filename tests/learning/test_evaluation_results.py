"""Results per deployment: mean scores with 95% intervals (Wilson for 0-or-1 scores, Student's t for
graded ones), latency percentiles, and cost from the hourly price over the time the deployment was busy."""

from __future__ import annotations

import datetime

import pytest

from learning import results
from learning.results import ItemResult

T0 = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)


def item(deployment: str, second: float, latency_ms: int, score: float | None, ok: bool = True) -> ItemResult:
    return ItemResult(
        deployment=deployment, started_at=T0 + datetime.timedelta(seconds=second), latency_ms=latency_ms,
        ok=ok, prompt_tokens=100, completion_tokens=50, scoring_tokens=10, scores={"exact": score},
    )  # fmt: skip


def test_wilson_interval_of_all_successes_is_not_zero_width() -> None:
    low, high = results.wilson(10, 10)
    assert (low, high) == (pytest.approx(0.7225, abs=1e-4), pytest.approx(1.0))


def test_t_interval_of_graded_scores() -> None:
    low, high = results.t_interval([6.0, 7.0, 8.0])  # type: ignore[misc]
    assert (low, high) == (pytest.approx(4.5159, abs=1e-3), pytest.approx(9.4841, abs=1e-3))
    assert results.t_interval([5.0]) is None


def test_nearest_rank_percentiles() -> None:
    latencies = [float(n) for n in range(1, 101)]
    assert (results.percentile(latencies, 0.5), results.percentile(latencies, 0.95)) == (50.0, 95.0)
    assert results.percentile([], 0.5) is None


def test_busy_time_is_the_union_of_the_calls() -> None:
    def span(start: float, end: float) -> tuple[datetime.datetime, datetime.datetime]:
        return T0 + datetime.timedelta(seconds=start), T0 + datetime.timedelta(seconds=end)

    assert results.busy_seconds([span(0, 2), span(1, 3), span(10, 11)]) == 4.0


def test_summary_per_deployment_prices_the_busy_time() -> None:
    items = [
        item("small", 0, 1000, 1.0), item("small", 0.5, 1000, 0.0), item("small", 5, 2000, None),
        item("large", 0, 4000, 1.0), item("large", 10, 500, None, ok=False),
    ]  # fmt: skip
    prices = {"small": {"hourly_usd": "3.6", "replicas": 1}, "large": {"hourly_usd": "36", "replicas": 2}}
    small, large = results.summarize(items, ["small", "large"], [("exact", True, (0.0, 1.0))], prices)
    assert small["scores"]["exact"]["mean"] == 0.5
    assert (small["scores"]["exact"]["scored"], small["scores"]["exact"]["unscored"]) == (2, 1)
    assert small["busy_seconds"] == 3.5  # [0, 1.5] and [5, 7]
    assert small["cost_usd"] == pytest.approx(0.0035)
    assert small["tokens_per_second"] == pytest.approx(450 / 3.5, abs=0.01)
    assert small["latency_ms"] == {"p50": 1000.0, "p95": 2000.0}
    assert large["errors"] == 1 and large["latency_ms"]["p50"] == 4000.0
    assert large["hourly_usd"] == 72.0 and large["cost_usd"] == pytest.approx(72 * 4.5 / 3600)
    assert large["usd_per_million_tokens"] == pytest.approx(72 / 3600 / (300 / 4.5) * 1e6, rel=1e-4)


def test_a_graded_interval_stays_inside_the_scorers_range() -> None:
    summary = results.score_summary([0.99, 0.7, 0.98], binary=False, bounds=(-1.0, 1.0))
    assert summary["ci95"][1] == 1.0 and summary["ci95"][0] < summary["mean"]
