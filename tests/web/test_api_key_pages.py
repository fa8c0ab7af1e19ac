"""API keys on the web: the secret is shown once and stored only as a hash; owners and admins create
and revoke; nobody outside the organisation sees or revokes its keys."""

from __future__ import annotations

import re

from marketplace.accounts.models import ApiKey, hash_api_key
from marketplace.accounts.services import create_api_key


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


def test_member_cannot_create_keys(browser_for, member, acme) -> None:
    response = browser_for(member).post("/api-keys/new/", {"name": "mine"})
    assert response.status_code == 400 and "Only an owner or admin" in response.text
    assert not ApiKey.objects.exists()


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
