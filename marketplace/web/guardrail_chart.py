"""What a guardrail did at the gateway, for its page: interventions per day over the last 30 days as a bar
chart (marketplace.web.charts draws it), and the same calls by direction, rule and action. Two queries
on GuardrailIntervention (one row per rule that acted on a call), whatever the number of calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count
from django.db.models.functions import TruncDay
from django.utils import timezone

from learning.models import Guardrail, GuardrailIntervention
from marketplace.web import charts

RANGE = "30d"


def intervention_chart(guardrail: Guardrail, now: datetime | None = None) -> charts.Chart:
    """Interventions per day, oldest first, empty days included (one query)."""
    label, buckets, step, _ = charts.RANGES[RANGE]
    now = now or timezone.now()
    start = charts._start(now, buckets, step)
    rows = (
        GuardrailIntervention.objects.filter(guardrail=guardrail, created_at__gte=start)
        .annotate(bucket=TruncDay("created_at"))
        .values("bucket")
        .annotate(interventions=Count("id"))
    )
    by_day = {row["bucket"]: row["interventions"] for row in rows}
    moments = [start + step * i for i in range(buckets)]
    series = {
        "label": label, "moments": moments, "step": step, "start": start,
        "points": [{"interventions": by_day.get(moment, 0)} for moment in moments],
    }  # fmt: skip
    return charts.bar_chart("Interventions", "interventions", series, "interventions")


def intervention_totals(guardrail: Guardrail, now: datetime | None = None) -> list[dict[str, Any]]:
    """The last 30 days' interventions by direction, rule kind and action, most first (one query)."""
    _, buckets, step, _ = charts.RANGES[RANGE]
    start = charts._start(now or timezone.now(), buckets, step)
    rows = (
        GuardrailIntervention.objects.filter(guardrail=guardrail, created_at__gte=start)
        .values("direction", "kind", "action")
        .annotate(count=Count("id"))
        .order_by("-count", "direction", "kind", "action")
    )
    return [dict(row) for row in rows]
