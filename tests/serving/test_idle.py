"""Idle deployments: ready, replicas running, no request for IDLE_AFTER_HOURS; what they cost while idle,
the ways out (scale to zero with KEDA, scale to minimum), and the weekly summary (serving/idle.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.accounts.models import IdleSummary
from serving import idle, services
from serving.choices import AutoscalingPolicy, DeploymentStatus
from serving.models import Deployment, UsageRecord
from tests.accounts.budget_helpers import spend
from tests.web.conftest import make_deployment

pytestmark = pytest.mark.django_db


def aged(deployment: Deployment, hours: float) -> Deployment:
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(hours=hours))
    return deployment


def called(deployment: Deployment, hours_ago: float) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, organization_id=deployment.organization_id, deployment=deployment,
        model=deployment.name, route="chat.completions", status_code=200,
        created_at=timezone.now() - timedelta(hours=hours_ago),
    )  # fmt: skip


def flags(organization) -> dict[str, idle.Idle]:
    rows = list(idle.with_last_request(Deployment.objects.filter(organization=organization)))
    found = idle.flag(rows)
    return {row.name: found[row.pk] for row in rows if row.pk in found}


@pytest.fixture
def kubernetes(settings, monkeypatch) -> list[int]:
    settings.SERVING_BACKEND = "kubernetes"
    settings.KEDA_ENABLED = True
    settings.IDLE_AFTER_HOURS = 24
    enqueued: list[int] = []
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: enqueued.append(deployment_id))
    return enqueued


def test_a_ready_deployment_without_requests_for_the_period_is_idle(acme, kubernetes) -> None:
    quiet = aged(make_deployment(acme, name="quiet", ready_replicas=1), 30)
    called(quiet, 25)
    busy = aged(make_deployment(acme, name="busy", ready_replicas=1), 30)
    called(busy, 2)
    aged(make_deployment(acme, name="new", ready_replicas=1), 3)
    aged(make_deployment(acme, name="asleep", ready_replicas=0), 30)  # scaled to zero: costs nothing
    aged(make_deployment(acme, name="broken", ready_replicas=1, status=DeploymentStatus.FAILED), 30)
    found = flags(acme)
    assert list(found) == ["quiet"]
    assert found["quiet"].hours == 25


def test_the_period_is_a_setting(acme, kubernetes, settings) -> None:
    aged(make_deployment(acme, name="quiet", ready_replicas=1), 5)
    assert flags(acme) == {}
    settings.IDLE_AFTER_HOURS = 4
    assert list(flags(acme)) == ["quiet"]


def test_the_idle_cost_counts_the_hours_since_it_went_idle(acme, kubernetes) -> None:
    quiet = aged(make_deployment(acme, name="quiet", ready_replicas=1), 72)
    called(quiet, 48)
    went_idle = (timezone.now() - timedelta(hours=48)).replace(minute=0, second=0, microsecond=0)
    spend(quiet, "5", hour=went_idle - timedelta(hours=3))  # before: busy, not idle
    spend(quiet, "1.25", hour=went_idle + timedelta(hours=1))
    spend(quiet, "1.25", hour=went_idle + timedelta(hours=2))
    assert flags(acme)["quiet"].cost_usd == Decimal("2.5")


def test_scale_to_zero_is_offered_with_keda_and_switches_the_policy(acme, kubernetes) -> None:
    quiet = aged(make_deployment(acme, name="quiet", ready_replicas=1, reserved_gpus=1), 30)
    assert flags(acme)["quiet"].scale_to_zero
    idle.scale_to_zero(quiet)
    quiet.refresh_from_db()
    assert (quiet.autoscaling_policy, quiet.min_replicas, quiet.max_replicas) == (
        AutoscalingPolicy.SCALE_TO_ZERO, 0, 1,
    )  # fmt: skip
    assert kubernetes == [quiet.pk]


def test_without_keda_only_scale_to_minimum_is_offered(acme, kubernetes, settings) -> None:
    settings.KEDA_ENABLED = False
    aged(make_deployment(acme, name="wide", ready_replicas=1, min_replicas=1, max_replicas=3,
                         autoscaling_policy=AutoscalingPolicy.QUEUE_DEPTH, reserved_gpus=3), 30)  # fmt: skip
    aged(make_deployment(acme, name="fixed", ready_replicas=1, reserved_gpus=1), 30)
    found = flags(acme)
    assert (found["wide"].scale_to_zero, found["wide"].scale_to_minimum) == (False, True)
    assert (found["fixed"].scale_to_zero, found["fixed"].scale_to_minimum) == (False, False)
    idle.scale_to_minimum(Deployment.objects.get(name="wide"))
    wide = Deployment.objects.get(name="wide")
    assert (wide.max_replicas, wide.reserved_gpus) == (1, 1)


def test_the_weekly_summary_lists_idle_deployments_once_a_week(acme, globex, kubernetes) -> None:
    quiet = aged(make_deployment(acme, name="quiet", ready_replicas=1), 30)
    spend(quiet, "3", hour=(timezone.now() - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0))
    aged(make_deployment(globex, name="busy", ready_replicas=1), 30)
    called(Deployment.objects.get(name="busy"), 1)
    now = timezone.now()
    assert idle.summarize_week(now) == 2
    assert idle.summarize_week(now) == 0  # once a week: the second run of the week writes nothing
    mine = IdleSummary.objects.get(organization=acme)
    assert [row["name"] for row in mine.deployments] == ["quiet"]
    assert mine.total_cost_usd == Decimal("3.00")
    assert IdleSummary.objects.get(organization=globex).deployments == []
    assert idle.latest_summary(acme.pk)["deployments"][0]["cost_usd"] == "3.00"
