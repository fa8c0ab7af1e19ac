"""API keys on the web: the secret is shown once and stored only as a hash; owners and admins create
keys, change the deployments a key may call and its own per-minute limits, and revoke; nobody outside
the organisation sees, changes or revokes its keys."""

from __future__ import annotations

import re

import pytest

from learning.models import Router
from marketplace.accounts.models import ApiKey, hash_api_key
from marketplace.accounts.services import create_api_key
from marketplace.catalog.models import InstanceType, ModelCard
from serving.models import Deployment


def test_owner_creates_a_key_and_sees_the_secret_once(browser_for, owner, acme) -> None:
    browser = browser_for(owner)
    response = browser.post("/api-keys/new/", {"name": "billing"})
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    secret = re.search(r'<code id="new-key">(mk-[^<]+)</code>', response.text).group(1)
    key = ApiKey.objects.get(organization=acme, name="billing")
    assert key.hashed_key == hash_api_key(secret) and secret not in key.hashed_key
    listing = browser.get("/api-keys/").text
    assert "billing" in listing and key.prefix in listing and secret not in listing


def test_bad_input_names_the_field(browser_for, owner, acme) -> None:
    browser = browser_for(owner)
    assert 'id="error-name"' in browser.post("/api-keys/new/", {"name": ""}).text
    past = browser.post("/api-keys/new/", {"name": "old", "expires_at": "2001-01-01T00:00"})
    assert past.status_code == 400 and "Must be in the future." in past.text
    assert not ApiKey.objects.exists()


def test_member_creates_a_key_to_call_what_they_deploy(browser_for, member, acme) -> None:
    response = browser_for(member).post("/api-keys/new/", {"name": "mine"})
    assert response.status_code == 201
    assert ApiKey.objects.get(organization=acme).created_by == member


