"""The platform admin's quota form: saving says so, a cleared field is refused naming it (a quota
always has a limit), and a limit below what the organisation already uses is saved with a warning
that gives the numbers (issue 17, item 4)."""

from __future__ import annotations

from typing import Any

from marketplace.accounts.models import Quota
from tests.web.conftest import make_deployment

QUOTA = "/platform/organizations/acme/quota/"


def every_field(**overrides: str) -> dict[str, Any]:
    """What the form posts: every field, as the page shows them."""
    return {
        "max_gpus": "8", "max_deployments": "5", "max_cpu_replicas": "4", "monthly_token_budget": "1000000",
        "requests_per_minute": "600", "tokens_per_minute": "200000", **overrides,
    }  # fmt: skip


def test_saving_a_quota_confirms_it_on_the_platform_page(browser_for, platform_admin, acme) -> None:
    response = browser_for(platform_admin).post(QUOTA, every_field(max_gpus="6"), follow=True)
    assert "The quota of Acme was saved." in response.text
    assert Quota.objects.get(organization=acme).max_gpus == 6


def test_a_cleared_field_is_refused_naming_it_and_nothing_changes(browser_for, platform_admin, acme) -> None:
    response = browser_for(platform_admin).post(QUOTA, every_field(max_gpus="", max_deployments="2"))
    assert response.status_code == 400
    assert 'id="error-max_gpus"' in response.text
    assert "Every quota has a limit: enter a number (0 allows none)." in response.text
    quota = Quota.objects.get(organization=acme)
    assert (quota.max_gpus, quota.max_deployments) == (8, 5)


def test_the_form_says_what_an_empty_field_means(browser_for, platform_admin, acme) -> None:
    page = browser_for(platform_admin).get(QUOTA).text
    assert "Every limit needs a number: 0 allows none" in page


def test_a_limit_below_current_use_is_saved_with_the_numbers(browser_for, platform_admin, acme) -> None:
    make_deployment(acme, name="one", reserved_gpus=1)
    make_deployment(acme, name="two", reserved_gpus=1)
    response = browser_for(platform_admin).post(QUOTA, every_field(max_deployments="1"), follow=True)
    assert "Acme already uses 2 deployments, above the new limit of 1" in response.text
    assert Quota.objects.get(organization=acme).max_deployments == 1


def test_a_limit_at_or_above_current_use_has_no_warning(browser_for, platform_admin, acme) -> None:
    make_deployment(acme, name="one", reserved_gpus=1)
    response = browser_for(platform_admin).post(QUOTA, every_field(max_deployments="1"), follow=True)
    assert "above the new limit" not in response.text


def test_outsider_cannot_save_acme_quota(browser_for, outsider, acme) -> None:
    response = browser_for(outsider).post(QUOTA, every_field(max_gpus="99"))
    assert response.status_code == 403
    assert Quota.objects.get(organization=acme).max_gpus == 8
