"""Members and roles: owners and admins manage people; only owners make owners; one owner always stays."""

import pytest

from marketplace.accounts.choices import Role
from marketplace.accounts.models import Membership
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

MEMBERS = "/api/organizations/acme/members/"


def test_members_see_the_member_list(client_for, member) -> None:
    rows = client_for(member).get(MEMBERS).json()["results"]
    assert {(r["username"], r["role"]) for r in rows} == {("olivia", "owner"), ("mario", "member")}


def test_outsider_cannot_list_or_add_members(client_for, outsider) -> None:
    client = client_for(outsider)
    assert client.get(MEMBERS).status_code == 404
    assert client.post(MEMBERS, {"username": "oscar"}, format="json").status_code == 404
    assert client.delete(f"{MEMBERS}mario/").status_code == 404
    assert Membership.objects.filter(organization__slug="acme").count() == 2


def test_owner_adds_a_member(client_for, owner) -> None:
    make_user("nina")
    response = client_for(owner).post(MEMBERS, {"username": "nina", "role": "admin"}, format="json")
    assert response.status_code == 201
    assert Membership.objects.get(user__username="nina").role == Role.ADMIN


def test_plain_member_cannot_add_people(client_for, member) -> None:
    make_user("nina")
    assert client_for(member).post(MEMBERS, {"username": "nina"}, format="json").status_code == 403


def test_admin_cannot_make_an_owner(client_for, acme) -> None:
    admin = make_user("ada")
    Membership.objects.create(organization=acme, user=admin, role=Role.ADMIN)
    make_user("nina")
    client = client_for(admin)
    assert client.post(MEMBERS, {"username": "nina", "role": "owner"}, format="json").status_code == 403
    assert client.patch(f"{MEMBERS}mario/", {"role": "owner"}, format="json").status_code == 403
    assert client.patch(f"{MEMBERS}mario/", {"role": "admin"}, format="json").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"), [({"username": "ghost"}, "username"), ({"username": "mario"}, "username"),
                        ({"username": "nina", "role": "emperor"}, "role")]
)  # fmt: skip
def test_bad_member_input_names_the_field(client_for, owner, body, field) -> None:
    make_user("nina")
    response = client_for(owner).post(MEMBERS, body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_the_last_owner_cannot_leave_or_be_demoted(client_for, owner) -> None:
    client = client_for(owner)
    demote = client.patch(f"{MEMBERS}olivia/", {"role": "member"}, format="json")
    assert demote.status_code == 400 and "role" in demote.json()
    leave = client.delete(f"{MEMBERS}olivia/")
    assert leave.status_code == 400
    assert Membership.objects.get(user=owner).role == Role.OWNER


def test_a_member_may_leave(client_for, member) -> None:
    response = client_for(member).delete(f"{MEMBERS}mario/")
    assert response.status_code == 200
    assert (response.json()["username"], response.json()["revoked_api_keys"]) == ("mario", 0)
    assert not Membership.objects.filter(user=member).exists()


@pytest.mark.django_db(transaction=True)
def test_two_owners_stepping_down_at_once_leave_one_owner() -> None:
    """The organisation row is locked while owners are counted, so concurrent demotions serialise."""
    import threading

    from django.db import connection
    from rest_framework.exceptions import ValidationError

    from marketplace.accounts import services
    from marketplace.accounts.models import Organization

    first, second = make_user("ann"), make_user("bob")
    organization = services.create_organization(slug="duo", name="Duo", owner=first)
    Membership.objects.create(organization=organization, user=second, role=Role.OWNER)
    start = threading.Barrier(2)
    refused: list[str] = []

    def step_down(user_id: int) -> None:
        try:
            start.wait()
            membership = Membership.objects.get(organization=organization, user_id=user_id)
            services.change_role(membership, Role.MEMBER, by_owner=True)
        except ValidationError as error:
            refused.append(str(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=step_down, args=(user.pk,)) for user in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Organization.objects.get(slug="duo").memberships.filter(role=Role.OWNER).count() == 1
    assert len(refused) == 1
