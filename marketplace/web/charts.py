"""Usage over time as bar charts: buckets from usage records, and the geometry of an SVG bar chart.

Pure functions on plain data (the query lives in `usage_series`), so a chart can be checked without a
browser. Charts are drawn on the server as inline SVG: no JavaScript charting library to ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, QuerySet, Sum
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
WIDTH, HEIGHT, TOP, BOTTOM = 600, 160, 10, 22


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # for the tooltip and screen readers


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
        )
        .order_by("bucket")
    )
    by_bucket = {row["bucket"]: row for row in rows}
    moments = [start + step * i for i in range(buckets)]
    empty = {"requests": 0, "tokens": 0, "latency": None}
    points = [by_bucket.get(moment, empty) for moment in moments]
    return {"label": label, "moments": moments, "points": points, "step": step}


def _moment_label(moment: datetime, step: timedelta) -> str:
    local = timezone.localtime(moment)
    return f"{local:%b %d}" if step >= timedelta(days=1) else f"{local:%H:%M}"


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
                label=f"{_moment_label(moment, series['step'])}: {shown} {unit}",
            )
        )
    measured = [v for v in values if v]
    if average:
        total = f"{sum(measured) / len(measured):,.1f} {unit} on average" if measured else "no calls"
    else:
        total = f"{sum(values):,.0f} {unit}"
    moments = series["moments"]
    return Chart(
        title=title,
        total=total,
        bars=bars,
        first_label=_moment_label(moments[0], series["step"]) if moments else "",
        last_label=_moment_label(moments[-1], series["step"]) if moments else "",
    )


def usage_charts(records: QuerySet[UsageRecord], range_name: str) -> dict[str, Any]:
    series = usage_series(records, range_name)
    return {
        "range_label": series["label"],
        "charts": [
            bar_chart("Requests", "requests", series, "requests"),
            bar_chart("Tokens", "tokens", series, "tokens"),
            bar_chart("Latency", "ms", series, "latency", average=True),
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
