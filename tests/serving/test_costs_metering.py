"""Metered capacity: replica-seconds from the reconciler's readings, exact across gaps, restarts and two
workers at once, priced by the version in force at each hour (serving/costs.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType
from serving import costs, services
from serving.costs import ReplicaReading, record_replicas
from serving.models import Deployment, ReplicaDay, ReplicaHour
from tests.serving.cost_data import created_deployment

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def deployment(acme: Organization, owner: User, monkeypatch: pytest.MonkeyPatch, settings) -> Deployment:
    settings.SERVING_BACKEND = "kubernetes"
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    return created_deployment(acme, owner, replicas=1)


def read(deployment: Deployment, replicas: int, at: datetime) -> None:
    reading = ReplicaReading(deployment.pk, deployment.organization_id, deployment.instance_type_id, replicas)
    record_replicas([reading], at=at)


def replica_seconds(deployment: Deployment) -> dict[datetime, Decimal]:
    return {h.hour: h.replica_seconds for h in ReplicaHour.objects.filter(deployment=deployment)}


def test_the_first_reading_meters_nothing(deployment) -> None:
    read(deployment, 2, T0)
    assert replica_seconds(deployment) == {}


def test_steady_replicas_are_metered_exactly_and_split_at_the_hour(deployment) -> None:
    read(deployment, 2, T0 + timedelta(minutes=50))
    read(deployment, 2, T0 + timedelta(minutes=70, microseconds=500))
    assert replica_seconds(deployment) == {
        T0: Decimal(600 * 2),
        T0 + timedelta(hours=1): Decimal("1200.001000"),
    }


def test_a_gap_between_readings_is_metered_at_the_lower_count_of_its_ends(deployment) -> None:
    read(deployment, 1, T0)
    read(deployment, 3, T0 + timedelta(hours=2))  # scaled up somewhere in the gap: when is not known
    read(deployment, 3, T0 + timedelta(hours=3))
    assert replica_seconds(deployment) == {
        T0: Decimal(3600),
        T0 + timedelta(hours=1): Decimal(3600),
        T0 + timedelta(hours=2): Decimal(3 * 3600),
    }


def test_a_deployment_that_stopped_in_a_gap_is_not_metered_for_it(deployment) -> None:
    read(deployment, 2, T0)
    read(deployment, 0, T0 + timedelta(minutes=30))
    assert replica_seconds(deployment) == {}


def test_a_reading_older_than_the_last_one_changes_nothing(deployment) -> None:
    read(deployment, 1, T0)
    read(deployment, 1, T0 + timedelta(minutes=10))
    read(deployment, 1, T0 + timedelta(minutes=5))  # a slower worker's reading, arriving late
    read(deployment, 1, T0 + timedelta(minutes=20))
    assert replica_seconds(deployment) == {T0: Decimal(1200)}


def test_days_roll_up_their_hours_with_their_cost(deployment) -> None:
    price = deployment.instance_type.prices.get().hourly_price_usd
    read(deployment, 2, T0 - timedelta(hours=10))  # 23:00 the day before
    read(deployment, 2, T0 - timedelta(hours=8))
    days = {d.day: (d.replica_seconds, d.cost_usd) for d in ReplicaDay.objects.filter(deployment=deployment)}
    assert days == {
        T0.date() - timedelta(days=1): (Decimal(7200), price * 2),
        T0.date(): (Decimal(7200), price * 2),
    }


def test_cost_between_counts_the_hours_that_start_in_the_window(deployment) -> None:
    price = deployment.instance_type.prices.get().hourly_price_usd
    read(deployment, 1, T0)
    read(deployment, 1, T0 + timedelta(hours=5))
    cost = costs.cost_between(
        organization_id=deployment.organization_id,
        since=T0 + timedelta(hours=1),
        until=T0 + timedelta(hours=3),
    )
    assert cost == (price * 2).quantize(Decimal("0.000001"))


def test_cost_between_is_scoped_to_the_organisation_and_deployment(deployment, globex) -> None:
    read(deployment, 1, T0)
    read(deployment, 1, T0 + timedelta(hours=1))
    window = {"since": T0, "until": T0 + timedelta(days=1)}
    assert costs.cost_between(organization_id=globex.pk, **window) == 0
    assert costs.cost_between(organization_id=deployment.organization_id, deployment_id=0, **window) == 0
    assert (
        costs.cost_between(organization_id=deployment.organization_id, deployment_id=deployment.pk, **window)
        > 0
    )


def test_a_price_change_mid_month_prices_each_hour_at_the_version_in_force(deployment) -> None:
    old = deployment.instance_type.prices.get().hourly_price_usd
    month = datetime(2026, 3, 1, tzinfo=UTC)
    read(deployment, 1, month)
    read(deployment, 1, month + timedelta(days=30))
    change = month + timedelta(days=15, hours=6)
    costs.add_price(
        deployment.instance_type, hourly_price_usd=Decimal("2.5"), effective_from=change, source="test"
    )
    expected = old * (15 * 24 + 6) + Decimal("2.5") * (15 * 24 - 6)
    cost = costs.cost_between(
        organization_id=deployment.organization_id, since=month, until=month + timedelta(days=31)
    )
    assert cost == expected.quantize(Decimal("0.000001"))
    day_total = sum(d.cost_usd for d in ReplicaDay.objects.filter(deployment=deployment))
    assert day_total.quantize(Decimal("0.000001")) == expected.quantize(Decimal("0.000001"))


def test_days_added_to_pass_by_pass_agree_with_their_hours(deployment) -> None:
    for step in range(200):  # a reading every 37 seconds across two hours
        read(deployment, 1 + step % 2, T0 + timedelta(seconds=37 * step))
    days = sum(d.cost_usd for d in ReplicaDay.objects.filter(deployment=deployment))
    hours = costs.cost_between(
        organization_id=deployment.organization_id, since=T0, until=T0 + timedelta(days=1)
    )
    assert sum(d.replica_seconds for d in ReplicaDay.objects.filter(deployment=deployment)) == sum(
        replica_seconds(deployment).values()
    )
    assert abs(days - hours) < Decimal("0.000001")


def test_steady_readings_are_written_to_their_hours_at_most_five_minutes_late(deployment) -> None:
    for minute in range(5):  # a pass that saw nothing change writes no hour
        read(deployment, 2, T0 + timedelta(minutes=minute))
    assert replica_seconds(deployment) == {}
    read(deployment, 2, T0 + timedelta(minutes=5))
    assert replica_seconds(deployment) == {T0: Decimal(2 * 300)}


def test_a_change_of_count_writes_the_steady_stretch_before_it_at_once(deployment) -> None:
    read(deployment, 2, T0)
    read(deployment, 2, T0 + timedelta(minutes=1))
    read(deployment, 1, T0 + timedelta(minutes=2))  # the last minute at the lower end
    assert replica_seconds(deployment) == {T0: Decimal(2 * 60 + 60)}


def test_a_change_of_instance_type_writes_the_steady_stretch_on_the_old_type(deployment) -> None:
    other = InstanceType.objects.get(slug="aws-g6-xlarge")
    read(deployment, 1, T0)
    read(deployment, 1, T0 + timedelta(minutes=2))
    moved = ReplicaReading(deployment.pk, deployment.organization_id, other.pk, 1)
    record_replicas([moved], at=T0 + timedelta(minutes=3))  # when it moved is not known: not metered
    hours = ReplicaHour.objects.filter(deployment=deployment)
    assert [(h.instance_type_id, h.replica_seconds) for h in hours] == [(deployment.instance_type_id, 120)]
