"""On a machine without Kubernetes (SERVING_BACKEND=local), only what can run here is admitted, and a
refusal says why and what to do instead; nothing is created. (What this machine can hold at the moment,
cores and memory, is the engine supervisor's to decide: tests/serving/test_engine_placement.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving.local import capacity
from serving.models import Deployment

DEPLOYMENTS = "/api/deployments/"


@pytest.fixture(autouse=True)
def _local(settings: Any, monkeypatch: Any, tmp_path: Any) -> None:
    settings.SERVING_BACKEND = "local"
    monkeypatch.setenv("ENGINE_DIR", str(tmp_path / "no-engine-here"))  # `make engine` not run


@pytest.fixture
def subscribed(acme, owner) -> None:
    for slug in ("llama-3.1-8b-instruct", "smollm2-135m-instruct"):
        subscribe(organization=acme, card=ModelCard.objects.get(slug=slug), license_sha256=None, user=owner)


def create(client, **body: Any):
    return client.post(DEPLOYMENTS, {"name": "chat", **body}, format="json")


def test_a_gpu_instance_is_refused_on_this_machine(client_for, member, subscribed) -> None:
    response = create(client_for(member), model="llama-3.1-8b-instruct", instance_type="aws-g5-xlarge")
    assert response.status_code == 400
    assert "SERVING_BACKEND=local" in response.json()["instance_type"][0]
    assert "which has no GPUs" in response.json()["instance_type"][0]


def test_a_model_that_needs_a_gpu_is_refused_on_the_cpu(client_for, member, subscribed) -> None:
    response = create(client_for(member), model="llama-3.1-8b-instruct", instance_type="local-cpu")
    assert response.status_code == 400
    assert response.json()["instance_type"] == [
        "Llama 3.1 8B Instruct cannot run on CPU; choose a GPU instance type."
    ]


def test_a_cpu_model_is_refused_until_the_engine_is_prepared(client_for, member, subscribed) -> None:
    response = create(client_for(member), model="smollm2-135m-instruct", instance_type="local-cpu")
    assert response.status_code == 400
    message = response.json()["model"][0]
    assert message.startswith("SmolLM2 135M Instruct cannot run on this machine") and "make engine" in message
    assert not Deployment.objects.exists()


def test_more_replicas_than_this_machine_has_cores_are_refused(
    client_for, member, subscribed, monkeypatch
) -> None:
    monkeypatch.setattr(capacity, "allowed_cores", lambda: (0, 1))
    response = create(
        client_for(member), model="smollm2-135m-instruct", instance_type="local-cpu", min_replicas=3,
        max_replicas=3,
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["max_replicas"] == [
        "This machine has 2 CPU cores and each replica keeps 1 to itself, so at most 2 replicas can run "
        "here: lower max replicas, or deploy to a cluster with SERVING_BACKEND=kubernetes."
    ]
    assert not Deployment.objects.exists()


def test_scaling_beyond_this_machines_cores_is_refused(
    client_for, member, acme, subscribed, monkeypatch
) -> None:
    monkeypatch.setattr(capacity, "allowed_cores", lambda: (0, 1))
    deployment = make_deployment(acme)
    response = client_for(member).post(
        f"{DEPLOYMENTS}{deployment.pk}/scale/", {"min_replicas": 4, "max_replicas": 4}, format="json"
    )
    assert (
        response.status_code == 400
        and "at most 2 replicas can run here" in response.json()["max_replicas"][0]
    )
    assert Deployment.objects.get(pk=deployment.pk).max_replicas == 1


def test_outsider_cannot_scale_a_local_deployment(client_for, outsider, acme) -> None:
    deployment = make_deployment(acme)
    response = client_for(outsider).post(
        f"{DEPLOYMENTS}{deployment.pk}/scale/", {"min_replicas": 2, "max_replicas": 2}, format="json"
    )
    assert response.status_code == 404
    assert Deployment.objects.get(pk=deployment.pk).max_replicas == 1


def make_deployment(organization) -> Deployment:
    return Deployment.objects.create(
        organization=organization,
        name="chat",
        model_card=ModelCard.objects.get(slug="smollm2-135m-instruct"),
        instance_type=InstanceType.objects.get(slug="local-cpu"),
        backend="local",
        status="ready",
    )
