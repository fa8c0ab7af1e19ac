"""What a router's held-out report (learning.router_report) looks like, as the geometry of inline SVG
charts, and what its decisions on live traffic would have saved. Pure, except `live_decisions`, which
reads usage records in one grouped query.

1. `tradeoff_chart`: quality (mean true score, 0..1, up is better) against cost per call (USD, left is
   cheaper), one line per predictor as τ moves from 0 to 100%, with a marker at the router's τ; beside
   them always-fallback and always-cheapest (points) and the random mix of the two (the straight line
   between them: a mix that sends a share p of prompts to the fallback costs and scores p of the way).
   A predictor above that line at the same cost knows something; on it, it knows nothing.
2. `gap_chart`: the performance gap recovered (PGR) against the share of calls sent to the strongest
   candidate, the area under which is APGR; a random router follows the diagonal.
3. `interval`: a figure with its 95% interval as a strip on 0..100%.
4. `live_decisions`: on live traffic through the router, how often it chose (or in shadow mode would
   have chosen) each candidate, and what the calls cost against what its choices would have cost,
   from each candidate's cost per 1,000 tokens.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, Sum
from django.utils import timezone

from learning.models import Router
from serving.models import UsageRecord

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 560, 280, 52, 16, 14, 40
COLOURS = ("#2563eb", "#c2410c", "#15803d", "#7c3aed")
LIVE_DAYS = 30


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}"


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    label: str  # tooltip and screen-reader text
    name: str = ""  # a short label drawn beside it


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    points: str  # an SVG polyline's points
    markers: list[Marker]
    chosen: Marker | None  # at the router's τ
    dashed: bool = False


@dataclass(frozen=True)
class Plot:
    """An x/y chart's frame: the pixel box and the axis labels."""

    title: str
    x_label: str
    y_label: str
    x_max_label: str
    y_max_label: str
    series: list[Series]
    points: list[Marker] = field(default_factory=list)  # baselines drawn as labelled dots
    y_min_label: str = ""  # the value at the bottom of the vertical axis
    circled: bool = False  # whether a marker rings the router's τ
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    top: int = TOP
    baseline: int = HEIGHT - BOTTOM


class _Scale:
    def __init__(self, x_max: float, y_max: float, y_min: float = 0.0) -> None:
        self.x_max = x_max if x_max > 0 and math.isfinite(x_max) else 1.0
        self.y_max = y_max if y_max > y_min and math.isfinite(y_max) else y_min + 1.0
        self.y_min = y_min

    def x(self, value: float) -> float:
        return round(LEFT + value / self.x_max * (WIDTH - LEFT - RIGHT), 1)

    def y(self, value: float) -> float:
        share = (value - self.y_min) / (self.y_max - self.y_min)
        return round(HEIGHT - BOTTOM - share * (HEIGHT - TOP - BOTTOM), 1)


def _usable(entry: dict[str, Any]) -> bool:
    return entry.get("quality") is not None and entry.get("cost_per_call_usd") is not None


