"""A deployment's page shows what its organisation's guardrails did on calls to it: interventions per day
over 30 days (the guardrail page's server-drawn bar chart) and by direction, rule and action, as a part of
the page it loads once shown (htmx), so neither the page nor its status polling pays for them; an outsider
sees nothing of another organisation's deployment."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import AbstractUser
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from learning.guardrails import service
from learning.models import Guardrail, GuardrailIntervention
from marketplace.accounts.models import Organization
from marketplace.web import guardrail_chart
from serving.models import Deployment
from tests.learning.conftest import make_deployment


@pytest.fixture
def guardrail(acme: Organization, owner: AbstractUser) -> Guardrail:
    made = service.create_guardrail(
        organization=acme, user=owner, name="support", config={"personal_data": {"EMAIL": "mask"}}
    )
    service.publish(made, owner)
    return made


@pytest.fixture
def deployment(acme: Organization) -> Deployment:
    made = make_deployment(acme, "chat")
    Deployment.objects.filter(pk=made.pk).update(created_at=timezone.now() - datetime.timedelta(days=60))
    made.refresh_from_db()
    return made


def browser(user: AbstractUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


PART = {"HX-Request": "true", "HX-Target": "interventions"}


def interventions_part(client: Client, deployment: Deployment) -> HttpResponse:
    """The page's interventions part, as its htmx placeholder asks for it."""
    return client.get(f"/deployments/{deployment.pk}/", headers=PART)


def intervene(
    guardrail: Guardrail, days_ago: int, *, deployment: str = "chat", action: str = "masked"
) -> None:
    GuardrailIntervention.objects.create(
        guardrail=guardrail, version=1, request_id=f"r{days_ago}{action}{deployment}",
        deployment_name=deployment,
        direction="input", kind="personal_data", name="EMAIL", action=action,
        created_at=timezone.now() - datetime.timedelta(days=days_ago),
    )  # fmt: skip


def test_the_chart_counts_the_deployments_interventions_per_day(
    guardrail: Guardrail, deployment: Deployment
) -> None:
    intervene(guardrail, 0)
    intervene(guardrail, 2, action="blocked")
    intervene(guardrail, 0, deployment="other")  # another deployment's calls
    intervene(guardrail, 45)  # older than the chart's 30 days
    chart = guardrail_chart.intervention_chart(guardrail_chart.of_deployment(deployment))
    heights = [bar.height for bar in chart.bars]
    assert len(heights) == 30 and chart.total == "2 interventions"
    assert heights[-1] > 0 and heights[-3] > 0 and heights.count(0.0) == 28


def test_a_new_deployment_of_a_deleted_ones_name_starts_from_nothing(
    guardrail: Guardrail, acme: Organization
) -> None:
    intervene(guardrail, 3)  # calls to an earlier deployment named chat
    fresh = make_deployment(acme, "chat")
    assert guardrail_chart.intervention_chart(guardrail_chart.of_deployment(fresh)).total == "0 interventions"


def test_another_organisations_guardrails_on_the_same_name_do_not_count(
    guardrail: Guardrail, deployment: Deployment, globex: Organization, outsider: AbstractUser
) -> None:
    theirs = service.create_guardrail(organization=globex, user=outsider, name="theirs", config={})
    intervene(theirs, 0)
    assert guardrail_chart.intervention_totals(guardrail_chart.of_deployment(deployment)) == []


def test_the_deployment_page_loads_its_interventions_part(
    guardrail: Guardrail, deployment: Deployment, member: AbstractUser
) -> None:
    page = browser(member).get(f"/deployments/{deployment.pk}/")
    assert page.status_code == 200
    assert (
        f'<div id="interventions" hx-get="/deployments/{deployment.pk}/" hx-trigger="load"'.encode()
        in page.content
    )


def test_a_member_sees_the_chart_and_totals_in_the_part(
    guardrail: Guardrail, deployment: Deployment, member: AbstractUser
) -> None:
    intervene(guardrail, 0, action="blocked")
    intervene(guardrail, 1)
    part = interventions_part(browser(member), deployment)
    assert part.status_code == 200
    assert part.content.startswith(b'<section id="interventions">')
    assert b'data-chart="interventions"' in part.content
    assert b"2 interventions" in part.content
    assert b"<td>input</td><td>personal_data</td><td>blocked</td><td>1</td>" in part.content


def test_an_outsider_sees_nothing_of_another_organisations_deployment_interventions(
    guardrail: Guardrail, deployment: Deployment, outsider: AbstractUser, globex: Organization
) -> None:
    intervene(guardrail, 0)
    client = browser(outsider)
    for page in (client.get(f"/deployments/{deployment.pk}/"), interventions_part(client, deployment)):
        assert page.status_code == 404
        assert b"interventions" not in page.content


def test_the_part_costs_the_same_queries_however_many_interventions(
    guardrail: Guardrail, deployment: Deployment, member: AbstractUser
) -> None:
    client = browser(member)
    intervene(guardrail, 0)
    client.get(f"/deployments/{deployment.pk}/")  # the session's first page also fills per-session caches
    with CaptureQueriesContext(connection) as few:
        interventions_part(client, deployment)
    for day in range(1, 25):
        intervene(guardrail, day, action="blocked" if day % 2 else "reported")
    with CaptureQueriesContext(connection) as many:
        interventions_part(client, deployment)
    assert len(many) == len(few)


def test_the_page_and_its_status_polling_read_no_interventions(
    guardrail: Guardrail, deployment: Deployment, member: AbstractUser
) -> None:
    client = browser(member)
    intervene(guardrail, 0)
    client.get(f"/deployments/{deployment.pk}/")
    status = {"HX-Request": "true", "HX-Target": "status"}
    with CaptureQueriesContext(connection) as read:
        client.get(f"/deployments/{deployment.pk}/")
        client.get(f"/deployments/{deployment.pk}/", headers=status)
    assert not any("guardrailintervention" in query["sql"] for query in read.captured_queries)
