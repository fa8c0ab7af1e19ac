"""The reconciler meters what it observes, for both backends, exactly across its own gaps and a worker's
restart; two workers metering at once never count an interval twice (real PostgreSQL, real threads)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving import manifests, services, tasks
from serving.backends.base import Observation, ObservationPass
from serving.backends.kubernetes import KubernetesBackend
from serving.costs import ReplicaReading, record_replicas
from serving.models import Deployment, ReplicaHour, ReplicaMeter
from tests.conftest import make_user
from tests.serving.conftest import backend_for
from tests.serving.cost_data import created_deployment
from tests.serving.fake_kubernetes import FakeKubernetes


class Clock:
    """The reconciler's `timezone`, at a moment the test moves."""

    def __init__(self) -> None:
        self.moment = timezone.now()

    def now(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(tasks, "timezone", SimpleNamespace(now=clock.now))
    return clock


@pytest.fixture
def chat(acme: Organization, owner: User, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    settings.SERVING_BACKEND = "kubernetes"
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    return created_deployment(acme, owner, replicas=2)


def metered(deployment: Deployment) -> Decimal:
    """Replica-seconds in the hours, and those of the steady stretch its meter has yet to write."""
    total = ReplicaHour.objects.filter(deployment=deployment).aggregate(s=Sum("replica_seconds"))["s"]
    meter = ReplicaMeter.objects.get(deployment=deployment)
    unwritten = Decimal((meter.observed_at - meter.metered_until).total_seconds()) * meter.ready_replicas
    return (total or Decimal(0)) + unwritten


@pytest.fixture
def provisioned(
    chat: Deployment, fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> str:  # fmt: skip
    """The chat deployment provisioned on the fake cluster, which the worker's tasks reach; its name there."""
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: kubernetes_backend)
    tasks.provision_deployment.apply(args=[chat.pk]).get()
    return manifests.object_name(services.spec_for(chat))


@pytest.mark.django_db
def test_replica_seconds_through_a_reconciler_gap_and_a_worker_restart(
    chat, provisioned: str, fake_kubernetes: FakeKubernetes, clock, monkeypatch
) -> None:
    name = provisioned
    fake_kubernetes.set_deployment_status(name, replicas=2, ready_replicas=1)
    tasks.reconcile_once()  # opens the meter: 1 ready
    clock.advance(minutes=10)
    fake_kubernetes.set_deployment_status(name, replicas=2, ready_replicas=2)
    tasks.reconcile_once()  # 10 minutes at the lower end, 1 replica
    assert metered(chat) == 600

    # The worker dies; a new one starts (a new backend client, no lock left) two hours later.
    cache.delete("serving:reconcile:lock")
    restarted = backend_for(fake_kubernetes.url)
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: restarted)
    clock.advance(hours=2)
    tasks.reconcile_once()
    restarted.api_client.close()
    assert metered(chat) == 600 + 2 * 7200


@pytest.mark.django_db
def test_an_unreachable_cluster_leaves_a_gap_that_the_next_reading_closes(
    chat, provisioned: str, fake_kubernetes: FakeKubernetes, clock
) -> None:
    fake_kubernetes.set_deployment_status(provisioned, replicas=2, ready_replicas=2)
    tasks.reconcile_once()
    clock.advance(minutes=30)
    fake_kubernetes.fail_next(503)
    tasks.reconcile_once()  # nothing observed: nothing metered, the meter stays where it was
    assert metered(chat) == 0
    clock.advance(minutes=30)
    tasks.reconcile_once()
    assert metered(chat) == 2 * 3600


@pytest.mark.django_db
def test_local_deployments_are_metered_by_the_same_pass(acme: Organization, clock, monkeypatch) -> None:
    local = Deployment.objects.create(
        organization=acme, name="tiny", backend="local", status="ready",
        model_card=ModelCard.objects.get(slug="smollm2-135m-instruct"),
        instance_type=InstanceType.objects.get(slug="local-cpu"),
    )  # fmt: skip
    seen = ObservationPass(
        observations={local.pk: Observation(local.pk, generation=1, desired_replicas=1, ready_replicas=1)},
        owned_ids={local.pk},
    )
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: SimpleNamespace(observe=lambda: seen))
    monkeypatch.setattr(tasks.settings, "SERVING_BACKEND", "local")
    tasks.reconcile_once()
    clock.advance(seconds=90)
    tasks.reconcile_once()
    assert metered(local) == 90
    assert not ReplicaHour.objects.filter(deployment=local).exists()  # written within METER_FLUSH
    clock.advance(minutes=5)
    tasks.reconcile_once()
    assert ReplicaHour.objects.filter(deployment=local).aggregate(s=Sum("replica_seconds"))["s"] == 390


def test_two_workers_metering_at_once_count_every_interval_once(transactional_catalog: None) -> None:
    owner = make_user("metered")
    organization = account_services.create_organization(slug="metered", name="Metered", owner=owner)
    instance = InstanceType.objects.get(slug="aws-g5-xlarge")
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    deployments = [
        Deployment.objects.create(
            organization=organization,
            name=f"d{n}",
            backend="kubernetes",
            model_card=card,
            instance_type=instance,
            status="ready",
        )
        for n in range(12)
    ]
    start = datetime(2026, 5, 4, 22, 0, tzinfo=UTC)
    readings = [ReplicaReading(d.pk, organization.pk, instance.pk, 3) for d in deployments]
    record_replicas(readings, at=start)
    workers, passes = 2, 40
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            for n in range(passes):
                # Both see every deployment; their clocks interleave, so half their readings arrive late.
                moment = start + timedelta(minutes=7 * n + offset)
                mine = readings if n % 2 else list(reversed(readings))
                record_replicas(mine, at=moment)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    last = start + timedelta(minutes=7 * (passes - 1) + workers - 1)
    expected = Decimal((last - start).total_seconds()) * 3
    totals = {d.pk: metered(d) for d in deployments}
    assert totals == {d.pk: expected for d in deployments}
