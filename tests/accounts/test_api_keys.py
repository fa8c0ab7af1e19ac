"""API keys: shown once, stored hashed, revocable, expiring, and confined to their organisation."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.accounts.models import ApiKey, hash_api_key

pytestmark = pytest.mark.django_db

KEYS = "/api/api-keys/"


def create(client, **body):
    return client.post(KEYS, {"name": "ci", **body}, format="json")


def test_the_secret_is_shown_once_and_only_its_hash_is_stored(client_for, owner) -> None:
    client = client_for(owner)
    response = create(client)
    assert response.status_code == 201
    secret = response.json()["key"]
    assert secret.startswith("mk-") and len(secret) > 40
    stored = ApiKey.objects.get(pk=response.json()["id"])
    assert stored.hashed_key == hash_api_key(secret)
    assert secret not in {str(value) for value in stored.__dict__.values()}
    assert secret.startswith(stored.prefix)
    listed = client.get(KEYS).json()["results"]
    assert "key" not in listed[0]
    assert secret not in str(client.get(f"{KEYS}{stored.pk}/").content)


def test_a_key_authenticates_as_its_organisation(client_for, owner, api_key_client) -> None:
    client, _ = api_key_client(owner.memberships.get().organization)
    rows = client.get("/api/organizations/").json()["results"]
    assert [r["slug"] for r in rows] == ["acme"]


def test_a_key_cannot_reach_another_organisation(api_key_client, acme) -> None:
    client, _ = api_key_client(acme)
    assert client.get("/api/organizations/globex/").status_code == 404
    assert client.get("/api/organizations/globex/quota/").status_code == 404
    assert create(client, organization="globex").status_code == 400


def test_a_key_cannot_mint_keys(api_key_client, acme) -> None:
    client, _ = api_key_client(acme)
    assert create(client).status_code == 403


def test_revoked_keys_stop_working(client_for, owner) -> None:
    client = client_for(owner)
    created = create(client).json()
    key_client = APIClient()
    key_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created['key']}")
    assert key_client.get("/api/organizations/").status_code == 200
    assert client.post(f"{KEYS}{created['id']}/revoke/").status_code == 200
    assert key_client.get("/api/organizations/").status_code == 401
    # Revoking twice is harmless and keeps the first time.
    first = ApiKey.objects.get(pk=created["id"]).revoked_at
    assert client.delete(f"{KEYS}{created['id']}/").status_code == 204
    assert ApiKey.objects.get(pk=created["id"]).revoked_at == first


def test_expired_keys_stop_working(client_for, owner) -> None:
    created = create(client_for(owner), expires_at=(timezone.now() + timedelta(hours=1)).isoformat()).json()
    ApiKey.objects.filter(pk=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    key_client = APIClient()
    key_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created['key']}")
    assert key_client.get("/api/organizations/").status_code == 401


def test_a_made_up_key_is_refused(client_for) -> None:
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION="Bearer mk-made-up")
    assert client.get("/api/organizations/").status_code == 401


def test_outsider_cannot_see_or_revoke_keys(client_for, owner, outsider) -> None:
    created = create(client_for(owner)).json()
    client = client_for(outsider)
    assert created["id"] not in [k["id"] for k in client.get(KEYS).json()["results"]]
    assert client.get(f"{KEYS}{created['id']}/").status_code == 404
    assert client.post(f"{KEYS}{created['id']}/revoke/").status_code == 404
    assert ApiKey.objects.get(pk=created["id"]).revoked_at is None


def test_members_create_keys_but_cannot_revoke_others(client_for, owner, member) -> None:
    created = create(client_for(owner)).json()
    client = client_for(member)
    assert create(client).status_code == 201
    assert client.post(f"{KEYS}{created['id']}/revoke/").status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": ""}, "name"), ({"name": "x" * 101}, "name"), ({"expires_at": "yesterday"}, "expires_at"),
     ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"), ({"organization": "nowhere"}, "organization")],
)  # fmt: skip
def test_bad_key_input_names_the_field(client_for, owner, body, field) -> None:
    response = client_for(owner).post(KEYS, {"name": "ok", **body}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not ApiKey.objects.exists()


def test_someone_in_two_organisations_must_name_one(client_for, owner, globex) -> None:
    globex.memberships.create(user=owner, role="owner")
    response = create(client_for(owner))
    assert response.status_code == 400 and "organization" in response.json()
    assert create(client_for(owner), organization="globex").status_code == 201
