"""The budgets pages, the budget banner, the idle flags on the deployments list, the idle summary on the
organisation page, and the capacity page: who sees and does what."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from marketplace.accounts import budgets
from marketplace.accounts.models import Budget
from serving import capacity, idle, services
from serving.choices import AutoscalingPolicy
from serving.models import Deployment
from tests.accounts.budget_helpers import spend
from tests.serving.conftest import backend_for
from tests.serving.fake_kubernetes import FakeKubernetes
from tests.web.conftest import make_deployment

pytestmark = pytest.mark.django_db


def budget_of(organization, amount: str = "100", **fields) -> Budget:
    budget, _ = budgets.create_budget(
        organization=organization, deployment=fields.get("deployment"), monthly_amount_usd=Decimal(amount),
        thresholds=[50, 80, 100], webhook_url="", scale_down_at_limit=False, user=None,
    )  # fmt: skip
    return budget


def this_month_hour():
    return budgets.month_start(timezone.now())


# Budgets.


def test_owner_sets_a_budget_on_the_page_and_sees_its_secret_once(browser_for, owner, acme) -> None:
    page = browser_for(owner).post(
        "/budgets/", {"monthly_amount_usd": "300", "thresholds": "50, 90", "deployment": ""}
    )
    assert page.status_code == 201
    budget = Budget.objects.get()
    assert budget.thresholds == [50, 90]
    assert "whsec_" in page.content.decode()
    assert "whsec_" not in browser_for(owner).get("/budgets/").content.decode()


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"monthly_amount_usd": "-1"}, "monthly_amount_usd"),
        ({"monthly_amount_usd": "10", "thresholds": "50, 150"}, "thresholds"),
        ({"monthly_amount_usd": "10", "thresholds": "half"}, "thresholds"),
        ({"monthly_amount_usd": "10", "webhook_url": "ftp://example.com"}, "webhook_url"),
        ({"monthly_amount_usd": "10", "deployment": "nope"}, "deployment"),
    ],
)
def test_a_malformed_budget_form_names_the_field_and_writes_nothing(browser_for, owner, acme, form, field):
    page = browser_for(owner).post("/budgets/", form)
    assert page.status_code == 400
    assert f'id="error-{field}"' in page.content.decode()
    assert not Budget.objects.exists()


def test_a_member_sees_where_a_budget_webhook_goes_but_not_its_token(browser_for, member, owner, acme):
    budget_of(acme)
    Budget.objects.update(webhook_url="https://hooks.example.com/services/T0/B0/receiver-token")
    page = browser_for(member).get("/budgets/").content.decode()
    assert "https://hooks.example.com/…" in page and "receiver-token" not in page
    assert "receiver-token" in browser_for(owner).get("/budgets/").content.decode()


def test_member_sees_budgets_but_may_not_set_or_change_them(browser_for, member, acme) -> None:
    budget = budget_of(acme)
    browser = browser_for(member)
    assert browser.get("/budgets/").status_code == 200
    assert browser.get(f"/budgets/{budget.pk}/").status_code == 200
    assert browser.post("/budgets/", {"monthly_amount_usd": "5"}).status_code == 403
    assert browser.post(f"/budgets/{budget.pk}/", {"monthly_amount_usd": "5"}).status_code == 403
    assert browser.post(f"/budgets/{budget.pk}/rotate-secret/").status_code == 403
    assert browser.post(f"/budgets/{budget.pk}/delete/").status_code == 403
    assert Budget.objects.get().monthly_amount_usd == Decimal("100")


def test_outsider_can_neither_see_nor_touch_another_organisations_budget_page(
    browser_for, outsider, acme
) -> None:
    budget = budget_of(acme)
    browser = browser_for(outsider)
    assert "All of Acme" not in browser.get("/budgets/").content.decode()
    for answer in (
        browser.get(f"/budgets/{budget.pk}/"),
        browser.post(f"/budgets/{budget.pk}/", {"monthly_amount_usd": "5"}),
        browser.post(f"/budgets/{budget.pk}/rotate-secret/"),
        browser.post(f"/budgets/{budget.pk}/delete/"),
    ):
        assert answer.status_code == 404
    assert Budget.objects.filter(pk=budget.pk, monthly_amount_usd=Decimal("100")).exists()


def test_owner_changes_and_deletes_a_budget(browser_for, owner, acme) -> None:
    budget = budget_of(acme)
    browser = browser_for(owner)
    changed = browser.post(f"/budgets/{budget.pk}/", {"monthly_amount_usd": "40", "thresholds": "75"})
    assert changed.status_code == 302
    budget.refresh_from_db()
    assert (budget.monthly_amount_usd, budget.thresholds) == (Decimal("40"), [75])
    assert browser.post(f"/budgets/{budget.pk}/delete/").status_code == 302
    assert not Budget.objects.exists()


def test_a_crossed_budget_shows_a_banner_to_its_organisation_only(browser_for, owner, outsider, acme):
    chat = make_deployment(acme, name="chat", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget_of(acme, "10")
    spend(chat, "12", hour=this_month_hour())
    budgets.check_budgets()
    page = browser_for(owner).get("/organization/").content.decode()
    assert "Acme has used up its monthly budget: $12.00 of $10.00 (120.0%) this month." in page
    assert "budget-banner" in browser_for(owner).get("/deployments/").content.decode()
    assert "budget-banner" not in browser_for(outsider).get("/organization/").content.decode()


def test_a_crossed_budget_still_shows_its_banner_after_the_cache_is_flushed(browser_for, owner, acme):
    chat = make_deployment(acme, name="chat", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget_of(acme, "10")
    spend(chat, "12", hour=this_month_hour())
    budgets.check_budgets()
    cache.delete(budgets.BANNER_KEY.format(organization_id=acme.pk))  # Redis flushed or restarted
    page = browser_for(owner).get("/organization/").content.decode()
    assert "Acme has used up its monthly budget" in page
    assert cache.get(budgets.BANNER_KEY.format(organization_id=acme.pk)) is not None  # kept again


def test_the_budget_page_shows_spending_alerts_and_deliveries(browser_for, member, acme) -> None:
    chat = make_deployment(acme, name="chat", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget = budget_of(acme, "10")
    spend(chat, "6", hour=this_month_hour())
    [alert] = budgets.check_budget(budget)
    alert.deliveries.create(attempt=1, url="https://hooks.example.com/x", status_code=500,
                            error="The webhook answered 500 Internal Server Error.")  # fmt: skip
    page = browser_for(member).get(f"/budgets/{budget.pk}/").content.decode()
    assert "$6.00 spent of $10.00 this month (60.0%)" in page
    assert alert.message in page
    assert "The webhook answered 500 Internal Server Error." in page


# Idle deployments on the list.


@pytest.fixture
def quiet(acme, settings, monkeypatch) -> Deployment:
    settings.IDLE_AFTER_HOURS = 24
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    deployment = make_deployment(
        acme, name="quiet", ready_replicas=1, reserved_gpus=1, gpu_model="NVIDIA A10G 24GB"
    )
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(hours=30))
    spend(
        deployment, "2", hour=(timezone.now() - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    )
    return deployment


def test_an_idle_deployment_is_flagged_with_its_cost_and_ways_out(browser_for, member, quiet) -> None:
    page = browser_for(member).get("/deployments/").content.decode()
    assert f'id="idle-{quiet.pk}"' in page
    assert "no request for 30 h; $2.00 spent while idle." in page
    assert "Scale to zero" in page


def test_a_member_scales_an_idle_deployment_to_zero_in_one_click(browser_for, member, quiet) -> None:
    answer = browser_for(member).post(f"/deployments/{quiet.pk}/scale-idle/", {"to": "zero"})
    assert answer.status_code == 302
    quiet.refresh_from_db()
    assert (quiet.autoscaling_policy, quiet.min_replicas) == (AutoscalingPolicy.SCALE_TO_ZERO, 0)


def test_scale_to_minimum_of_a_deployment_at_its_minimum_says_so(browser_for, member, quiet) -> None:
    browser = browser_for(member)
    answer = browser.post(f"/deployments/{quiet.pk}/scale-idle/", {"to": "minimum"}, follow=True)
    assert "runs at its minimum already" in answer.content.decode()
    assert browser.post(f"/deployments/{quiet.pk}/scale-idle/", {"to": "sideways"}).status_code == 302


def test_outsider_cannot_scale_another_organisations_idle_deployment(browser_for, outsider, quiet) -> None:
    assert (
        browser_for(outsider).post(f"/deployments/{quiet.pk}/scale-idle/", {"to": "zero"}).status_code == 404
    )
    quiet.refresh_from_db()
    assert quiet.autoscaling_policy == AutoscalingPolicy.FIXED


def test_the_organisation_page_shows_the_weekly_idle_summary(browser_for, owner, outsider, quiet) -> None:
    idle.summarize_week()
    page = browser_for(owner).get("/organization/").content.decode()
    assert 'id="idle-summary"' in page and "quiet" in page and "$2.00" in page
    assert "quiet" not in browser_for(outsider).get("/organization/").content.decode()


def test_the_weekly_idle_summary_survives_a_cache_flush(browser_for, owner, outsider, quiet) -> None:
    idle.summarize_week()
    cache.delete(idle.SUMMARY_KEY.format(organization_id=quiet.organization_id))  # Redis flushed
    page = browser_for(owner).get("/organization/").content.decode()
    assert 'id="idle-summary"' in page and "quiet" in page and "$2.00" in page
    assert "quiet" not in browser_for(outsider).get("/organization/").content.decode()


# Capacity.


@pytest.fixture
def cluster(monkeypatch, settings):
    """A fake Kubernetes API with one node of four A10Gs, which the worker reads for the capacity page."""
    settings.SERVING_BACKEND = "kubernetes"
    fake = FakeKubernetes().start()
    backend = backend_for(fake.url)
    monkeypatch.setattr(capacity, "get_backend", lambda name=None: backend)
    fake.add_node("gpu-a", gpu_product="NVIDIA-A10G", gpus=4)
    yield fake
    backend.api_client.close()
    fake.stop()
    cache.delete(capacity.NODES_KEY)


def test_a_platform_admin_sees_capacity_bars_per_gpu_model(
    browser_for, platform_admin, acme, cluster
) -> None:
    make_deployment(acme, name="chat", ready_replicas=1, desired_replicas=1, reserved_gpus=1,
                    gpu_model="NVIDIA A10G 24GB")  # fmt: skip
    capacity.remember_nodes()
    page = browser_for(platform_admin).get("/platform/capacity/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'data-chart="capacity"' in text
    assert "NVIDIA A10G 24GB: 1 used of 4 on 1 node" in text


@pytest.mark.parametrize("who", ["owner", "member", "outsider"])
def test_no_one_but_a_platform_admin_sees_the_capacity_page(browser_for, request, cluster, who) -> None:
    assert browser_for(request.getfixturevalue(who)).get("/platform/capacity/").status_code == 403


def test_the_capacity_page_says_when_the_nodes_cannot_be_read(browser_for, platform_admin, cluster) -> None:
    cluster.fail_next(503, times=10)
    capacity.remember_nodes()
    page = browser_for(platform_admin).get("/platform/capacity/")
    assert page.status_code == 200
    assert 'id="nodes-error"' in page.content.decode()
