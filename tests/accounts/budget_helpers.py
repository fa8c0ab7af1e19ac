"""Shared by the budget tests: spending placed as metered replica-hours, at a fixed moment of a month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from serving.models import Deployment, ReplicaHour

# The tenth of a month, at noon: every check in these tests happens "now" = NOW.
MONTH = datetime(2026, 11, 1, tzinfo=UTC)
NOW = MONTH + timedelta(days=9, hours=12)


def spend(deployment: Deployment, usd: str | Decimal, *, hour: datetime | None = None) -> None:
    """`usd` more spent by `deployment`: one replica for a whole hour at that hourly price."""
    hour = hour or MONTH + timedelta(hours=ReplicaHour.objects.filter(deployment=deployment).count())
    ReplicaHour.objects.create(
        organization_id=deployment.organization_id,
        deployment=deployment,
        instance_type_id=deployment.instance_type_id,
        hour=hour,
        replica_seconds=Decimal(3600),
        hourly_price_usd=Decimal(usd),
    )
