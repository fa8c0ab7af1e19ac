"""The quota reservation is atomic: many concurrent creates never overshoot it (real PostgreSQL)."""

import threading
from typing import Any

from django.db import connection
from rest_framework.exceptions import ValidationError

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import services
from serving.models import Deployment
from tests.conftest import make_user

CONCURRENT = 50


def test_fifty_concurrent_creates_never_overshoot_the_gpu_quota(
    transactional_catalog: None, settings: Any, monkeypatch: Any
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    enqueued: list[int] = []
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: enqueued.append(deployment_id))
    owner = make_user("racer")
    organization = account_services.create_organization(slug="race", name="Race", owner=owner)
    Quota.objects.filter(organization=organization).update(max_gpus=20, max_deployments=1000)
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    subscribe(organization=organization, card=card, license_sha256=None, user=owner)
    instance = InstanceType.objects.get(slug="aws-g5-12xlarge")  # 4 GPUs per replica: at most 5 fit in 20
    outcomes = race_to_create(organization, owner, card, instance, CONCURRENT)

    assert outcomes.count("created") == 5
    assert Deployment.objects.filter(organization=organization).count() == 5
    assert sum(Deployment.objects.values_list("reserved_gpus", flat=True)) == 20
    refusals = [o for o in outcomes if o != "created"]
    assert len(refusals) == 45 and all("quota leaves 0 of 20" in r for r in refusals)
    assert len(enqueued) == 5


def test_twenty_concurrent_creates_never_overshoot_the_cpu_replica_quota(
    transactional_catalog: None, settings: Any, monkeypatch: Any
) -> None:
    settings.SERVING_BACKEND = "local"
    monkeypatch.setattr(services, "check_runnable_here", lambda card, backend: None)
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    owner = make_user("cpu-racer")
    organization = account_services.create_organization(slug="cpu-race", name="CPU race", owner=owner)
    Quota.objects.filter(organization=organization).update(max_cpu_replicas=4, max_deployments=1000)
    card = ModelCard.objects.get(slug="smollm2-135m-instruct")
    subscribe(organization=organization, card=card, license_sha256=None, user=owner)
    instance = InstanceType.objects.get(slug="local-cpu")
    outcomes = race_to_create(organization, owner, card, instance, 20)

    assert outcomes.count("created") == 4
    assert Deployment.objects.filter(organization=organization).count() == 4
    refusals = [o for o in outcomes if o != "created"]
    assert len(refusals) == 16 and all("CPU replica quota leaves 0 of 4" in r for r in refusals)


def race_to_create(
    organization: Organization, owner: Any, card: ModelCard, instance: InstanceType, racers: int
) -> list[str]:
    """`racers` threads create a one-replica deployment each at the same moment; what each was told."""
    start = threading.Barrier(racers)
    outcomes: list[str] = []

    def create(number: int) -> None:
        try:
            start.wait()
            services.create_deployment(
                organization=organization, user=owner, name=f"d{number}", card=card, instance_type=instance,
                scaling=services.Scaling(min_replicas=1, max_replicas=1), engine_options={},
            )  # fmt: skip
            outcomes.append("created")
        except ValidationError as error:
            outcomes.append(str(error.detail))
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
