"""What guardrails did at the gateway, for the guardrail's page and the deployment's: interventions per
day over the last 30 days as a bar chart (marketplace.web.charts draws it), and the same calls by
direction, rule and action. Each is one query on GuardrailIntervention (one row per rule that acted on a
call), whatever the number of calls; the two pages differ only in which rows they select."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDay
from django.utils import timezone

from learning.models import Guardrail, GuardrailIntervention
from marketplace.web import charts
from serving.models import Deployment

RANGE = "30d"


def of_guardrail(guardrail: Guardrail) -> QuerySet[GuardrailIntervention]:
    return GuardrailIntervention.objects.filter(guardrail=guardrail)


def of_deployment(deployment: Deployment) -> QuerySet[GuardrailIntervention]:
    """Rows of the deployment's organisation's guardrails on calls to its name. A deleted deployment frees
    its name, so a later one of the same name counts only from its own creation."""
    return GuardrailIntervention.objects.filter(
        guardrail__organization_id=deployment.organization_id,
        deployment_name=deployment.name,
        created_at__gte=deployment.created_at,
    )


def _selected(target: Guardrail | QuerySet[GuardrailIntervention]) -> QuerySet[GuardrailIntervention]:
    return of_guardrail(target) if isinstance(target, Guardrail) else target


def intervention_chart(
    target: Guardrail | QuerySet[GuardrailIntervention], now: datetime | None = None
) -> charts.Chart:
    """Interventions per day, oldest first, empty days included (one query)."""
    label, buckets, step, _ = charts.RANGES[RANGE]
    now = now or timezone.now()
    start = charts._start(now, buckets, step)
    rows = (
        _selected(target)
        .filter(created_at__gte=start)
        .annotate(bucket=TruncDay("created_at"))
        .values("bucket")
        .annotate(interventions=Count("id"))
        .order_by()
    )
    by_day = {row["bucket"]: row["interventions"] for row in rows}
    moments = [start + step * i for i in range(buckets)]
    series = {
        "label": label, "moments": moments, "step": step, "start": start,
        "points": [{"interventions": by_day.get(moment, 0)} for moment in moments],
    }  # fmt: skip
    return charts.bar_chart("Interventions", "interventions", series, "interventions")


def intervention_totals(
    target: Guardrail | QuerySet[GuardrailIntervention], now: datetime | None = None
) -> list[dict[str, Any]]:
    """The last 30 days' interventions by direction, rule kind and action, most first (one query)."""
    _, buckets, step, _ = charts.RANGES[RANGE]
    start = charts._start(now or timezone.now(), buckets, step)
    rows = (
        _selected(target)
        .filter(created_at__gte=start)
        .values("direction", "kind", "action")
        .annotate(count=Count("id"))
        .order_by("-count", "direction", "kind", "action")
    )
    return [dict(row) for row in rows]
