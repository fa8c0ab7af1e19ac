"""Idle deployments: ready, running replicas, and no request served for IDLE_AFTER_HOURS.

A deployment is idle from the later of its creation and its last request (UsageRecord) on; it is
flagged once that is IDLE_AFTER_HOURS ago. A deployment scaled to zero runs no replica and costs
nothing, so it is not flagged. What it cost while idle comes from serving.costs (the metered hours that
started since it went idle).

Two ways out, each through serving.services so quota and history stay right:
- scale to zero: the scale-to-zero policy (KEDA) with its current maximum; the first request wakes it.
  Offered where that policy is allowed (the kubernetes backend with KEDA).
- scale to minimum: its maximum brought down to its minimum; offered when the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from serving import costs, services
from serving.choices import AutoscalingPolicy, Backend, DeploymentStatus
from serving.models import Deployment, UsageRecord

SUMMARY_KEY = "idle:summary:{organization_id}"
SUMMARY_SECONDS = 8 * 86400  # longer than a week: the hourly task rewrites it


def idle_after() -> timedelta:
    return timedelta(hours=settings.IDLE_AFTER_HOURS)


def with_last_request(deployments: QuerySet[Deployment]) -> QuerySet[Deployment]:
    """The deployments, each with `last_request_at` (None when it never served one), in the same query:
    the newest record of each, one probe of the index on (deployment, created_at) apiece (a MAX grouped
    by deployment would read every record of every deployment)."""
    last = UsageRecord.objects.filter(deployment=OuterRef("pk")).order_by("-created_at").values("created_at")
    return deployments.annotate(last_request_at=Subquery(last[:1]))


def idle_since(deployment: Any) -> datetime:
    last = getattr(deployment, "last_request_at", None)
    return max(deployment.created_at, last) if last else deployment.created_at


def is_idle(deployment: Any, now: datetime) -> bool:
    return (
        deployment.status == DeploymentStatus.READY
        and deployment.ready_replicas > 0
        and now - idle_since(deployment) >= idle_after()
    )


def can_scale_to_zero(deployment: Deployment) -> bool:
    return (
        deployment.autoscaling_policy != AutoscalingPolicy.SCALE_TO_ZERO
        and deployment.backend == Backend.KUBERNETES
        and settings.KEDA_ENABLED
    )


def can_scale_to_minimum(deployment: Deployment) -> bool:
    from marketplace.accounts.budgets import minimum_scaling

    return minimum_scaling(deployment) is not None


@dataclass(frozen=True)
class Idle:
    """Why and since when a deployment is flagged, what that cost, and which way out it offers."""

    since: datetime
    hours: int
    cost_usd: Decimal
    scale_to_zero: bool
    scale_to_minimum: bool


def flag(deployments: list[Any], now: datetime | None = None) -> dict[int, Idle]:
    """{deployment id: Idle} for the idle ones among `deployments` (read with `with_last_request`), with
    their idle cost in one query per organisation."""
    now = now or timezone.now()
    idle = [d for d in deployments if is_idle(d, now)]
    by_organization: dict[int, list[Any]] = {}
    for deployment in idle:
        by_organization.setdefault(deployment.organization_id, []).append(deployment)
    flags = {}
    for organization_id, rows in by_organization.items():
        earliest = costs.hour_start(min(idle_since(d) for d in rows))
        spent = _idle_costs(organization_id, rows, earliest, now)
        for deployment in rows:
            since = idle_since(deployment)
            flags[deployment.pk] = Idle(
                since=since,
                hours=int((now - since).total_seconds() // 3600),
                cost_usd=spent.get(deployment.pk, Decimal(0)),
                scale_to_zero=can_scale_to_zero(deployment),
                scale_to_minimum=can_scale_to_minimum(deployment),
            )
    return flags


def _idle_costs(
    organization_id: int, rows: list[Any], earliest: datetime, now: datetime
) -> dict[int, Decimal]:
    """Each deployment's cost since it went idle: hours that started from the hour it went idle in."""
    if all(costs.hour_start(idle_since(d)) == earliest for d in rows):
        return costs.cost_by_deployment(organization_id=organization_id, since=earliest, until=now)
    return {
        d.pk: costs.cost_between(
            organization_id=organization_id,
            since=costs.hour_start(idle_since(d)),
            until=now,
            deployment_id=d.pk,
        )
        for d in rows
    }


# The ways out.


