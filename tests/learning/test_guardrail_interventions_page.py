"""The guardrail page shows where the guardrail applies and what it did at the gateway: interventions per
day over 30 days (a server-drawn bar chart) and by direction, rule and action; members read it; an
outsider sees nothing of another organisation's guardrail."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import AbstractUser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from learning.guardrails import service
from learning.models import Guardrail, GuardrailAttachment, GuardrailIntervention
from marketplace.accounts.models import Organization
from marketplace.web import guardrail_chart
from tests.learning.conftest import make_deployment


@pytest.fixture
def guardrail(acme: Organization, owner: AbstractUser) -> Guardrail:
    made = service.create_guardrail(
        organization=acme, user=owner, name="support", config={"personal_data": {"EMAIL": "mask"}}
    )
    service.publish(made, owner)
    return made


def browser(user: AbstractUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


def intervene(
    guardrail: Guardrail, days_ago: int, *, action: str = "masked", direction: str = "input"
) -> None:
    GuardrailIntervention.objects.create(
        guardrail=guardrail, version=1, request_id=f"r{days_ago}{action}{direction}", deployment_name="chat",
        direction=direction, kind="personal_data", name="EMAIL", action=action,
        created_at=timezone.now() - datetime.timedelta(days=days_ago),
    )  # fmt: skip


def test_the_chart_counts_interventions_per_day_with_empty_days(guardrail: Guardrail) -> None:
    intervene(guardrail, 0)
    intervene(guardrail, 0, direction="output")
    intervene(guardrail, 3, action="blocked")
    intervene(guardrail, 45)  # older than the chart's 30 days
    chart = guardrail_chart.intervention_chart(guardrail)
    heights = [bar.height for bar in chart.bars]
    assert len(heights) == 30 and chart.total == "3 interventions"
    assert heights[-1] > heights[-4] > 0 and heights.count(0.0) == 28


def test_the_totals_group_by_direction_rule_and_action(guardrail: Guardrail) -> None:
    intervene(guardrail, 0)
    intervene(guardrail, 1)
    intervene(guardrail, 2, action="blocked")
    totals = guardrail_chart.intervention_totals(guardrail)
    assert [(r["direction"], r["action"], r["count"]) for r in totals] == [
        ("input", "masked", 2), ("input", "blocked", 1),
    ]  # fmt: skip


def test_a_member_sees_the_chart_and_where_it_applies(
    guardrail: Guardrail, member: AbstractUser, acme: Organization
) -> None:
    GuardrailAttachment.objects.create(guardrail=guardrail, deployment=make_deployment(acme, "chat"))
    intervene(guardrail, 0, action="blocked")
    page = browser(member).get(f"/guardrails/{guardrail.pk}/")
    assert page.status_code == 200
    assert b'data-chart="interventions"' in page.content
    assert b"1 interventions" in page.content
    assert b"Deployment <strong>chat</strong>: the latest published version" in page.content


def test_an_outsider_sees_nothing_of_another_organisations_interventions(
    guardrail: Guardrail, outsider: AbstractUser, globex: Organization
) -> None:
    intervene(guardrail, 0)
    page = browser(outsider).get(f"/guardrails/{guardrail.pk}/")
    assert page.status_code == 404
    assert b"interventions" not in page.content


def test_the_page_costs_the_same_queries_however_many_interventions(
    guardrail: Guardrail, member: AbstractUser
) -> None:
    client = browser(member)
    for day in range(5):
        intervene(guardrail, day)
    client.get(f"/guardrails/{guardrail.pk}/")  # the session's first page also fills per-session caches
    with CaptureQueriesContext(connection) as few:
        client.get(f"/guardrails/{guardrail.pk}/")
    for day in range(5, 25):
        intervene(guardrail, day, action="blocked")
    with CaptureQueriesContext(connection) as many:
        client.get(f"/guardrails/{guardrail.pk}/")
    assert len(many) == len(few)
