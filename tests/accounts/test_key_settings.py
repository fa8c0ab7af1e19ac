"""A key's scope (`allowed_deployments`) and its own per-minute limits: set by owners and admins at
creation and by PATCH, checked against the organisation's live deployments, shown in the list, and
enforced at the REST API as soon as they are saved."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from marketplace.accounts.models import ApiKey, Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving.models import Deployment

pytestmark = pytest.mark.django_db

KEYS = "/api/api-keys/"
DEPLOYMENTS = "/api/deployments/"


def deployment(organization: Organization, name: str, status: str = "ready") -> Deployment:
    return Deployment.objects.create(
        organization=organization,
        name=name,
        model_card=ModelCard.objects.get(slug="llama-3.1-8b-instruct"),
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        backend="kubernetes",
        status=status,
        status_message="",
    )


@pytest.fixture
def chat(acme: Organization) -> Deployment:
    return deployment(acme, "chat")


@pytest.fixture
def other(acme: Organization) -> Deployment:
    return deployment(acme, "other")


def create(client: APIClient, **body: Any) -> Any:
    return client.post(KEYS, {"name": "ci", **body}, format="json")


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_owner_creates_a_scoped_key_with_limits_shown_in_the_list(client_for, owner, chat, other) -> None:
    client = client_for(owner)
    body = {"allowed_deployments": ["chat"], "requests_per_minute": 60, "tokens_per_minute": 100_000}
    response = create(client, **body)
    assert response.status_code == 201, response.content
    key = ApiKey.objects.get(pk=response.json()["id"])
    assert (key.allowed_deployments, key.requests_per_minute, key.tokens_per_minute) == (
        ["chat"],
        60,
        100_000,
    )
    listed = client.get(KEYS).json()["results"][0]
    assert {name: listed[name] for name in body} == body


def test_a_key_created_with_a_scope_is_refused_outside_it(client_for, owner, chat, other) -> None:
    secret = create(client_for(owner), allowed_deployments=["chat"]).json()["key"]
    limited = bearer(secret)
    assert limited.get(f"{DEPLOYMENTS}{other.pk}/").status_code == 404
    assert limited.get(f"{DEPLOYMENTS}{chat.pk}/").status_code == 200


def test_unknown_deployment_names_are_refused_naming_them(client_for, owner, acme, globex, chat) -> None:
    deployment(acme, "gone", status="deleted")
    deployment(globex, "theirs")
    response = create(client_for(owner), allowed_deployments=["chat", "gone", "theirs", "nowhere"])
    assert response.status_code == 400
    message = response.json()["allowed_deployments"][0]
    assert "no live deployments named 'gone', 'theirs', 'nowhere'" in message
    assert "'chat'" not in message
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "body",
    [{"requests_per_minute": 0}, {"requests_per_minute": 10**8}, {"tokens_per_minute": -1},
     {"tokens_per_minute": 10**11}, {"requests_per_minute": "many"}, {"allowed_deployments": "chat"},
     {"allowed_deployments": ["x" * 64]}],
)  # fmt: skip
def test_bad_limits_are_refused_naming_the_field(client_for, owner, body) -> None:
    response = create(client_for(owner), **body)
    assert response.status_code == 400
    assert list(response.json()) == list(body)
    assert not ApiKey.objects.exists()


def test_owner_narrows_a_key_later_and_the_rest_api_follows(client_for, owner, chat, other) -> None:
    client = client_for(owner)
    created = create(client).json()
    key_client = bearer(created["key"])
    assert key_client.get(f"{DEPLOYMENTS}{other.pk}/").status_code == 200
    response = client.patch(
        f"{KEYS}{created['id']}/", {"allowed_deployments": ["chat"], "requests_per_minute": 30}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["allowed_deployments"], response.json()["requests_per_minute"]) == (["chat"], 30)
    assert response.json()["name"] == "ci"  # what the PATCH left out stays
    assert key_client.get(f"{DEPLOYMENTS}{other.pk}/").status_code == 404
    assert key_client.get(f"{DEPLOYMENTS}{chat.pk}/").status_code == 200


def test_owner_lifts_a_scope_and_a_limit(client_for, owner, chat, other) -> None:
    client = client_for(owner)
    created = create(client, allowed_deployments=["chat"], tokens_per_minute=500).json()
    body = {"allowed_deployments": [], "tokens_per_minute": None}
    assert client.patch(f"{KEYS}{created['id']}/", body, format="json").status_code == 200
    key = ApiKey.objects.get(pk=created["id"])
    assert (key.allowed_deployments, key.tokens_per_minute) == ([], None)
    assert bearer(created["key"]).get(f"{DEPLOYMENTS}{other.pk}/").status_code == 200


def test_a_refused_patch_writes_nothing(client_for, owner, chat) -> None:
    client = client_for(owner)
    created = create(client, allowed_deployments=["chat"]).json()
    body = {"name": "renamed", "allowed_deployments": ["nowhere"], "requests_per_minute": 5}
    response = client.patch(f"{KEYS}{created['id']}/", body, format="json")
    assert response.status_code == 400 and "'nowhere'" in response.json()["allowed_deployments"][0]
    key = ApiKey.objects.get(pk=created["id"])
    assert (key.name, key.allowed_deployments, key.requests_per_minute) == ("ci", ["chat"], None)


def test_put_is_not_offered(client_for, owner) -> None:
    created = create(client_for(owner)).json()
    response = client_for(owner).put(f"{KEYS}{created['id']}/", {"name": "x"}, format="json")
    assert response.status_code == 405


def test_member_cannot_change_a_key(client_for, owner, member, chat) -> None:
    created = create(client_for(owner)).json()
    response = client_for(member).patch(
        f"{KEYS}{created['id']}/", {"allowed_deployments": ["chat"]}, format="json"
    )
    assert response.status_code == 403
    assert ApiKey.objects.get(pk=created["id"]).allowed_deployments == []


def test_a_key_cannot_change_keys(client_for, owner, api_key_client, acme, chat) -> None:
    created = create(client_for(owner)).json()
    client, _ = api_key_client(acme)
    response = client.patch(f"{KEYS}{created['id']}/", {"requests_per_minute": 1}, format="json")
    assert response.status_code == 403
    assert ApiKey.objects.get(pk=created["id"]).requests_per_minute is None


def test_outsider_cannot_edit_another_organisations_key(client_for, owner, outsider, globex) -> None:
    created = create(client_for(owner)).json()
    deployment(globex, "theirs")
    body = {"allowed_deployments": ["theirs"], "requests_per_minute": 1}
    response = client_for(outsider).patch(f"{KEYS}{created['id']}/", body, format="json")
    assert response.status_code == 404
    key = ApiKey.objects.get(pk=created["id"])
    assert (key.allowed_deployments, key.requests_per_minute) == ([], None)