def scale_to_zero(deployment: Deployment, *, actor: services.Actor = None) -> Deployment:
    """The scale-to-zero policy with its current maximum: KEDA removes the replicas after its idle period,
    and the first request brings one back. The history entry names `actor`."""
    target = deployment.autoscaling_target
    if deployment.autoscaling_policy in (AutoscalingPolicy.KV_CACHE, AutoscalingPolicy.FIXED):
        target = services.Scaling.target  # a queue depth, which KV-cache's fraction is not
    return services.scale_deployment(
        deployment,
        services.Scaling(
            min_replicas=0,
            max_replicas=max(deployment.max_replicas, 1),
            policy=AutoscalingPolicy.SCALE_TO_ZERO,
            target=target,
            idle_seconds=deployment.idle_seconds,
            scale_up_window_seconds=deployment.scale_up_window_seconds,
            scale_down_window_seconds=deployment.scale_down_window_seconds,
        ),
        actor=actor,
    )


def scale_to_minimum(deployment: Deployment, *, actor: services.Actor = None) -> Deployment:
    from marketplace.accounts.budgets import minimum_scaling

    scaling = minimum_scaling(deployment)
    if scaling is None:
        return deployment
    return services.scale_deployment(deployment, scaling, actor=actor)


# The weekly summary.


def week_start(now: datetime) -> date:
    today = now.astimezone(UTC).date()
    return today - timedelta(days=today.weekday())


def summary_rows(organization_id: int, now: datetime) -> tuple[list[dict[str, Any]], Decimal]:
    deployments = list(
        with_last_request(
            Deployment.objects.filter(organization=organization_id, status=DeploymentStatus.READY)
        ).select_related("model_card", "instance_type")
    )
    flags = flag(deployments, now)
    rows = [
        {
            "id": d.pk,
            "name": d.name,
            "model": d.model_card.name,
            "instance_type": d.instance_type.name,
            "idle_since": flags[d.pk].since.isoformat(),
            "idle_hours": flags[d.pk].hours,
            "cost_usd": str(flags[d.pk].cost_usd.quantize(Decimal("0.01"))),
        }
        for d in sorted(deployments, key=lambda d: d.name)
        if d.pk in flags
    ]
    return rows, sum((flags[d.pk].cost_usd for d in deployments if d.pk in flags), Decimal(0))


def summarize_week(now: datetime | None = None) -> int:
    """Write this week's summary for each organisation with a ready deployment that has none yet (once a
    week: the first run of the week writes it), and keep the latest in the cache for the organisation
    page. Returns how many summaries were written."""
    from marketplace.accounts.models import IdleSummary

    now = now or timezone.now()
    week = week_start(now)
    organizations = set(
        Deployment.objects.filter(status=DeploymentStatus.READY).values_list("organization_id", flat=True)
    )
    written = 0
    for organization_id in sorted(organizations):
        summary = IdleSummary.objects.filter(organization=organization_id, week=week).first()
        if summary is None:
            rows, total = summary_rows(organization_id, now)
            try:
                with transaction.atomic():
                    summary = IdleSummary.objects.create(
                        organization_id=organization_id,
                        week=week,
                        deployments=rows,
                        total_cost_usd=total.quantize(Decimal("0.01")),
                    )
                written += 1
            except IntegrityError:  # another worker wrote it first
                summary = IdleSummary.objects.get(organization=organization_id, week=week)
        remember(summary)
    return written


def remember(summary: Any) -> None:
    cache.set(
        SUMMARY_KEY.format(organization_id=summary.organization_id),
        {
            "week": summary.week.isoformat(),
            "deployments": summary.deployments,
            "total_cost_usd": str(summary.total_cost_usd),
        },
        SUMMARY_SECONDS,
    )


def latest_summary(organization_id: int) -> dict[str, Any] | None:
    """The summary the last run left for the organisation page (no query). When the cache has none (Redis
    was flushed or restarted), the latest summary is read from the database, one query, and kept again;
    an organisation that has none keeps an empty entry, so it pays that query once too."""
    from marketplace.accounts.models import IdleSummary

    key = SUMMARY_KEY.format(organization_id=organization_id)
    stored: dict[str, Any] | None = cache.get(key)
    if stored is None:
        summary = IdleSummary.objects.filter(organization=organization_id).order_by("-week").first()
        if summary is None:
            cache.set(key, {}, SUMMARY_SECONDS)
            return None
        remember(summary)
        stored = cache.get(key)
    return stored or None
