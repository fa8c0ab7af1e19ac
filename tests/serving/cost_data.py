"""Deployments with metered hours and served tokens, for the cost tests (API and web page)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser

from marketplace.accounts.models import ApiKey, Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import services
from serving.costs import ReplicaReading, record_replicas
from serving.models import Deployment, UsageRecord

DAY = date(2026, 3, 10)
MORNING = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def deployment(organization: Organization, name: str, instance: str = "aws-g5-xlarge") -> Deployment:
    return Deployment.objects.create(
        organization=organization,
        name=name,
        backend="kubernetes",
        status="ready",
        model_card=ModelCard.objects.get(slug="llama-3.1-8b-instruct"),
        instance_type=InstanceType.objects.get(slug=instance),
    )


def created_deployment(organization: Organization, user: AbstractBaseUser, replicas: int) -> Deployment:
    """The 8B chat card on a g5.xlarge with a fixed number of replicas, made as a person makes one
    (subscribed, quota reserved). The caller picks the backend and whether provisioning is queued."""
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    subscribe(organization=organization, card=card, license_sha256=None, user=user)
    return services.create_deployment(
        organization=organization, user=user, name="chat", card=card,
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        scaling=services.Scaling(min_replicas=replicas, max_replicas=replicas), engine_options={},
    )  # fmt: skip


def run(deployment: Deployment, replicas: int, start: datetime, hours: float) -> None:
    """Meter `replicas` ready replicas from `start` for `hours`."""
    for moment in (start, start + timedelta(hours=hours)):
        reading = ReplicaReading(
            deployment.pk, deployment.organization_id, deployment.instance_type_id, replicas
        )
        record_replicas([reading], at=moment)


def serve(deployment: Deployment, tokens: int, at: datetime, api_key: ApiKey | None = None) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, organization=deployment.organization, deployment=deployment,
        api_key=api_key, model=deployment.name, route="chat.completions", prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2, latency_ms=50, status_code=200, created_at=at,
    )  # fmt: skip


def hourly_price(deployment: Deployment) -> Decimal:
    return deployment.instance_type.prices.order_by("-effective_from").first().hourly_price_usd
