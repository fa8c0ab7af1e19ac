"""The costs page: what the current organisation's deployments cost, per day and per deployment, and
what 1,000 tokens cost on each (idle hours included). Reads the same report as GET /api/costs/."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from marketplace.accounts.models import Organization
from marketplace.web import charts, current
from serving import costs

RANGES = {"7d": 7, "30d": 30, "90d": 90}


@login_required
@require_GET
def costs_page(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    range_name = request.GET.get("range", "30d")
    if range_name not in RANGES:
        range_name = "30d"
    until = timezone.now().date()
    since = until - timedelta(days=RANGES[range_name] - 1)
    context: dict[str, Any] = {"organization": organization, "range": range_name, "ranges": RANGES}
    if organization is None:
        return render(request, "web/costs.html", context)
    scope = costs.CostScope(Organization.objects.filter(pk=organization.pk), since, until)
    per_deployment = costs.cost_report(scope, ["deployment"]).rows
    # A deployment deleted and created again under its name is a row and a series of its own: the
    # names that repeat are told apart by id.
    names = [row["deployment"] for row in per_deployment]
    repeated = {name for name in names if names.count(name) > 1}
    # The chart names the costliest deployments and stacks the rest as one: a large organisation's
    # day-by-deployment report would be tens of thousands of rows for seven coloured series.
    ranked = sorted(per_deployment, key=lambda row: (-row["cost_usd"], row["deployment"]))
    named = [row["deployment_id"] for row in ranked[: len(charts.SERIES_COLOURS) - 1]]
    daily = costs.cost_report(replace(scope, deployment_ids=named), ["day", "deployment"]).rows
    for row in [*per_deployment, *daily]:
        if row["deployment"] in repeated:
            row["deployment"] = f"{row['deployment']} #{row['deployment_id']}"
    shown = {row["day"]: 0.0 for row in daily}
    for row in daily:
        shown[row["day"]] += row["cost_usd"]
    whole = costs.cost_report(scope, ["day"]).rows
    others = {row["day"]: max(row["cost_usd"] - shown.get(row["day"], 0.0), 0.0) for row in whole}
    total_cost = sum(row["cost_usd"] for row in per_deployment)
    total_tokens = sum(row["tokens"] for row in per_deployment)
    query = {"organization": organization.slug, "since": since.isoformat(), "until": until.isoformat()}
    context.update(
        since=since,
        until=until,
        chart=charts.stacked_cost_chart(
            daily, [(since + timedelta(days=n)).isoformat() for n in range(RANGES[range_name])], others
        ),
        rates=charts.cost_per_token_bars(per_deployment),
        deployments=ranked,
        total_cost=total_cost,
        total_hours=sum(row["replica_hours"] for row in per_deployment),
        total_tokens=total_tokens,
        total_rate=total_cost * 1000 / total_tokens if total_tokens else None,
        any_estimate=any(row["price_is_estimate"] for row in per_deployment),
        csv_url=reverse("costs") + "?" + urlencode({**query, "group_by": "day,deployment", "format": "csv"}),
    )
    return render(request, "web/costs.html", context)