def test_revoke(browser_for, owner, acme) -> None:
    key, _ = create_api_key(organization=acme, name="ci", created_by=owner, expires_at=None)
    assert browser_for(owner).post(f"/api-keys/{key.pk}/revoke/").status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_outsider_cannot_see_or_revoke_acme_keys(browser_for, owner, outsider, acme) -> None:
    key, _ = create_api_key(organization=acme, name="acme-secret-key", created_by=owner, expires_at=None)
    browser = browser_for(outsider)
    assert "acme-secret-key" not in browser.get("/api-keys/").text
    assert browser.post(f"/api-keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def live(organization, name: str, status: str = "ready") -> Deployment:
    return Deployment.objects.create(
        organization=organization, name=name, model_card=ModelCard.objects.get(slug="llama-3.1-8b-instruct"),
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"), backend="kubernetes", status=status,
    )  # fmt: skip


def test_owner_creates_a_key_limited_to_a_deployment_with_its_own_limits(browser_for, owner, acme) -> None:
    live(acme, "chat")
    live(acme, "other")
    browser = browser_for(owner)
    form = browser.get("/api-keys/").text
    assert 'name="allowed_deployments" value="chat"' in form and 'value="other"' in form
    response = browser.post(
        "/api-keys/new/",
        {
            "name": "billing",
            "allowed_deployments": ["chat"],
            "requests_per_minute": "60",
            "tokens_per_minute": "",
        },
    )
    assert response.status_code == 201, response.text
    key = ApiKey.objects.get(organization=acme, name="billing")
    assert (key.allowed_deployments, key.requests_per_minute, key.tokens_per_minute) == (["chat"], 60, None)
    assert "60 requests/min" in browser.get("/api-keys/").text


def test_a_deployment_of_another_organisation_is_refused_by_name(browser_for, owner, acme, globex) -> None:
    live(globex, "theirs")
    response = browser_for(owner).post(
        "/api-keys/new/", {"name": "sneaky", "allowed_deployments": ["theirs"]}
    )
    assert response.status_code == 400
    assert 'id="error-allowed_deployments"' in response.text and "&#x27;theirs&#x27;" in response.text
    assert not ApiKey.objects.exists()


def test_owner_changes_a_keys_deployments_and_limits(browser_for, owner, acme) -> None:
    live(acme, "chat")
    key, _ = create_api_key(organization=acme, name="ci", created_by=owner, expires_at=None)
    browser = browser_for(owner)
    body = {"allowed_deployments": ["chat"], "requests_per_minute": "", "tokens_per_minute": "5000"}
    assert browser.post(f"/api-keys/{key.pk}/settings/", body).status_code == 302
    key.refresh_from_db()
    assert (key.allowed_deployments, key.requests_per_minute, key.tokens_per_minute) == (["chat"], None, 5000)
    page = browser.get("/api-keys/").text
    assert 'value="chat" checked' in page and "5000 tokens/min" in page and f'id="tpm-{key.pk}"' in page
    lifted = {"requests_per_minute": "", "tokens_per_minute": ""}  # nothing ticked, nothing filled in
    assert browser.post(f"/api-keys/{key.pk}/settings/", lifted).status_code == 302
    key.refresh_from_db()
    assert (key.allowed_deployments, key.tokens_per_minute) == ([], None)


def test_a_bad_change_names_the_field_and_writes_nothing(browser_for, owner, acme) -> None:
    key, _ = create_api_key(organization=acme, name="ci", created_by=owner, expires_at=None)
    browser = browser_for(owner)
    response = browser.post(
        f"/api-keys/{key.pk}/settings/", {"requests_per_minute": "0", "tokens_per_minute": "7"}
    )
    assert response.status_code == 400 and 'id="error-requests_per_minute"' in response.text
    gone = browser.post(f"/api-keys/{key.pk}/settings/", {"allowed_deployments": ["gone"]})
    assert gone.status_code == 400 and "&#x27;gone&#x27;" in gone.text
    key.refresh_from_db()
    assert (key.allowed_deployments, key.requests_per_minute, key.tokens_per_minute) == ([], None, None)


def test_member_cannot_change_a_key(browser_for, owner, member, acme) -> None:
    key, _ = create_api_key(organization=acme, name="ci", created_by=owner, expires_at=None)
    response = browser_for(member).post(f"/api-keys/{key.pk}/settings/", {"requests_per_minute": "1"})
    assert response.status_code == 403
    key.refresh_from_db()
    assert key.requests_per_minute is None


@pytest.mark.parametrize("action", ["settings", "revoke"])
def test_a_member_refused_a_change_is_told_whom_to_ask(browser_for, owner, member, acme, action) -> None:
    key, _ = create_api_key(organization=acme, name="ci", created_by=owner, expires_at=None)
    response = browser_for(member).post(f"/api-keys/{key.pk}/{action}/", {"requests_per_minute": "1"})
    assert response.status_code == 403
    assert f"Only an owner or admin of {acme.name}" in response.text
    assert "ask one of them" in response.text


def test_outsider_cannot_change_acme_keys(browser_for, owner, outsider, acme, globex) -> None:
    live(globex, "theirs")
    key, _ = create_api_key(organization=acme, name="ci", created_by=owner, expires_at=None)
    body = {"allowed_deployments": ["theirs"], "requests_per_minute": "1"}
    assert browser_for(outsider).post(f"/api-keys/{key.pk}/settings/", body).status_code == 404
    key.refresh_from_db()
    assert (key.allowed_deployments, key.requests_per_minute) == ([], None)


def router(organization, name: str) -> Router:
    return Router.objects.create(
        organization=organization, name=name, fallback="chat",
        candidates=[{"deployment": "chat", "cost_per_1k_tokens": None},
                    {"deployment": "other", "cost_per_1k_tokens": None}],
    )  # fmt: skip


def test_owner_limits_a_new_key_to_a_router_offered_beside_the_deployments(browser_for, owner, acme) -> None:
    live(acme, "chat")
    router(acme, "auto")
    browser = browser_for(owner)
    form = browser.get("/api-keys/").text
    assert 'name="allowed_deployments" value="auto"' in form
    response = browser.post("/api-keys/new/", {"name": "app", "allowed_deployments": ["auto"]})
    assert response.status_code == 201, response.text
    assert ApiKey.objects.get(organization=acme, name="app").allowed_deployments == ["auto"]


def test_a_keys_router_is_ticked_in_its_change_form_and_can_be_unticked(browser_for, owner, acme) -> None:
    live(acme, "chat")
    router(acme, "auto")
    key, _ = create_api_key(
        organization=acme, name="ci", created_by=owner, expires_at=None, allowed_deployments=["auto"]
    )
    browser = browser_for(owner)
    assert 'value="auto" checked' in browser.get("/api-keys/").text
    assert browser.post(f"/api-keys/{key.pk}/settings/", {"allowed_deployments": ["chat"]}).status_code == 302
    key.refresh_from_db()
    assert key.allowed_deployments == ["chat"]


def test_another_organisations_router_is_neither_offered_nor_accepted(
    browser_for, owner, acme, globex
) -> None:
    router(globex, "theirs")
    browser = browser_for(owner)
    assert 'value="theirs"' not in browser.get("/api-keys/").text
    response = browser.post("/api-keys/new/", {"name": "sneaky", "allowed_deployments": ["theirs"]})
    assert response.status_code == 400 and 'id="error-allowed_deployments"' in response.text
    assert not ApiKey.objects.exists()


def test_the_keys_page_makes_as_many_queries_with_five_routers_as_with_one(browser_for, owner, acme) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    browser = browser_for(owner)
    router(acme, "r0")
    browser.get("/api-keys/")  # a first visit fills what the page caches (the budget banner)
    with CaptureQueriesContext(connection) as one:
        browser.get("/api-keys/")
    for number in range(1, 5):
        router(acme, f"r{number}")
    with CaptureQueriesContext(connection) as five:
        page = browser.get("/api-keys/").text
    assert all(f'value="r{number}"' in page for number in range(5))
    assert len(five) == len(one)
