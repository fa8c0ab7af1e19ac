"""Usage over time as bar charts: buckets from usage records, and the geometry of an SVG bar chart.

Pure functions on plain data (the query lives in `usage_series`), so a chart can be checked without a
browser. Charts are drawn on the server as inline SVG: no JavaScript charting library to ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Avg, Count, FloatField, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMinute
from django.utils import timezone

from marketplace.accounts.models import Organization
from serving import services
from serving.models import UsageRecord

# name: (label, number of buckets, bucket length, truncation)
RANGES: dict[str, tuple[str, int, timedelta, Any]] = {
    "1h": ("Last hour, by minute", 60, timedelta(minutes=1), TruncMinute),
    "24h": ("Last 24 hours, by hour", 24, timedelta(hours=1), TruncHour),
    "30d": ("Last 30 days, by day", 30, timedelta(days=1), TruncDay),
}
WIDTH, HEIGHT, TOP, BOTTOM = 600, 160, 20, 22  # TOP leaves room for the vertical axis's label


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont: the value below which `fraction` of the rows fall, interpolated."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # for the tooltip and screen readers
    slot_x: float = 0.0  # the bar's whole column, which carries the tooltip even when the bar is short
    slot_width: float = 0.0


@dataclass(frozen=True)
class Chart:
    title: str
    total: str
    bars: list[Bar]
    first_label: str
    last_label: str
    width: int = WIDTH
    height: int = HEIGHT
    baseline: int = HEIGHT - BOTTOM
    unit: str = ""  # the vertical axis's unit
    peak_label: str = ""  # the value at the top of the vertical axis
    middle_label: str = ""  # the time at the middle of the horizontal axis
    top: int = TOP


def _start(now: datetime, buckets: int, step: timedelta) -> datetime:
    """The start of the oldest bucket, aligned as the database truncates."""
    if step >= timedelta(days=1):
        aligned = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elif step >= timedelta(hours=1):
        aligned = now.replace(minute=0, second=0, microsecond=0)
    else:
        aligned = now.replace(second=0, microsecond=0)
    return aligned - step * (buckets - 1)


def usage_series(
    records: QuerySet[UsageRecord], range_name: str, now: datetime | None = None
) -> dict[str, Any]:
    """Requests, tokens and average latency per bucket of `range_name`, oldest first, empty buckets
    included (one query)."""
    label, buckets, step, trunc = RANGES[range_name]
    now = now or timezone.now()
    start = _start(now, buckets, step)
    rows = (
        records.filter(created_at__gte=start)
        .annotate(bucket=trunc("created_at"))
        .values("bucket")
        .annotate(
            requests=Count("id"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
            latency=Avg("latency_ms"),
            latency_p50=Percentile("latency_ms", 0.5),
            latency_p95=Percentile("latency_ms", 0.95),
        )
        .order_by("bucket")
    )
    by_bucket = {row["bucket"]: row for row in rows}
    moments = [start + step * i for i in range(buckets)]
    empty = {"requests": 0, "tokens": 0, "latency": None, "latency_p50": None, "latency_p95": None}
    points = [by_bucket.get(moment, empty) for moment in moments]
    return {"label": label, "moments": moments, "points": points, "step": step, "start": start}


def latency_summary(records: QuerySet[UsageRecord], start: datetime) -> dict[str, float | int | None]:
    """The latency of every call since `start`, each call weighing the same (one query): the mean, the
    median and the 95th percentile in milliseconds, and how many calls were measured. Averaging the
    buckets' averages instead would weigh a quiet hour as much as a busy one, so the mean would change
    with the window for the same calls."""
    return records.filter(created_at__gte=start, latency_ms__isnull=False).aggregate(
        calls=Count("id"),
        mean=Avg("latency_ms"),
        p50=Percentile("latency_ms", 0.5),
        p95=Percentile("latency_ms", 0.95),
    )


def _moment_label(moment: datetime, step: timedelta) -> str:
    """A bucket's start with its date, as people read it: "2 Dec" for days, "2 Dec 14:05" otherwise."""
    local = timezone.localtime(moment)
    day = f"{local.day} {local:%b}"
    return day if step >= timedelta(days=1) else f"{day} {local:%H:%M}"


def _span_label(moment: datetime, step: timedelta) -> str:
    """A bucket's whole span for its tooltip: "2 Dec", or "2 Dec 14:00–15:00"."""
    if step >= timedelta(days=1):
        return _moment_label(moment, step)
    return f"{_moment_label(moment, step)}–{timezone.localtime(moment + step):%H:%M}"


