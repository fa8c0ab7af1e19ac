"""The costs page: members see what their organisation's deployments cost (per day stacked by
deployment, per 1,000 tokens, per deployment), with the estimate flag where a price is one; outsiders
never see another organisation's."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from serving import costs
from tests.serving.cost_data import deployment, hourly_price, run, serve

pytestmark = pytest.mark.django_db
PAGE = "/costs/"


@pytest.fixture
def spent(acme, globex):
    start = (timezone.now() - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    chat, secret_project = deployment(acme, "chat"), deployment(globex, "secret-project")
    run(chat, 2, start, 10)
    run(secret_project, 1, start, 4)
    serve(chat, 4000, start + timedelta(hours=1))
    return {"chat": chat, "secret": secret_project, "start": start}


def test_members_see_their_organisations_costs(browser_for, member, spent) -> None:
    page = browser_for(member).get(PAGE)
    assert page.status_code == 200
    html = page.content.decode()
    cost = hourly_price(spent["chat"]) * 20
    assert f"${cost:,.2f}" in html and "20.0 replica-hours" in html
    assert 'data-chart="cost per day"' in html and "chat" in html
    assert f"${cost / 4:.4f}" in html  # per 1,000 tokens, idle hours included
    assert "/api/costs/?organization=acme" in html and "format=csv" in html


def test_an_outsider_sees_only_their_own_organisations_costs(browser_for, outsider, spent) -> None:
    browser = browser_for(outsider)
    browser.post("/organization/switch/", {"organization": "acme", "next": PAGE})
    html = browser.get(PAGE).content.decode()
    assert "secret-project" in html
    assert ">chat<" not in html and "chat:" not in html and "Acme" not in html


def test_the_outsiders_deployments_do_not_show_on_the_members_page(browser_for, member, spent) -> None:
    assert "secret-project" not in browser_for(member).get(PAGE).content.decode()


def test_an_estimated_price_is_marked_as_an_estimate(browser_for, member, spent) -> None:
    assert "estimate-note" not in browser_for(member).get(PAGE).content.decode()
    costs.add_price(
        spent["chat"].instance_type, hourly_price_usd=Decimal("1.1"), is_estimate=True, source="a guess",
        effective_from=spent["start"] - timedelta(days=1),
    )  # fmt: skip
    html = browser_for(member).get(PAGE).content.decode()
    assert "estimate-note" in html and 'class="tag gated">estimate' in html


def test_people_signed_out_are_sent_to_sign_in(browser_for, spent) -> None:
    response = browser_for(None).get(PAGE)
    assert response.status_code == 302 and "/sign-in/" in response["Location"]


def test_an_unknown_range_shows_the_last_thirty_days(browser_for, member, spent) -> None:
    page = browser_for(member).get(PAGE, {"range": "forever"})
    assert page.status_code == 200 and 'href="?range=30d" aria-current="true"' in page.content.decode()


def test_the_navigation_links_to_the_costs_page(browser_for, member, spent) -> None:
    assert f'href="{PAGE}"' in browser_for(member).get("/organization/").content.decode()


def test_the_page_takes_the_same_queries_for_one_deployment_or_many(browser_for, member, acme, spent) -> None:
    browser = browser_for(member)
    browser.get(PAGE)  # the session settles
    with CaptureQueriesContext(connection) as few:
        browser.get(PAGE)
    for n in range(9):  # more than the chart has colours: the rest are stacked as "others"
        extra = deployment(acme, f"extra-{n}")
        run(extra, 1, spent["start"], 2)
    with CaptureQueriesContext(connection) as many:
        html = browser.get(PAGE).content.decode()
    assert len(many) == len(few)
    assert "others" in html


def test_a_deployment_created_again_under_its_name_is_told_apart(browser_for, member, acme, spent) -> None:
    old = spent["chat"]
    old.status = "deleted"
    old.save(update_fields=["status"])
    new = deployment(acme, "chat")
    run(new, 1, spent["start"], 3)
    html = browser_for(member).get(PAGE).content.decode()
    assert f"chat #{old.pk}" in html and f"chat #{new.pk}" in html
