"""Unsubscribing and deploying serialise on the organisation's quota row (real PostgreSQL, two threads):
a deployment admitted while an unsubscribe is deciding is refused once the cancellation commits, and
an unsubscribe that waited for a deployment being admitted sees it and is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction
from rest_framework.exceptions import ValidationError

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from marketplace.api import Conflict
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.models import Subscription, SubscriptionStatus
from marketplace.subscriptions.services import subscribe, unsubscribe
from serving import services
from serving.models import Deployment
from tests.conftest import make_user

MODEL = "llama-3.1-8b-instruct"


@pytest.fixture
def race(transactional_catalog: None, settings: Any, monkeypatch: Any) -> tuple[Organization, Subscription]:
    settings.SERVING_BACKEND = "kubernetes"
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    owner = make_user("racer")
    organization = account_services.create_organization(slug="race", name="Race", owner=owner)
    subscription, _ = subscribe(
        organization=organization, card=ModelCard.objects.get(slug=MODEL), license_sha256=None, user=owner
    )
    return organization, subscription


def create(organization: Organization) -> Deployment:
    return services.create_deployment(
        organization=organization, user=None, name="chat", card=ModelCard.objects.get(slug=MODEL),
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        scaling=services.Scaling(min_replicas=1, max_replicas=1), engine_options={},
    )  # fmt: skip


def wait_until_blocked_on_a_lock(count: int = 1) -> None:
    """Until `count` other connections of the test database wait on a row lock (at most 10 s)."""
    deadline = time.monotonic() + 10
    with connections["default"].cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.01)
    raise AssertionError("the second transaction never waited on the quota row's lock")


def hold_then_commit(work: Callable[[], Any], holding: threading.Event, release: threading.Event) -> Any:
    """Run `work` in a transaction that stays open, its locks held, until `release` is set."""
    try:
        with transaction.atomic():
            result = work()
            holding.set()
            assert release.wait(10)
        return result
    finally:
        connection.close()


def test_a_deployment_admitted_during_an_unsubscribe_is_refused(race) -> None:
    organization, subscription = race
    holding, release = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def deploy() -> None:
        try:
            holding.wait(10)
            outcome.append(create(organization))  # passes the early check: the cancellation is uncommitted
        except ValidationError as error:
            outcome.append(error.detail)
        finally:
            connection.close()

    unsubscriber = threading.Thread(
        target=hold_then_commit, args=(lambda: unsubscribe(subscription), holding, release)
    )
    deployer = threading.Thread(target=deploy)
    unsubscriber.start()
    deployer.start()
    try:
        assert holding.wait(10)
        wait_until_blocked_on_a_lock()
    finally:
        release.set()
        unsubscriber.join()
        deployer.join()

    assert Subscription.objects.get(pk=subscription.pk).status == SubscriptionStatus.CANCELLED
    assert not Deployment.objects.exists()
    assert "not subscribed" in str(outcome[0]["model"][0])


def test_an_unsubscribe_waiting_for_a_deployment_being_admitted_is_refused(race) -> None:
    organization, subscription = race
    holding, release = threading.Event(), threading.Event()
    outcome: list[str] = []

    def cancel() -> None:
        try:
            holding.wait(10)
            unsubscribe(subscription)
            outcome.append("cancelled")
        except Conflict as error:
            outcome.append(str(error.detail))
        finally:
            connection.close()

    deployer = threading.Thread(
        target=hold_then_commit, args=(lambda: create(organization), holding, release)
    )
    canceller = threading.Thread(target=cancel)
    deployer.start()
    canceller.start()
    try:
        assert holding.wait(10)
        wait_until_blocked_on_a_lock()
    finally:
        release.set()
        deployer.join()
        canceller.join()

    assert Deployment.objects.filter(organization=organization, name="chat").exists()
    assert Subscription.objects.get(pk=subscription.pk).status == SubscriptionStatus.ACTIVE
    assert "still runs 1 deployment of Llama 3.1 8B Instruct: chat" in outcome[0]