def _milliseconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:,.1f} s" if value >= 10_000 else f"{value:,.0f} ms"


def bar_chart(title: str, unit: str, series: dict[str, Any], field: str, *, average: bool = False) -> Chart:
    """The bars of one measure, scaled so the tallest fills the chart."""
    values = [float(point[field] or 0) for point in series["points"]]
    peak = max(values, default=0)
    count = len(values) or 1
    slot = WIDTH / count
    usable = HEIGHT - TOP - BOTTOM
    bars: list[Bar] = []
    for moment, value in zip(series["moments"], values, strict=True):
        height = 0.0 if peak == 0 else usable * value / peak
        index = len(bars)
        shown = f"{value:,.0f}" if not average else f"{value:,.1f}"
        bars.append(
            Bar(
                x=round(index * slot + slot * 0.1, 2),
                y=round(TOP + usable - height, 2),
                width=round(slot * 0.8, 2),
                height=round(height, 2),
                label=f"{_span_label(moment, series['step'])}: {shown} {unit}",
                slot_x=round(index * slot, 2),
                slot_width=round(slot, 2),
            )
        )
    # For an average, a mean of the buckets' means would weigh a quiet bucket as much as a busy one: the
    # caller, who has the calls, states the window's figure (latency_chart).
    total = ("" if any(values) else "no calls") if average else f"{sum(values):,.0f} {unit}"
    moments = series["moments"]
    return Chart(
        title=title,
        total=total,
        bars=bars,
        first_label=_moment_label(moments[0], series["step"]) if moments else "",
        last_label=_moment_label(moments[-1], series["step"]) if moments else "",
        unit=unit,
        peak_label=f"{peak:,.0f} {unit}" if peak else "",
        middle_label=_moment_label(moments[len(moments) // 2], series["step"]) if moments else "",
    )


def latency_chart(series: dict[str, Any], summary: dict[str, Any]) -> Chart:
    """Each bucket's mean latency as a bar (its tooltip: the span, the calls, the mean, median and 95th
    percentile), and over the window the mean weighted by calls, the median and the 95th percentile."""
    chart = bar_chart("Latency", "ms", series, "latency", average=True)
    bars = []
    for bar, point in zip(chart.bars, series["points"], strict=True):
        span = bar.label.split(": ", 1)[0]
        calls = point["requests"]
        if calls:
            label = (
                f"{span}: {calls:,} call{'s' if calls != 1 else ''}, mean {_milliseconds(point['latency'])}, "
                f"p50 {_milliseconds(point['latency_p50'])}, p95 {_milliseconds(point['latency_p95'])}"
            )
        else:
            label = f"{span}: no calls"
        bars.append(Bar(**{**bar.__dict__, "label": label}))
    if summary["calls"]:
        total = (
            f"mean {_milliseconds(summary['mean'])} · p50 {_milliseconds(summary['p50'])} · "
            f"p95 {_milliseconds(summary['p95'])}"
        )
    else:
        total = "no calls"
    return Chart(**{**chart.__dict__, "bars": bars, "total": total})


def usage_charts(records: QuerySet[UsageRecord], range_name: str) -> dict[str, Any]:
    series = usage_series(records, range_name)
    return {
        "range_label": series["label"],
        "charts": [
            bar_chart("Requests", "requests", series, "requests"),
            bar_chart("Tokens", "tokens", series, "tokens"),
            latency_chart(series, latency_summary(records, series["start"])),
        ],
    }


def quota_bars(organization: Organization) -> list[dict[str, Any]]:
    """Each limit with what is used of it, as bars people read at a glance."""
    use = services.quota_use(organization)
    quota = use.quota
    bars = [
        ("Deployments", use.deployments, quota.max_deployments, ""),
        ("GPUs, all models", use.gpus, quota.max_gpus, "GPUs"),
    ]
    bars += [(model, used, quota.gpu_limit(model), "GPUs") for model, used in use.gpus_by_model.items()]
    bars.append(("CPU replicas", use.cpu_replicas, quota.max_cpu_replicas, "replicas"))
    bars.append(("Tokens this month", use.tokens_this_month, quota.monthly_token_budget, "tokens"))
    return [
        {
            "label": label,
            "used": used,
            "limit": limit,
            "unit": unit,
            "percent": 100 if limit == 0 and used else (min(100, round(100 * used / limit)) if limit else 0),
        }
        for label, used, limit, unit in bars
    ]


# Costs (the costs page): one bar a day, stacked by deployment, and each deployment's cost per 1,000 tokens.
# Colours a reader with colour blindness can tell apart (Okabe and Ito); the costliest deployments get one
# each and the rest share the last, "others".
SERIES_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#999999")


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str  # the day, the deployment and its cost, for the tooltip and screen readers


@dataclass(frozen=True)
class StackedChart:
    title: str
    total: str
    columns: list[list[Segment]]
    slots: list[tuple[float, float, str]]  # each day's whole column (x, width, label), for its tooltip
    legend: list[tuple[str, str]]  # (colour, name)
    first_label: str
    last_label: str
    peak_label: str
    width: int = WIDTH
    height: int = HEIGHT
    baseline: int = HEIGHT - BOTTOM
    top: int = TOP


def _dollars(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:,.4f}"


def stacked_cost_chart(
    rows: list[dict[str, Any]], days: list[Any], others: dict[str, float] | None = None
) -> StackedChart:
    """Cost per day stacked by deployment, from the cost report's rows grouped by day and deployment
    (serving.costs.cost_report). `days` are ISO dates, oldest first, one bar each. `others`: the cost per
    day of deployments left out of `rows` (a large organisation's report names only its costliest), drawn
    as one more series on top."""
    totals: dict[str, float] = {}
    for row in rows:
        totals[row["deployment"]] = totals.get(row["deployment"], 0.0) + row["cost_usd"]
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    named = ranked[: len(SERIES_COLOURS) - 1] if len(ranked) > len(SERIES_COLOURS) else ranked
    series = {name: SERIES_COLOURS[i] for i, name in enumerate(named)}
    left_out = any(value > 0.000001 for value in (others or {}).values())
    others_name = "others" if len(ranked) > len(named) or left_out else None
    by_day: dict[str, dict[str, float]] = {day: {} for day in days}
    for row in rows:
        name = row["deployment"] if row["deployment"] in series else others_name
        if row["day"] in by_day and name is not None:
            by_day[row["day"]][name] = by_day[row["day"]].get(name, 0.0) + row["cost_usd"]
    for day, value in (others or {}).items():
        if day in by_day and value > 0.000001 and others_name:
            by_day[day][others_name] = by_day[day].get(others_name, 0.0) + value
            totals[others_name] = totals.get(others_name, 0.0) + value
    order = [*named, *([others_name] if others_name else [])]
    colours = {**series, **({others_name: SERIES_COLOURS[-1]} if others_name else {})}
    peak = max((sum(values.values()) for values in by_day.values()), default=0.0)
    usable = HEIGHT - TOP - BOTTOM
    slot = WIDTH / max(len(days), 1)
    columns, slots = [], []
    for index, day in enumerate(days):
        y = float(TOP + usable)
        column = []
        for name in order:
            value = by_day[day].get(name, 0.0)
            if not value or not peak:
                continue
            height = usable * value / peak
            y -= height
            column.append(
                Segment(
                    x=round(index * slot + slot * 0.1, 2), y=round(y, 2), width=round(slot * 0.8, 2),
                    height=round(height, 2), colour=colours[name], label=f"{day}: {name} {_dollars(value)}",
                )
            )  # fmt: skip
        columns.append(column)
        day_total = sum(by_day[day].values())
        slots.append((round(index * slot, 2), round(slot, 2), f"{day}: {_dollars(day_total)} in all"))
    return StackedChart(
        title="Cost per day",
        total=f"{_dollars(sum(totals.values()))} in all",
        columns=columns,
        slots=slots,
        legend=[(colours[name], name) for name in order],
        first_label=days[0] if days else "",
        last_label=days[-1] if days else "",
        peak_label=_dollars(peak) if peak else "",
    )


@dataclass(frozen=True)
class RateBar:
    name: str
    figure: str  # "$0.0123 per 1,000 tokens"
    percent: float  # of the widest bar, for the CSS width
    estimate: bool


def cost_per_token_bars(rows: list[dict[str, Any]]) -> list[RateBar]:
    """Each deployment's cost per 1,000 tokens (idle hours included), dearest first, from the cost
    report's rows grouped by deployment; deployments that served no tokens have no rate and no bar."""
    rated = sorted(
        (row for row in rows if row["cost_per_1k_tokens"] is not None),
        key=lambda row: (-row["cost_per_1k_tokens"], row["deployment"]),
    )
    widest = max((row["cost_per_1k_tokens"] for row in rated), default=0.0)
    return [
        RateBar(
            name=row["deployment"],
            figure=f"{_dollars(row['cost_per_1k_tokens'])} per 1,000 tokens",
            percent=round(100 * row["cost_per_1k_tokens"] / widest, 1) if widest else 0.0,
            estimate=row["price_is_estimate"],
        )
        for row in rated
    ]