def tradeoff_chart(reports: list[tuple[str, dict[str, Any]]], tau: float) -> Plot | None:
    """Quality against cost over τ for each (predictor name, report), on the same held-out split;
    None when no report has a curve."""
    from learning.router_report import at_tau

    reports = [(name, report) for name, report in reports if report.get("curve")]
    if not reports:
        return None
    baselines = reports[0][1].get("baselines") or {}
    fallback = baselines.get("always_fallback") or {}
    cheapest = baselines.get("always_cheapest") or {}
    costs = [e["cost_per_call_usd"] for _, r in reports for e in r["curve"] if _usable(e)]
    costs += [b["cost_per_call_usd"] for b in (fallback, cheapest) if _usable(b)]
    qualities = [e["quality"] for _, r in reports for e in r["curve"] if _usable(e)]
    qualities += [b["quality"] for b in (fallback, cheapest) if _usable(b)]
    # The quality axis starts at the tenth below the lowest point, so close curves stay apart; it is labelled.
    floor = max(0.0, math.floor((min(qualities, default=0.0) - 0.05) * 10) / 10)
    scale = _Scale(max(costs, default=0.0) * 1.05, 1.0, floor)
    series: list[Series] = []
    for index, (name, report) in enumerate(reports):
        curve = [entry for entry in report["curve"] if _usable(entry)]
        markers = [
            Marker(
                scale.x(e["cost_per_call_usd"]), scale.y(e["quality"]),
                f"{name}, τ {_percent(e['tau'])}: quality {e['quality']:.3f}, "
                f"{_usd(e['cost_per_call_usd'])} a call",
            )
            for e in curve
        ]  # fmt: skip
        here = at_tau(report, tau)
        chosen = None
        if here is not None and _usable(here):
            chosen = Marker(
                scale.x(here["cost_per_call_usd"]), scale.y(here["quality"]),
                f"{name} at the router's τ {_percent(tau)}: quality {here['quality']:.3f}, "
                f"{_usd(here['cost_per_call_usd'])} a call",
            )  # fmt: skip
        series.append(
            Series(
                name=name, colour=COLOURS[index % len(COLOURS)],
                points=" ".join(f"{m.x},{m.y}" for m in markers), markers=markers, chosen=chosen,
            )
        )  # fmt: skip
    dots: list[Marker] = []
    if _usable(fallback) and _usable(cheapest):
        ends = [(cheapest, "always cheapest"), (fallback, "always fallback")]
        line = " ".join(f"{scale.x(b['cost_per_call_usd'])},{scale.y(b['quality'])}" for b, _ in ends)
        series.append(Series("random mix", "#6b7280", line, [], None, dashed=True))
        for baseline, label in ends:
            dots.append(
                Marker(
                    scale.x(baseline["cost_per_call_usd"]), scale.y(baseline["quality"]),
                    f"{label} ({reports[0][1].get(label.split()[1])}): quality {baseline['quality']:.3f}, "
                    f"{_usd(baseline['cost_per_call_usd'])} a call", label,
                )
            )  # fmt: skip
    return Plot(
        title="Quality against cost per call as τ moves from 0 to 100%",
        x_label="cost per call (USD)", y_label="quality (0–1)",
        x_max_label=_usd(scale.x_max), y_max_label="1", y_min_label=f"{floor:g}",
        series=series, points=dots, circled=any(s.chosen for s in series),
    )  # fmt: skip


def gap_chart(report: dict[str, Any]) -> Plot | None:
    """PGR against the share of calls to the strongest candidate; None without a gap to recover."""
    curve = [e for e in (report.get("gap_recovered") or {}).get("curve") or [] if e.get("pgr") is not None]
    if not curve:
        return None
    scale = _Scale(1.0, max(1.0, max(e["pgr"] for e in curve)))
    markers = [
        Marker(
            scale.x(e["share_to_strongest"]),
            scale.y(max(0.0, e["pgr"])),
            f"{_percent(e['share_to_strongest'])} of calls to the strongest: {_percent(e['pgr'])} of the gap",
        )
        for e in curve
    ]
    diagonal = f"{scale.x(0)},{scale.y(0)} {scale.x(1)},{scale.y(1)}"
    return Plot(
        title="Performance gap recovered against calls to the strongest candidate",
        x_label="share of calls to the strongest", y_label="gap recovered",
        x_max_label="100%", y_max_label=_percent(scale.y_max), y_min_label="0",
        series=[
            Series("this predictor", COLOURS[0], " ".join(f"{m.x},{m.y}" for m in markers), markers, None),
            Series("random", "#6b7280", diagonal, [], None, dashed=True),
        ],
    )  # fmt: skip


@dataclass(frozen=True)
class Interval:
    label: str
    value: float | None
    low: float | None
    high: float | None
    text: str
    # pixel positions on a 0..100% strip of STRIP_WIDTH
    x: float = 0.0
    x_low: float = 0.0
    x_high: float = 0.0
    width: int = 240


