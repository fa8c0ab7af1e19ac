"""Organisations: who sees them, who creates, renames and deletes them."""

import pytest

from marketplace.accounts.models import Organization, Quota

pytestmark = pytest.mark.django_db


def test_a_member_sees_only_their_organisations_with_their_role(client_for, member) -> None:
    rows = client_for(member).get("/api/organizations/").json()["results"]
    assert [(r["slug"], r["role"]) for r in rows] == [("acme", "member")]


def test_outsider_cannot_see_another_organisation(client_for, outsider) -> None:
    client = client_for(outsider)
    assert [r["slug"] for r in client.get("/api/organizations/").json()["results"]] == ["globex"]
    assert client.get("/api/organizations/acme/").status_code == 404


def test_platform_admin_sees_all(client_for, platform_admin) -> None:
    rows = client_for(platform_admin).get("/api/organizations/").json()["results"]
    assert {"acme", "globex"} <= {r["slug"] for r in rows}


def test_anonymous_is_refused(client_for) -> None:
    assert client_for(None).get("/api/organizations/").status_code in (401, 403)


def test_only_platform_admins_create_organisations(client_for, owner, platform_admin) -> None:
    assert client_for(owner).post("/api/organizations/", {"slug": "new", "name": "New"}).status_code == 403
    response = client_for(platform_admin).post(
        "/api/organizations/", {"slug": "initech", "name": "Initech", "owner": owner.username}, format="json"
    )
    assert response.status_code == 201, response.content
    organization = Organization.objects.get(slug="initech")
    assert Quota.objects.filter(organization=organization).exists()
    assert organization.memberships.get(user=owner).role == "owner"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"slug": "Not A Slug!", "name": "x"}, "slug"),
        ({"slug": "acme", "name": "Again"}, "slug"),
        ({"slug": "fine"}, "name"),
        ({"slug": "fine", "name": "Fine", "owner": "nobody-by-that-name"}, "owner"),
    ],
)
def test_bad_organisation_input_names_the_field(client_for, platform_admin, body, field) -> None:
    response = client_for(platform_admin).post("/api/organizations/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Organization.objects.filter(slug="fine").exists()


def test_owner_renames_member_cannot(client_for, owner, member) -> None:
    assert (
        client_for(member).patch("/api/organizations/acme/", {"name": "X"}, format="json").status_code == 403
    )
    response = client_for(owner).patch("/api/organizations/acme/", {"name": "Acme Corp"}, format="json")
    assert response.status_code == 200
    assert Organization.objects.get(slug="acme").name == "Acme Corp"


def test_outsider_cannot_rename_or_delete(client_for, outsider) -> None:
    client = client_for(outsider)
    assert client.patch("/api/organizations/acme/", {"name": "Pwned"}, format="json").status_code == 404
    assert client.delete("/api/organizations/acme/").status_code == 403
    assert Organization.objects.get(slug="acme").name == "Acme"


def test_malformed_json_is_a_400(client_for, owner) -> None:
    response = client_for(owner).generic(
        "PATCH", "/api/organizations/acme/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_the_slug_cannot_change_and_reveals_nothing(client_for, owner) -> None:
    response = client_for(owner).patch(
        "/api/organizations/acme/", {"slug": "globex", "name": "Acme"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["slug"] == "acme"
    assert Organization.objects.filter(slug="acme").exists()


def test_people_sign_in_with_a_session(owner, acme) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    assert client.get("/api/auth/login/").status_code == 200
    assert client.login(username=owner.username, password="correct horse battery")
    assert [row["slug"] for row in client.get("/api/organizations/").json()["results"]] == ["acme"]
