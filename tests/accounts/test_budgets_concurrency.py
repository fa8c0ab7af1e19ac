"""Budget checks run in several workers at once: each crossing is alerted by exactly one of them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

from django.db import connection
from rest_framework.exceptions import ValidationError

from marketplace.accounts import budgets
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Budget, BudgetAlert
from tests.accounts.budget_helpers import NOW, spend
from tests.conftest import make_user
from tests.web.conftest import make_deployment

CHECKERS = 8


def in_threads(work: Callable[[], None]) -> list[BaseException]:
    """Run `work` in CHECKERS threads, each on its own database connection (closed when done); what
    they raised, with assertion errors and all, since a thread's exception is otherwise lost."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(CHECKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_concurrent_checkers_alert_each_crossed_threshold_exactly_once(transactional_catalog: None) -> None:
    organization = account_services.create_organization(slug="race", name="Race", owner=make_user("racer"))
    deployment = make_deployment(organization, name="chat", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget, _ = budgets.create_budget(
        organization=organization, deployment=None, monthly_amount_usd=Decimal("100"),
        thresholds=[50, 80, 100], webhook_url="", scale_down_at_limit=False, user=None,
    )  # fmt: skip
    spend(deployment, "130")
    start = threading.Barrier(CHECKERS)
    created: list[int] = []

    def check() -> None:
        mine = Budget.objects.select_related("organization", "deployment").get(pk=budget.pk)
        start.wait()
        created.extend(alert.threshold for alert in budgets.check_budget(mine, NOW))

    assert in_threads(check) == []
    assert sorted(created) == [50, 80, 100]
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80, 100]


def test_concurrent_creations_of_one_budget_make_one_and_refuse_the_rest_naming_the_field(
    transactional_catalog: None,
) -> None:
    """Two owners (or a double-click) create the organisation's budget at once: one is made, every other
    is refused as a duplicate, never a database error (a 500 at the API)."""
    organization = account_services.create_organization(slug="twice", name="Twice", owner=make_user("twice"))
    start = threading.Barrier(CHECKERS)
    made: list[int] = []
    refused: list[str] = []

    def create() -> None:
        start.wait()
        try:
            budget, _ = budgets.create_budget(
                organization=organization, deployment=None, monthly_amount_usd=Decimal("100"),
                thresholds=[50], webhook_url="", scale_down_at_limit=False, user=None,
            )  # fmt: skip
            made.append(budget.pk)
        except ValidationError as error:
            assert isinstance(error.detail, dict)
            refused.append(str(error.detail["deployment"][0]))

    assert in_threads(create) == []
    assert len(made) == 1 and len(refused) == CHECKERS - 1
    assert all("already has a budget" in message for message in refused)
    assert Budget.objects.filter(organization=organization).count() == 1
