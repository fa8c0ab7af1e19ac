"""The organisation page: quota in use as bars, members and roles, managed by owners and admins."""

from __future__ import annotations

from marketplace.accounts.models import ApiKey, Membership, Quota
from marketplace.accounts.services import create_api_key
from tests.conftest import make_user


def test_quota_use_shows_as_bars(browser_for, member, acme, acme_deployment) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=4, gpus_per_model={"NVIDIA A10G 24GB": 2})
    page = browser_for(member).get("/organization/").text
    assert 'aria-label="GPUs, all models: 1 of 4 GPUs"' in page
    assert 'aria-label="NVIDIA A10G 24GB: 1 of 2 GPUs"' in page and "width: 50%" in page
    assert 'aria-label="Deployments: 1 of 5 "' in page


def test_owner_adds_a_member_and_changes_a_role(browser_for, owner, acme) -> None:
    make_user("nina")
    browser = browser_for(owner)
    assert browser.post("/organization/members/", {"username": "nina", "role": "member"}).status_code == 302
    assert browser.post("/organization/members/nina/role/", {"role": "admin"}).status_code == 302
    assert Membership.objects.get(organization=acme, user__username="nina").role == "admin"


def test_bad_input_is_explained(browser_for, owner, acme) -> None:
    browser = browser_for(owner)
    unknown = browser.post("/organization/members/", {"username": "nobody", "role": "member"})
    assert unknown.status_code == 400 and 'id="error-username"' in unknown.text
    last_owner = browser.post("/organization/members/olivia/role/", {"role": "member"})
    assert last_owner.status_code == 400 and "An organisation needs an owner" in last_owner.text


def test_member_cannot_manage_members(browser_for, member, owner, acme) -> None:
    make_user("nina")
    response = browser_for(member).post("/organization/members/", {"username": "nina", "role": "member"})
    assert response.status_code == 403 and "Only an owner or admin" in response.text
    assert not Membership.objects.filter(user__username="nina").exists()


def test_outsider_cannot_see_or_change_acme_members(browser_for, outsider, member, acme) -> None:
    browser = browser_for(outsider)
    assert "mario" not in browser.get("/organization/").text
    # The outsider's own organisation has no member "mario": 404, and acme's membership is unchanged.
    assert browser.post("/organization/members/mario/role/", {"role": "admin"}).status_code == 404
    assert browser.post("/organization/members/mario/remove/").status_code == 404
    assert Membership.objects.get(organization=acme, user=member).role == "member"


def test_removing_a_member_says_how_many_of_their_keys_were_revoked(browser_for, owner, acme) -> None:
    admin = make_user("ada")
    Membership.objects.create(organization=acme, user=admin, role="admin")
    made, _ = create_api_key(organization=acme, name="ci", created_by=admin, expires_at=None)
    browser = browser_for(owner)
    before = browser.get("/organization/").text
    assert "created 1 active API key, revoked if they leave" in before
    assert "The 1 API key they created will be revoked." in before  # in the confirmation
    page = browser.post("/organization/members/ada/remove/", follow=True)
    assert "ada was removed, and the 1 API key they created was revoked" in page.text
    assert not ApiKey.objects.get(pk=made.pk).is_active
