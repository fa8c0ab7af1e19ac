"""On a machine without Kubernetes (SERVING_BACKEND=local), only what can run here is admitted, and a
refusal says why and what to do instead; nothing is created."""

from __future__ import annotations

from typing import Any

import pytest

from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
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
