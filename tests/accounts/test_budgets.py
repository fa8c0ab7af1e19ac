"""Monthly cost budgets: who may set them, what is refused, and how crossings alert (once each)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from marketplace.accounts import budgets, crypto
from marketplace.accounts.models import Budget, BudgetAlert, WebhookDelivery
from serving import services
from serving.choices import AutoscalingPolicy
from serving.models import Deployment, DeploymentEvent
from tests.accounts.budget_helpers import MONTH, NOW, spend
from tests.web.conftest import make_deployment

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(acme):
    return make_deployment(acme, name="chat", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")


@pytest.fixture
def scaled(monkeypatch, settings) -> list[int]:
    """Scaling goes through serving.services; the backend work it enqueues is noted, not run."""
    settings.SERVING_BACKEND = "kubernetes"
    enqueued: list[int] = []
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: enqueued.append(deployment_id))
    return enqueued


@pytest.fixture
def busy(acme) -> Deployment:
    """A deployment of acme autoscaled up to 4 replicas (4 GPUs reserved), so a scale-down has work."""
    return make_deployment(
        acme, name="busy", min_replicas=1, max_replicas=4, autoscaling_policy=AutoscalingPolicy.QUEUE_DEPTH,
        reserved_gpus=4, gpu_model="NVIDIA A10G 24GB",
    )  # fmt: skip


def make_budget(organization, amount: str = "100", **fields: Any) -> Budget:
    budget, _ = budgets.create_budget(
        organization=organization,
        deployment=fields.pop("deployment", None),
        monthly_amount_usd=Decimal(amount),
        thresholds=fields.pop("thresholds", [50, 80, 100]),
        webhook_url=fields.pop("webhook_url", ""),
        scale_down_at_limit=fields.pop("scale_down_at_limit", False),
        user=None,
    )
    return budget


# The API: who may do what.


def test_owner_creates_a_budget_and_is_shown_its_webhook_secret_once(client_for, owner, acme) -> None:
    client = client_for(owner)
    created = client.post(
        "/api/budgets/",
        {"monthly_amount_usd": "250.00", "webhook_url": "https://hooks.example.com/costs"},
        format="json",
    )
    assert created.status_code == 201, created.content
    secret = created.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    assert created.json()["thresholds"] == [50, 80, 100]
    shown = client.get(f"/api/budgets/{created.json()['id']}/").json()
    assert "webhook_secret" not in shown
    assert shown["spent_this_month_usd"] == "0.00"
    stored = Budget.objects.get().webhook_secret_encrypted
    assert secret not in stored and crypto.decrypt(stored) == secret


def test_member_may_read_budgets_but_not_change_them(client_for, member, acme) -> None:
    budget = make_budget(acme)
    client = client_for(member)
    assert client.get("/api/budgets/").json()["count"] == 1
    assert client.get(f"/api/budgets/{budget.pk}/deliveries/").status_code == 200
    refusals = [
        client.post("/api/budgets/", {"monthly_amount_usd": "5", "deployment": ""}, format="json"),
        client.patch(f"/api/budgets/{budget.pk}/", {"monthly_amount_usd": "1"}, format="json"),
        client.post(f"/api/budgets/{budget.pk}/rotate-secret/"),
        client.delete(f"/api/budgets/{budget.pk}/"),
    ]
    assert [r.status_code for r in refusals] == [403, 403, 403, 403]
    assert "owner" in refusals[1].json()["detail"]
    assert Budget.objects.get().monthly_amount_usd == Decimal("100")


HOOK = "https://hooks.example.com/services/T000/B000/secret-token-of-the-receiver"


def test_a_member_sees_where_the_webhook_goes_but_not_its_token(client_for, member, owner, acme) -> None:
    budget = make_budget(acme, webhook_url=HOOK)
    alert = BudgetAlert.objects.create(budget=budget, month=MONTH.date(), threshold=50, spent_usd=1,
                                       amount_usd=2, message="m")  # fmt: skip
    WebhookDelivery.objects.create(alert=alert, attempt=1, url=HOOK, status_code=500)
    member_client, owner_client = client_for(member), client_for(owner)
    for client, shown in ((member_client, "https://hooks.example.com/…"), (owner_client, HOOK)):
        assert client.get("/api/budgets/").json()["results"][0]["webhook_url"] == shown
        assert client.get(f"/api/budgets/{budget.pk}/").json()["webhook_url"] == shown
        assert client.get(f"/api/budgets/{budget.pk}/deliveries/").json()[0]["url"] == shown


def test_outsider_can_neither_see_nor_touch_another_organisations_budget(client_for, outsider, acme) -> None:
    budget = make_budget(acme)
    client = client_for(outsider)
    assert client.get("/api/budgets/").json()["count"] == 0
    for answer in (
        client.get(f"/api/budgets/{budget.pk}/"),
        client.get(f"/api/budgets/{budget.pk}/alerts/"),
        client.get(f"/api/budgets/{budget.pk}/deliveries/"),
        client.patch(f"/api/budgets/{budget.pk}/", {"monthly_amount_usd": "1"}, format="json"),
        client.post(f"/api/budgets/{budget.pk}/rotate-secret/"),
        client.delete(f"/api/budgets/{budget.pk}/"),
    ):
        assert answer.status_code == 404
    made = client.post("/api/budgets/", {"organization": "acme", "monthly_amount_usd": "5"}, format="json")
    assert made.status_code == 400 and "organization" in made.json()
    assert Budget.objects.count() == 1 and Budget.objects.get().monthly_amount_usd == Decimal("100")


def test_a_platform_admin_may_set_any_organisations_budget(client_for, platform_admin, acme) -> None:
    answer = client_for(platform_admin).post(
        "/api/budgets/", {"organization": "acme", "monthly_amount_usd": "10"}, format="json"
    )
    assert answer.status_code == 201, answer.content


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"monthly_amount_usd": "-5"}, "monthly_amount_usd"),
        ({"monthly_amount_usd": "0"}, "monthly_amount_usd"),
        ({"monthly_amount_usd": "lots"}, "monthly_amount_usd"),
        ({"monthly_amount_usd": "5", "thresholds": [0, 50]}, "thresholds"),
        ({"monthly_amount_usd": "5", "thresholds": [50, 101]}, "thresholds"),
        ({"monthly_amount_usd": "5", "thresholds": []}, "thresholds"),
        ({"monthly_amount_usd": "5", "thresholds": "50"}, "thresholds"),
        ({"monthly_amount_usd": "5", "webhook_url": "not a url"}, "webhook_url"),
        ({"monthly_amount_usd": "5", "webhook_url": "ftp://files.example.com/x"}, "webhook_url"),
        ({"monthly_amount_usd": "5", "deployment": "nope"}, "deployment"),
        ({"monthly_amount_usd": "5", "scale_down_at_limit": "perhaps"}, "scale_down_at_limit"),
    ],
)
def test_malformed_budgets_are_refused_naming_the_field(client_for, owner, acme, body, field) -> None:
    answer = client_for(owner).post("/api/budgets/", body, format="json")
    assert answer.status_code == 400
    assert field in answer.json()
    assert not Budget.objects.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hook", "http://169.254.169.254/latest/meta-data/"])
def test_a_webhook_on_an_internal_address_is_refused_when_set_naming_the_field(
    client_for, owner, acme, url
) -> None:
    client = client_for(owner)
    answer = client.post("/api/budgets/", {"monthly_amount_usd": "5", "webhook_url": url}, format="json")
    assert answer.status_code == 400
    assert "internal address" in answer.json()["webhook_url"][0]
    assert not Budget.objects.exists()
    budget = make_budget(acme)
    changed = client.patch(f"/api/budgets/{budget.pk}/", {"webhook_url": url}, format="json")
    assert changed.status_code == 400 and "webhook_url" in changed.json()
    assert Budget.objects.get().webhook_url == ""


def test_a_webhook_on_an_internal_address_is_accepted_when_the_platform_allows_it(
    client_for, owner, acme, settings
) -> None:
    settings.BUDGET_WEBHOOK_PRIVATE_ADDRESSES = True
    body = {"monthly_amount_usd": "5", "webhook_url": "http://10.0.0.5/hook"}
    assert client_for(owner).post("/api/budgets/", body, format="json").status_code == 201


def test_a_change_to_malformed_values_is_refused_naming_the_field_and_changes_nothing(
    client_for, owner, acme
) -> None:
    budget = make_budget(acme)
    answer = client_for(owner).patch(
        f"/api/budgets/{budget.pk}/", {"monthly_amount_usd": "7", "thresholds": [120]}, format="json"
    )
    assert answer.status_code == 400 and "thresholds" in answer.json()
    assert Budget.objects.get().monthly_amount_usd == Decimal("100")


def test_an_organisation_has_one_budget_of_its_own_and_one_per_deployment(
    client_for, owner, acme, chat
) -> None:
    client = client_for(owner)
    assert client.post("/api/budgets/", {"monthly_amount_usd": "5"}, format="json").status_code == 201
    again = client.post("/api/budgets/", {"monthly_amount_usd": "6"}, format="json")
    assert again.status_code == 400 and "already has a budget" in again.json()["deployment"][0]
    mine = client.post("/api/budgets/", {"monthly_amount_usd": "6", "deployment": "chat"}, format="json")
    assert mine.status_code == 201 and mine.json()["deployment"] == "chat"


def test_rotating_the_secret_shows_a_new_one_once(client_for, owner, acme) -> None:
    budget = make_budget(acme)
    before = Budget.objects.get().webhook_secret_encrypted
    answer = client_for(owner).post(f"/api/budgets/{budget.pk}/rotate-secret/")
    secret = answer.json()["webhook_secret"]
    after = Budget.objects.get().webhook_secret_encrypted
    assert after != before and crypto.decrypt(after) == secret


# Checking: crossings alert once each.


def alerted(budget: Budget) -> list[int]:
    return sorted(BudgetAlert.objects.filter(budget=budget).values_list("threshold", flat=True))


def test_each_threshold_alerts_once_as_spending_grows(acme, chat) -> None:
    budget = make_budget(acme, "100")
    spend(chat, "40")
    assert budgets.check_budget(budget, NOW) == []
    spend(chat, "20")
    assert [a.threshold for a in budgets.check_budget(budget, NOW)] == [50]
    spend(chat, "60")  # 120%: 80 and 100 in one pass, lowest first
    assert [a.threshold for a in budgets.check_budget(budget, NOW)] == [80, 100]
    assert budgets.check_budget(budget, NOW) == []
    assert alerted(budget) == [50, 80, 100]
    top = BudgetAlert.objects.get(threshold=100)
    assert top.spent_usd == Decimal("120.00")
    assert top.message == "Acme has used up its monthly budget: $120.00 of $100.00 (120.0%) this month."


def test_last_months_spending_does_not_count_and_a_new_month_alerts_again(acme, chat) -> None:
    budget = make_budget(acme, "100")
    spend(chat, "90", hour=MONTH - timedelta(hours=1))
    assert budgets.check_budget(budget, NOW) == []
    spend(chat, "55")
    budgets.check_budget(budget, NOW)
    spend(chat, "55", hour=MONTH + timedelta(days=31))  # December
    december = budgets.check_budget(budget, NOW + timedelta(days=31))
    assert [a.threshold for a in december] == [50]
    assert BudgetAlert.objects.filter(threshold=50).count() == 2


def test_a_deployment_budget_counts_only_its_deployment_and_writes_in_its_history(acme, chat) -> None:
    other = make_deployment(acme, name="other", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget = make_budget(acme, "10", deployment=chat, thresholds=[50])
    spend(other, "100")
    assert budgets.check_budget(budget, NOW) == []
    spend(chat, "6")
    [alert] = budgets.check_budget(budget, NOW)
    assert alert.message.startswith("The deployment chat has passed 50% of its monthly budget: $6.00")
    assert DeploymentEvent.objects.filter(deployment=chat, message=alert.message).exists()


def test_at_the_limit_the_owners_choice_scales_deployments_down_to_their_minimum(
    acme, busy, scaled, django_capture_on_commit_callbacks
) -> None:
    fixed = make_deployment(acme, name="fixed", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget = make_budget(acme, "100", thresholds=[100], scale_down_at_limit=True)
    spend(busy, "101")
    with django_capture_on_commit_callbacks(execute=True):
        budgets.check_budget(budget, NOW)
    busy.refresh_from_db()
    assert (busy.min_replicas, busy.max_replicas, busy.reserved_gpus) == (1, 1, 1)
    assert scaled == [busy.pk]  # the fixed one is at its minimum already
    assert fixed.max_replicas == 1
    assert BudgetAlert.objects.get().message.endswith("Scaled down to their minimum: busy.")
    assert busy.events.filter(message__startswith="Scaling to 1–1 replicas").exists()


def test_without_the_owners_choice_nothing_is_scaled(
    acme, busy, scaled, django_capture_on_commit_callbacks
) -> None:
    budget = make_budget(acme, "100", thresholds=[100])
    spend(busy, "150")
    with django_capture_on_commit_callbacks(execute=True):
        budgets.check_budget(budget, NOW)
    busy.refresh_from_db()
    assert busy.max_replicas == 4 and scaled == []


def test_alerts_are_listed_for_members_and_deleting_a_budget_clears_its_banner(
    client_for, owner, member, acme, chat
) -> None:
    budget = make_budget(acme, "100")
    spend(chat, "85")
    budgets.check_budgets(NOW)
    alerts = client_for(member).get(f"/api/budgets/{budget.pk}/alerts/").json()
    assert [a["threshold"] for a in alerts] == [80, 50]
    assert [line.level for line in budgets.banner(acme.pk, NOW.date())] == ["warning"]
    assert client_for(owner).delete(f"/api/budgets/{budget.pk}/").status_code == 204
    assert budgets.banner(acme.pk, NOW.date()) == []


def test_a_deployment_budget_at_its_limit_scales_down_only_its_deployment(
    acme, scaled, django_capture_on_commit_callbacks
) -> None:
    wide = {
        "min_replicas": 1,
        "max_replicas": 3,
        "autoscaling_policy": AutoscalingPolicy.QUEUE_DEPTH,
        "reserved_gpus": 3,
        "gpu_model": "NVIDIA A10G 24GB",
    }
    mine = make_deployment(acme, name="mine", **wide)
    other = make_deployment(acme, name="other", **wide)
    budget = make_budget(acme, "10", deployment=mine, thresholds=[100], scale_down_at_limit=True)
    spend(mine, "10")
    with django_capture_on_commit_callbacks(execute=True):
        budgets.check_budget(budget, NOW)
    mine.refresh_from_db()
    other.refresh_from_db()
    assert (mine.max_replicas, other.max_replicas) == (1, 3)
    assert scaled == [mine.pk]


def test_a_threshold_is_crossed_when_spending_reaches_it_not_when_its_rounding_does(acme, chat) -> None:
    budget = make_budget(acme, "100", thresholds=[50])
    spend(chat, "49.96")  # 49.96% shows as 50.0% once rounded, but 50% is not spent yet
    assert budgets.check_budget(budget, NOW) == []
    spend(chat, "0.04")
    assert [a.threshold for a in budgets.check_budget(budget, NOW)] == [50]


def test_a_delivery_whose_enqueue_was_lost_is_queued_again_by_a_later_check(
    acme, chat, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from kombu.exceptions import OperationalError

    from marketplace.accounts import tasks
    from marketplace.accounts.models import WebhookDelivery

    own = make_budget(acme, "100", thresholds=[50], webhook_url="https://hooks.example.com/a")
    mine = make_budget(
        acme, "10", deployment=chat, thresholds=[50], webhook_url="https://hooks.example.com/b"
    )
    spend(chat, "60")

    def broker_away(alert_id: int) -> None:
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(tasks.deliver_budget_alert, "delay", broker_away)
    with django_capture_on_commit_callbacks(execute=True):
        counts = budgets.check_budgets(NOW)  # the pass goes on: both budgets alert
    assert counts["alerts"] == 2 and BudgetAlert.objects.count() == 2

    queued: list[int] = []
    monkeypatch.setattr(tasks.deliver_budget_alert, "delay", queued.append)
    assert budgets.check_budgets(NOW)["requeued"] == 0  # too recent to call lost
    BudgetAlert.objects.update(created_at=timezone.now() - timedelta(minutes=11))
    delivered = BudgetAlert.objects.get(budget=own)
    WebhookDelivery.objects.create(alert=delivered, attempt=1, url=own.webhook_url, delivered=True)
    assert budgets.check_budgets(NOW)["requeued"] == 1
    assert queued == [BudgetAlert.objects.get(budget=mine).pk]


def test_the_scale_down_at_the_limit_commits_with_its_alert_not_after_it(acme, busy, scaled) -> None:
    """No commit callbacks run here, as when a checker dies between committing the alert and running
    them: the deployments are scaled down all the same, since the alert and the scaling are one write."""
    budget = make_budget(acme, "100", thresholds=[100], scale_down_at_limit=True)
    spend(busy, "101")
    budgets.check_budget(budget, NOW)
    busy.refresh_from_db()
    assert busy.max_replicas == 1
    assert "Scaled down to their minimum: busy." in BudgetAlert.objects.get().message