STRIP_WIDTH = 240


def interval(label: str, value: float | None, bounds: list[float | None] | None) -> Interval:
    """A figure (a fraction) and its 95% interval; the strip is clamped to 0..100%."""
    low, high = (bounds or [None, None])[:2] if bounds else (None, None)

    def at(fraction: float | None) -> float:
        return round(min(1.0, max(0.0, fraction or 0.0)) * STRIP_WIDTH, 1)

    text = _percent(value)
    if low is not None and high is not None:
        text += f" (95% interval {_percent(low)} to {_percent(high)})"
    return Interval(label, value, low, high, text, at(value), at(low), at(high), STRIP_WIDTH)


@dataclass(frozen=True)
class Share:
    label: str
    percent: float  # 0..100, for the bar's width
    text: str


def shares(at: dict[str, Any] | None, fallback: str) -> list[Share]:
    """Each candidate's share of prompts at a τ, for `.bars`."""
    found = (at or {}).get("shares") or {}
    return [
        Share(
            f"{name}{' (fallback)' if name == fallback else ''}", round((value or 0) * 100, 1),
            _percent(value),
        )
        for name, value in found.items()
    ]  # fmt: skip


# --- Live traffic ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveRow:
    deployment: str
    chosen: int  # calls the router chose (or would have chosen) it for
    chosen_share: float
    served: int  # calls it answered
    cost_per_1k_tokens: float | None


@dataclass(frozen=True)
class LiveDecisions:
    days: int
    calls: int
    rows: list[LiveRow]
    cost_served_usd: float | None  # what the calls cost with who answered them
    cost_chosen_usd: float | None  # what they would have cost had the router's choices answered
    saved: float | None  # 1 − chosen ÷ served (in shadow mode: what switching on would have saved)
    unpriced: list[str]  # candidates without a known cost (their calls are left out of the costs)


def live_decisions(
    router: Router, costs: dict[str, float | None], now: datetime.datetime | None = None
) -> LiveDecisions:
    """The router's calls of the last LIVE_DAYS days, by who answered and whom it chose (one query)."""
    since = (now or timezone.now()) - datetime.timedelta(days=LIVE_DAYS)
    groups = (
        UsageRecord.objects.filter(
            organization_id=router.organization_id, router=router.name, created_at__gte=since
        )
        .values("router_choice", served=F("deployment__name"))
        .annotate(calls=Count("id"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by()
    )
    chosen: dict[str, int] = {}
    served: dict[str, int] = {}
    cost_served = cost_chosen = 0.0
    unpriced: set[str] = set()
    calls = 0
    for group in groups:
        calls += group["calls"]
        choice, answerer = group["router_choice"] or "", group["served"] or ""
        chosen[choice] = chosen.get(choice, 0) + group["calls"]
        served[answerer] = served.get(answerer, 0) + group["calls"]
        served_cost, chosen_cost = costs.get(answerer), costs.get(choice)
        if served_cost is None or chosen_cost is None:
            unpriced.update(
                name for name, cost in ((answerer, served_cost), (choice, chosen_cost)) if cost is None
            )
            continue
        tokens = (group["tokens"] or 0) / 1000
        cost_served += tokens * served_cost
        cost_chosen += tokens * chosen_cost
    names = list(costs) + sorted((set(chosen) | set(served)) - set(costs) - {""})
    rows = [
        LiveRow(name, chosen.get(name, 0), chosen.get(name, 0) / calls if calls else 0.0, served.get(name, 0),
                costs.get(name))
        for name in names
    ]  # fmt: skip
    priced = calls > 0 and cost_served > 0
    return LiveDecisions(
        days=LIVE_DAYS, calls=calls, rows=rows,
        cost_served_usd=round(cost_served, 8) if calls else None,
        cost_chosen_usd=round(cost_chosen, 8) if calls else None,
        saved=round(1 - cost_chosen / cost_served, 4) if priced else None,
        unpriced=sorted(name for name in unpriced if name),
    )  # fmt: skip
