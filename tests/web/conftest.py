"""Fixtures of the web UI tests: signed-in browsers-without-a-browser (Django's test client) for the
standing people, and deployments placed directly in the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving.choices import DeploymentStatus
from serving.models import Deployment, DeploymentEvent

MODEL = "llama-3.1-8b-instruct"
GPU_INSTANCE = "aws-g5-xlarge"


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any) -> None:
    """Deploy to (a fake) Kubernetes: admission needs no engine prepared on this machine."""
    settings.SERVING_BACKEND = "kubernetes"
    settings.KEDA_ENABLED = True


@pytest.fixture
def browser_for(acme: Organization, globex: Organization) -> Callable[[AbstractUser | None], Client]:
    def make(user: AbstractUser | None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def subscribed(acme: Organization, owner: AbstractUser) -> ModelCard:
    card = ModelCard.objects.get(slug=MODEL)
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    return card


def make_deployment(organization: Organization, name: str = "chat", **fields: Any) -> Deployment:
    deployment = Deployment.objects.create(
        organization=organization,
        name=name,
        model_card=ModelCard.objects.get(slug=fields.pop("model", MODEL)),
        instance_type=InstanceType.objects.get(slug=fields.pop("instance_type", GPU_INSTANCE)),
        backend="kubernetes",
        status=fields.pop("status", DeploymentStatus.READY),
        status_message=fields.pop("status_message", "1 of 1 replicas ready."),
        **fields,
    )
    DeploymentEvent.objects.create(deployment=deployment, status="pending", message="Requested it.")
    DeploymentEvent.objects.create(deployment=deployment, status=deployment.status, message="It moved.")
    return deployment


@pytest.fixture
def acme_deployment(acme: Organization) -> Deployment:
    return make_deployment(acme, reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
