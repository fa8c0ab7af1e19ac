"""The organisation page's table of what each role may do (accounts/rights.py) is what the service does:
every right is tried, as an owner, an admin and a member, against the real REST endpoint it names, and
the answer must be allowed exactly where the table says so (issue 17, item 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from marketplace.accounts import rights
from marketplace.accounts.choices import Role
from marketplace.accounts.models import Membership, Organization
from marketplace.accounts.services import create_api_key
from tests.conftest import make_user
from tests.web.conftest import make_deployment

Probe = Callable[[APIClient, Organization, AbstractUser], int]


def _see(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    return client.get("/api/organizations/acme/members/").status_code


def _deploy(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    deployment = make_deployment(acme, name="probe")
    return client.delete(f"/api/deployments/{deployment.pk}/").status_code


def _create_keys(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    return client.post("/api/api-keys/", {"name": "probe"}, format="json").status_code


def _manage_keys(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    key, _ = create_api_key(organization=acme, name="theirs", created_by=other, expires_at=None)
    return client.post(f"/api/api-keys/{key.pk}/revoke/").status_code


def _subscribe(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    body = {"model": "smollm2-135m-instruct", "accept_license": True}
    return client.post("/api/subscriptions/", body, format="json").status_code


def _manage_members(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    make_user("newcomer")
    body = {"username": "newcomer", "role": "member"}
    return client.post("/api/organizations/acme/members/", body, format="json").status_code


def _manage_owners(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    return client.patch(
        f"/api/organizations/acme/members/{other.username}/", {"role": "owner"}, format="json"
    ).status_code


def _learning(client: APIClient, acme: Organization, other: AbstractUser) -> int:
    return client.patch("/api/invocation-log-settings/acme/", {"enabled": True}, format="json").status_code


PROBES: dict[str, Probe] = {
    "see": _see,
    "deploy": _deploy,
    "create_keys": _create_keys,
    "manage_keys": _manage_keys,
    "subscribe": _subscribe,
    "manage_members": _manage_members,
    "manage_owners": _manage_owners,
    "learning": _learning,
}


def test_every_right_on_the_page_has_a_probe() -> None:
    assert sorted(PROBES) == sorted(right.name for right in rights.RIGHTS)


@pytest.fixture
def person_in_role(acme: Organization, owner: AbstractUser, member: AbstractUser) -> Callable[[str], Any]:
    def make(role: str) -> AbstractUser:
        if role == Role.OWNER:
            return owner
        if role == Role.MEMBER:
            return member
        admin = make_user("ada")
        Membership.objects.create(organization=acme, user=admin, role=Role.ADMIN)
        return admin

    return make


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.MEMBER])
@pytest.mark.parametrize("right", rights.RIGHTS, ids=lambda right: right.name)
def test_each_role_may_do_exactly_what_the_table_says(
    role: str, right: rights.Right, acme: Organization, person_in_role: Any, settings: Any
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    person = person_in_role(role)
    other = make_user("other")
    Membership.objects.create(organization=acme, user=other, role=Role.MEMBER)
    client = APIClient()
    client.force_authenticate(person)
    status = PROBES[right.name](client, acme, other)
    assert status < 400 if right.allows(role) else status == 403, (right.name, role, status)


def test_a_member_changes_the_keys_they_created(acme: Organization, member: AbstractUser) -> None:
    key, _ = create_api_key(organization=acme, name="mine", created_by=member, expires_at=None)
    client = APIClient()
    client.force_authenticate(member)
    answer = client.patch(f"/api/api-keys/{key.pk}/", {"requests_per_minute": 5}, format="json")
    assert answer.status_code == 200
    assert client.post(f"/api/api-keys/{key.pk}/revoke/").status_code == 200


def test_a_key_cannot_create_keys(api_key_client: Any, acme: Organization) -> None:
    client, _ = api_key_client(acme)
    assert client.post("/api/api-keys/", {"name": "minted"}, format="json").status_code == 403


def test_outsider_cannot_revoke_acme_keys(acme: Organization, owner: AbstractUser, outsider) -> None:
    key, _ = create_api_key(organization=acme, name="theirs", created_by=owner, expires_at=None)
    client = APIClient()
    client.force_authenticate(outsider)
    assert client.post(f"/api/api-keys/{key.pk}/revoke/").status_code == 404
