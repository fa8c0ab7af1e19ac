"""Platform admins: all organisations and deployments, quota editing with inline errors. Anyone else
is refused (tests/web/test_error_pages.py shows what they read)."""

from __future__ import annotations

from marketplace.accounts.models import Quota
from tests.web.conftest import make_deployment


def test_platform_admin_sees_every_organisation_and_deployment(
    browser_for, platform_admin, acme, globex
) -> None:
    make_deployment(acme, name="a-chat")
    make_deployment(globex, name="g-chat")
    page = browser_for(platform_admin).get("/platform/").text
    assert "Acme" in page and "Globex" in page and "a-chat" in page and "g-chat" in page


def test_platform_admin_edits_a_quota(browser_for, platform_admin, acme) -> None:
    response = browser_for(platform_admin).post(
        "/platform/organizations/acme/quota/",
        {"max_gpus": "4", "max_deployments": "3", "monthly_token_budget": "1000", "requests_per_minute": "60",
         "tokens_per_minute": "5000", "gpus_per_model.NVIDIA H100 80GB SXM5": "2"},
    )  # fmt: skip
    assert response.status_code == 302
    quota = Quota.objects.get(organization=acme)
    assert (quota.max_gpus, quota.max_deployments, quota.gpus_per_model) == (
        4,
        3,
        {"NVIDIA H100 80GB SXM5": 2},
    )


def test_bad_quota_values_are_named_and_nothing_changes(browser_for, platform_admin, acme) -> None:
    response = browser_for(platform_admin).post(
        "/platform/organizations/acme/quota/",
        {"max_gpus": "-1", "max_deployments": "many", "monthly_token_budget": "1", "requests_per_minute": "1",
         "tokens_per_minute": "1"},
    )  # fmt: skip
    assert response.status_code == 400
    assert 'id="error-max_gpus"' in response.text and 'id="error-max_deployments"' in response.text
    assert Quota.objects.get(organization=acme).max_gpus == 8


def test_nobody_else_may_use_the_platform_pages(browser_for, owner, outsider, acme) -> None:
    for person in (owner, outsider):
        browser = browser_for(person)
        assert browser.get("/platform/").status_code == 403
        assert browser.post("/platform/organizations/acme/quota/", {"max_gpus": "999"}).status_code == 403
    assert Quota.objects.get(organization=acme).max_gpus == 8
