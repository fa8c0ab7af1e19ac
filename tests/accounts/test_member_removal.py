"""Removing a member revokes the organisation's API keys they created (as a cloud provider disables a
departing user's access keys); the answer says how many. Keys made by others, or by them elsewhere, stay."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from marketplace.accounts import services
from marketplace.accounts.choices import Role
from marketplace.accounts.models import ApiKey, Membership
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

MEMBERS = "/api/organizations/acme/members/"


@pytest.fixture
def admin(acme):
    person = make_user("ada")
    Membership.objects.create(organization=acme, user=person, role=Role.ADMIN)
    return person


def key(organization, created_by, name="k"):
    return services.create_api_key(
        organization=organization, name=name, created_by=created_by, expires_at=None
    )


def test_removing_an_admin_revokes_the_keys_they_created(client_for, owner, admin, acme) -> None:
    (first, _), (second, _) = key(acme, admin, "ci"), key(acme, admin, "app")
    response = client_for(owner).delete(f"{MEMBERS}ada/")
    assert response.status_code == 200
    assert response.json()["revoked_api_keys"] == 2
    assert "the 2 API keys they created were revoked" in response.json()["detail"]
    assert ApiKey.objects.filter(pk__in=[first.pk, second.pk], revoked_at__isnull=False).count() == 2


def test_a_revoked_key_no_longer_authenticates(client_for, owner, admin, acme) -> None:
    _, secret = key(acme, admin)
    client_for(owner).delete(f"{MEMBERS}ada/")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/deployments/").status_code == 401


def test_keys_made_by_others_or_in_other_organisations_stay(client_for, owner, admin, acme, globex) -> None:
    (owners_key, _), (already_revoked, _) = key(acme, owner), key(acme, admin)
    services.revoke_api_key(already_revoked)
    Membership.objects.create(organization=globex, user=admin, role=Role.ADMIN)
    elsewhere, _ = key(globex, admin)
    response = client_for(owner).delete(f"{MEMBERS}ada/")
    assert response.json()["revoked_api_keys"] == 0  # the one they made here was already revoked
    assert ApiKey.objects.get(pk=owners_key.pk).is_active
    assert ApiKey.objects.get(pk=elsewhere.pk).is_active


def test_leaving_revokes_ones_own_keys_too(client_for, admin, acme) -> None:
    made, _ = key(acme, admin)
    response = client_for(admin).delete(f"{MEMBERS}ada/")
    assert response.json()["revoked_api_keys"] == 1
    assert not ApiKey.objects.get(pk=made.pk).is_active


def test_a_refused_removal_revokes_nothing(client_for, owner, member, acme) -> None:
    made, _ = key(acme, owner)
    assert client_for(member).delete(f"{MEMBERS}olivia/").status_code == 403
    assert ApiKey.objects.get(pk=made.pk).is_active


def test_an_outsider_cannot_remove_anyone_or_revoke_their_keys(client_for, outsider, admin, acme) -> None:
    made, _ = key(acme, admin)
    assert client_for(outsider).delete(f"{MEMBERS}ada/").status_code == 404
    assert ApiKey.objects.get(pk=made.pk).is_active
    assert Membership.objects.filter(organization=acme, user=admin).exists()


def test_deleting_a_persons_account_revokes_the_keys_they_created(owner, admin, acme) -> None:
    made, _ = key(acme, admin)
    owners_key, _ = key(acme, owner)
    admin.delete()  # e.g. by a platform admin on the admin site: memberships go by cascade
    made.refresh_from_db()
    assert made.revoked_at is not None and made.created_by is None
    assert ApiKey.objects.get(pk=owners_key.pk).is_active
