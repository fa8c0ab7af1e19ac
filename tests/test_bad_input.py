"""Bad input is refused with a 4xx that names what is wrong, never answered with a 500.

Each test is one input that once reached the database or a library unchecked. A NUL character is
refused wherever it comes (PostgreSQL cannot store one, so no view could use it); dates are bounded
where they are parsed; a redirect target that is not a path on this site falls back to the catalog.
"""

from __future__ import annotations

import pytest
from django.test import Client

from marketplace.accounts.models import Membership

pytestmark = pytest.mark.django_db

USAGE = "/api/usage/"


def test_usage_until_the_first_day_of_the_calendar_is_refused_naming_until(client_for, member) -> None:
    response = client_for(member).get(USAGE, {"until": "0001-01-01"})
    assert response.status_code == 400
    assert "until" in response.json()


def test_usage_since_the_first_day_of_the_calendar_is_refused_naming_since(client_for, member) -> None:
    response = client_for(member).get(USAGE, {"since": "0001-01-01", "until": "0001-01-02"})
    assert response.status_code == 400
    assert "since" in response.json()


def test_usage_within_the_bounds_is_still_answered(client_for, member) -> None:
    response = client_for(member).get(USAGE, {"since": "2000-01-01", "until": "2000-12-31"})
    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.parametrize("endpoint", ["/api/deployments/", "/api/subscriptions/", "/api/api-keys/"])
def test_a_nul_in_the_organization_filter_is_refused_naming_it(client_for, member, endpoint) -> None:
    response = client_for(member).get(endpoint, {"organization": "\x00"})
    assert response.status_code == 400
    assert "NUL" in response.json()["organization"][0]


def test_a_nul_in_a_member_username_is_refused_naming_it(client_for, owner) -> None:
    response = client_for(owner).get("/api/organizations/acme/members/%00/")
    assert response.status_code == 400
    assert "NUL" in response.json()["username"][0]


def test_a_nul_in_a_model_page_slug_is_refused_naming_it(browser_for, member) -> None:
    response = browser_for(member).get("/models/%00/")
    assert response.status_code == 400
    assert "slug" in response.text and "NUL" in response.text


def test_a_nul_in_the_member_role_form_url_is_refused(browser_for, owner, member) -> None:
    response = browser_for(owner).post("/organization/members/mario%00/role/", {"role": "admin"})
    assert response.status_code == 400
    assert "username" in response.text
    assert Membership.objects.get(user=member).role == "member"


def test_a_nul_in_a_form_field_is_refused_naming_it(browser_for, owner) -> None:
    response = browser_for(owner).post("/organization/members/", {"username": "nina\x00", "role": "member"})
    assert response.status_code == 400
    assert "username" in response.text and "NUL" in response.text


def test_a_nul_in_a_query_parameter_name_is_refused(client_for, member) -> None:
    response = client_for(member).get("/api/deployments/?%00=1")
    assert response.status_code == 400
    assert "NUL" in str(response.json())


def test_an_outsider_gets_the_same_refusal_and_learns_nothing(client_for, outsider) -> None:
    response = client_for(outsider).get("/api/organizations/acme/members/%00/")
    assert response.status_code == 400
    assert "acme" not in response.text


def test_switching_organisation_with_a_bare_word_as_next_goes_home(browser_for, member) -> None:
    response = browser_for(member).post("/organization/switch/", {"organization": "acme", "next": "x"})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_switching_organisation_returns_to_a_page_of_this_site(browser_for, member) -> None:
    response = browser_for(member).post(
        "/organization/switch/", {"organization": "acme", "next": "/deployments/?page=2"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/deployments/?page=2"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "javascript:alert(1)"])
def test_switching_organisation_never_leaves_the_site(browser_for, member, target) -> None:
    response = browser_for(member).post("/organization/switch/", {"organization": "acme", "next": target})
    assert response["Location"] == "/"


def test_options_on_a_quota_describes_it(client_for, platform_admin) -> None:
    response = client_for(platform_admin).options("/api/organizations/acme/quota/")
    assert response.status_code == 200
    assert "max_gpus" in response.json()["actions"]["PUT"]


def test_options_on_a_quota_shows_an_outsider_no_fields(client_for, outsider) -> None:
    response = client_for(outsider).options("/api/organizations/acme/quota/")
    assert response.status_code == 200
    assert "actions" not in response.json()


@pytest.fixture
def browser_for(acme, globex):
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make
