"""A key limited to some deployments (`allowed_deployments`) is limited on every route, not only at the
gateway: other deployments answer it 404 as to an outsider, their usage is not its to read, and the rest
of its organisation (people, keys, subscriptions, quota) answers it 403."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.accounts import services as account_services
from marketplace.accounts.models import ApiKey, Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving.models import Deployment, UsageRecord

pytestmark = pytest.mark.django_db

DEPLOYMENTS = "/api/deployments/"


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any) -> None:
    settings.SERVING_BACKEND = "kubernetes"


def deployment(organization: Organization, name: str) -> Deployment:
    return Deployment.objects.create(
        organization=organization,
        name=name,
        model_card=ModelCard.objects.get(slug="llama-3.1-8b-instruct"),
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        backend="kubernetes",
        status="ready",
        status_message="1 of 1 replicas ready.",
    )


def key_client(organization: Organization, allowed: list[str]) -> APIClient:
    key, secret = account_services.create_api_key(
        organization=organization, name="limited", created_by=None, expires_at=None
    )
    ApiKey.objects.filter(pk=key.pk).update(allowed_deployments=allowed)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def chat(acme: Organization) -> Deployment:
    return deployment(acme, "chat")


@pytest.fixture
def other(acme: Organization) -> Deployment:
    return deployment(acme, "other")


@pytest.fixture
def limited(acme: Organization, globex: Organization) -> APIClient:
    return key_client(acme, ["chat"])


def test_a_limited_key_lists_only_its_deployments(limited, chat, other) -> None:
    assert [row["name"] for row in limited.get(DEPLOYMENTS).json()["results"]] == ["chat"]


def test_a_limited_key_cannot_read_scale_update_or_delete_another_deployment(limited, chat, other) -> None:
    for method, path, data in [
        ("get", f"{DEPLOYMENTS}{other.pk}/", None),
        ("get", f"{DEPLOYMENTS}{other.pk}/manifests/", None),
        ("post", f"{DEPLOYMENTS}{other.pk}/scale/", {"min_replicas": 1, "max_replicas": 1}),
        ("patch", f"{DEPLOYMENTS}{other.pk}/", {"engine_options": {"max_model_len": 4096}}),
        ("delete", f"{DEPLOYMENTS}{other.pk}/", None),
    ]:
        assert getattr(limited, method)(path, data, format="json").status_code == 404, (method, path)
    other.refresh_from_db()
    assert (other.status, other.generation) == ("ready", 1)


def test_a_limited_key_acts_on_its_own_deployment(limited, chat, other) -> None:
    assert limited.get(f"{DEPLOYMENTS}{chat.pk}/").json()["name"] == "chat"
    assert limited.delete(f"{DEPLOYMENTS}{chat.pk}/").status_code == 202
    assert Deployment.objects.get(pk=chat.pk).status == "deleting"


def test_a_limited_key_creates_a_deployment_only_under_its_names(limited) -> None:
    body = {"name": "elsewhere", "model": "llama-3.1-8b-instruct", "instance_type": "aws-g5-xlarge"}
    response = limited.post(DEPLOYMENTS, body, format="json")
    assert response.status_code == 403
    assert "limited to the deployment chat" in response.json()["detail"]
    assert "'elsewhere'" in response.json()["detail"]
    assert not Deployment.objects.exists()


def test_a_limited_key_reads_only_its_deployments_usage(limited, chat, other, acme) -> None:
    for target, tokens in ((chat, 10), (other, 1000), (None, 5000)):
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex, organization=acme, deployment=target, model="x",
            route="chat.completions", prompt_tokens=tokens, completion_tokens=0, latency_ms=5,
            status_code=200, created_at=timezone.now(),
        )  # fmt: skip
    rows = limited.get("/api/usage/", {"group_by": "deployment"}).json()["results"]
    assert [(row["deployment"], row["prompt_tokens"]) for row in rows] == [("chat", 10)]


@pytest.mark.parametrize(
    "path",
    [
        "/api/api-keys/",
        "/api/subscriptions/",
        "/api/organizations/",
        "/api/organizations/acme/",
        "/api/organizations/acme/members/",
        "/api/organizations/acme/members/mario/",
        "/api/organizations/acme/quota/",
    ],
)
def test_the_rest_of_its_organisation_refuses_a_limited_key(limited, path) -> None:
    response = limited.get(path)
    assert response.status_code == 403
    assert "limited to the deployment chat" in response.json()["detail"]


def test_a_limited_key_still_reads_the_public_catalog(limited) -> None:
    assert limited.get("/api/models/").status_code == 200


def test_a_key_of_the_whole_organisation_sees_every_deployment(acme, globex, chat, other) -> None:
    client = key_client(acme, [])
    assert sorted(row["name"] for row in client.get(DEPLOYMENTS).json()["results"]) == ["chat", "other"]
    assert client.get("/api/subscriptions/").status_code == 200


def test_an_outsiders_limited_key_reaches_nothing_of_acme(globex, acme, chat) -> None:
    client = key_client(globex, ["chat"])  # the same name in another organisation gives no access
    assert client.get(DEPLOYMENTS).json()["results"] == []
    assert client.get(f"{DEPLOYMENTS}{chat.pk}/").status_code == 404
    assert client.delete(f"{DEPLOYMENTS}{chat.pk}/").status_code == 404
