"""GET /api/costs/: what an organisation's deployments cost, by day, deployment, model, instance type and
API key, as JSON or CSV; members see their organisation's, outsiders none of it even by name, platform
admins everyone's. /api/instance-type-prices/: platform admins add price versions."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from marketplace.accounts import services as account_services
from serving import costs
from tests.serving.cost_data import DAY, MORNING, deployment, hourly_price, run, serve

COSTS = "/api/costs/"
PRICES = "/api/instance-type-prices/"
WINDOW = {"since": DAY.isoformat(), "until": DAY.isoformat()}


@pytest.fixture
def metered(acme, globex):
    """acme: chat ran 2 replicas for 10 hours and served 4,000 tokens (3,000 by one key, 1,000 by another);
    idle ran 1 replica for 5 hours and served nothing. globex: its own deployment ran 3 hours."""
    chat, idle, theirs = (
        deployment(acme, "chat"),
        deployment(acme, "idle", "aws-g6-xlarge"),
        deployment(globex, "x"),
    )
    run(chat, 2, MORNING, 10)
    run(idle, 1, MORNING, 5)
    run(theirs, 1, MORNING, 3)
    batch, _ = account_services.create_api_key(
        organization=acme, name="batch", created_by=None, expires_at=None
    )
    web, _ = account_services.create_api_key(organization=acme, name="web", created_by=None, expires_at=None)
    serve(chat, 3000, MORNING + timedelta(hours=1), batch)
    serve(chat, 1000, MORNING + timedelta(hours=2), web)
    return {"chat": chat, "idle": idle, "theirs": theirs, "batch": batch, "web": web}


def results(response):
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_members_see_their_organisations_cost_per_deployment(client_for, member, metered) -> None:
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "deployment"}))
    chat, idle = metered["chat"], metered["idle"]
    assert {r["deployment"]: (r["replica_hours"], r["cost_usd"]) for r in rows} == {
        "chat": (20.0, float(hourly_price(chat) * 20)),
        "idle": (5.0, float(hourly_price(idle) * 5)),
    }


def test_cost_per_thousand_tokens_counts_idle_hours(client_for, member, metered) -> None:
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "deployment"}))
    by_name = {r["deployment"]: r for r in rows}
    assert by_name["chat"]["tokens"] == 4000
    assert by_name["chat"]["cost_per_1k_tokens"] == pytest.approx(
        float(hourly_price(metered["chat"]) * 20 / 4)
    )
    assert by_name["idle"]["tokens"] == 0 and by_name["idle"]["cost_per_1k_tokens"] is None


def test_each_key_is_charged_the_share_of_cost_its_tokens_drove(client_for, member, metered) -> None:
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "api_key"}))
    chat_cost = hourly_price(metered["chat"]) * 20
    idle_cost = hourly_price(metered["idle"]) * 5
    whole = chat_cost + idle_cost
    by_key = {r["api_key"]: (r["tokens"], r["cost_usd"], r["cost_share"]) for r in rows}
    assert by_key == {
        metered["batch"].prefix: (3000, float(chat_cost * 3 / 4), round(float(chat_cost * 3 / 4 / whole), 4)),
        metered["web"].prefix: (1000, float(chat_cost / 4), round(float(chat_cost / 4 / whole), 4)),
        None: (0, float(idle_cost), round(float(idle_cost / whole), 4)),  # the idle deployment served no key
    }


def test_costs_by_model_and_instance_type(client_for, member, metered) -> None:
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "model,instance_type"}))
    assert [(r["model"], r["instance_type"], r["replica_hours"]) for r in rows] == [
        ("llama-3.1-8b-instruct", "aws-g5-xlarge", 20.0),
        ("llama-3.1-8b-instruct", "aws-g6-xlarge", 5.0),
    ]


def test_costs_by_day_say_when_a_price_is_an_estimate(client_for, member, metered) -> None:
    costs.add_price(
        metered["idle"].instance_type, hourly_price_usd=Decimal("1"), source="a guess", is_estimate=True,
        effective_from=MORNING - timedelta(days=1),
    )  # fmt: skip
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "day,deployment"}))
    assert {r["deployment"]: (r["day"], r["price_is_estimate"]) for r in rows} == {
        "chat": (DAY.isoformat(), False),
        "idle": (DAY.isoformat(), True),
    }


def test_an_outsider_sees_none_of_it_even_by_name(client_for, outsider, metered) -> None:
    client = client_for(outsider)
    rows = results(client.get(COSTS, {**WINDOW, "group_by": "deployment"}))
    assert [r["deployment"] for r in rows] == ["x"]  # their own only
    named = client.get(COSTS, {**WINDOW, "organization": "acme"})
    assert named.status_code == 400 and "acme" in named.json()["organization"][0]


def test_anonymous_callers_are_refused(client_for, metered) -> None:
    assert client_for(None).get(COSTS).status_code in (401, 403)


def test_platform_admins_see_every_organisation(client_for, platform_admin, metered) -> None:
    rows = results(client_for(platform_admin).get(COSTS, {**WINDOW, "group_by": "organization"}))
    assert {r["organization"]: r["replica_hours"] for r in rows} == {"acme": 25.0, "globex": 3.0}


def test_a_key_limited_to_a_deployment_reads_only_its_costs(client_for, acme, metered) -> None:
    _, secret = account_services.create_api_key(
        organization=acme, name="chat only", created_by=None, expires_at=None, allowed_deployments=["chat"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    rows = results(client.get(COSTS, {**WINDOW, "group_by": "deployment"}))
    assert [r["deployment"] for r in rows] == ["chat"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
        ({"group_by": " , "}, "group_by"),
        ({"since": "2026-12-01", "until": "2026-11-01"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "1999-12-31"}, "since"),
        ({"since": "2024-01-01", "until": "2026-01-01"}, "since"),
        ({"format": "pdf"}, "format"),
        ({"format": "csv", "group_by": "colour"}, "group_by"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "99999999999"}, "offset"),
        ({"format": "csv", "limit": "x"}, "limit"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(client_for, member, metered, params, field) -> None:
    response = client_for(member).get(COSTS, params)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json") and field in response.json()


def test_csv_export_has_a_header_row_and_stable_columns(client_for, member, metered) -> None:
    response = client_for(member).get(COSTS, {**WINDOW, "group_by": "deployment", "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == [
        "deployment", "deployment_id", "replica_hours", "cost_usd", "tokens", "cost_per_1k_tokens",
        "cost_share", "price_is_estimate",
    ]  # fmt: skip
    assert [(r[0], r[2], r[4], r[5]) for r in rows[1:]] == [
        ("chat", "20.0", "4000", str(round(float(hourly_price(metered["chat"]) * 5), 6))),
        ("idle", "5.0", "0", ""),
    ]


def test_csv_is_also_answered_to_accept_text_csv(client_for, member, metered) -> None:
    response = client_for(member).get(COSTS, WINDOW, HTTP_ACCEPT="text/csv")
    assert response["Content-Type"].startswith("text/csv")
    assert response.content.decode().splitlines()[0].startswith("day,replica_hours,cost_usd")


def test_the_report_takes_the_same_queries_for_one_deployment_or_many(
    client_for, member, acme, metered
) -> None:
    client = client_for(member)
    params = {**WINDOW, "group_by": "day,deployment,api_key"}
    with CaptureQueriesContext(connection) as few:
        client.get(COSTS, params)
    for n in range(8):
        extra = deployment(acme, f"extra-{n}")
        run(extra, 1, MORNING, 2)
        serve(extra, 100, MORNING + timedelta(minutes=30))
    with CaptureQueriesContext(connection) as many:
        client.get(COSTS, params)
    assert len(many) == len(few)


def test_platform_admins_add_a_price_and_past_hours_are_repriced(
    client_for, platform_admin, member, metered
) -> None:
    body = {
        "instance_type": "aws-g5-xlarge", "hourly_price_usd": "2.000000",
        "effective_from": (MORNING + timedelta(hours=5)).isoformat(), "source": "https://example.com/prices",
    }  # fmt: skip
    response = client_for(platform_admin).post(PRICES, body, format="json")
    assert response.status_code == 201, response.content
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "deployment"}))
    chat = next(r for r in rows if r["deployment"] == "chat")
    assert chat["cost_usd"] == pytest.approx(float(hourly_price_before(metered) * 10 + 2 * 10))


def hourly_price_before(metered) -> Decimal:
    return metered["chat"].instance_type.prices.order_by("effective_from").first().hourly_price_usd


def test_members_and_outsiders_cannot_add_prices(client_for, member, outsider, metered) -> None:
    body = {
        "instance_type": "aws-g5-xlarge",
        "hourly_price_usd": "0.01",
        "effective_from": MORNING.isoformat(),
        "source": "x",
    }
    for person in (member, outsider):
        assert client_for(person).post(PRICES, body, format="json").status_code == 403


def test_everyone_signed_in_reads_the_price_history(client_for, outsider, metered) -> None:
    response = client_for(outsider).get(PRICES, {"instance_type": "aws-g5-xlarge"})
    assert response.status_code == 200
    assert [p["instance_type"] for p in response.json()["results"]] == ["aws-g5-xlarge"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hourly_price_usd": "-1"}, "hourly_price_usd"),
        ({"hourly_price_usd": "cheap"}, "hourly_price_usd"),
        ({"instance_type": "no-such-type"}, "instance_type"),
        ({"effective_from": "soon"}, "effective_from"),
        ({"effective_from": "1999-01-01T00:00:00Z"}, "effective_from"),
        ({"effective_from": "2000-01-01T00:00:00Z"}, "effective_from"),  # the catalog's version is from then
        ({"source": ""}, "source"),
    ],
)
def test_a_bad_price_is_refused_naming_the_field(client_for, platform_admin, metered, change, field) -> None:
    body = {
        "instance_type": "aws-g5-xlarge", "hourly_price_usd": "1.5", "effective_from": MORNING.isoformat(),
        "source": "https://example.com", **change,
    }  # fmt: skip
    response = client_for(platform_admin).post(PRICES, body, format="json")
    assert response.status_code == 400 and field in response.json(), response.content


def test_a_price_added_in_the_admin_reprices_past_hours(admin_client, metered) -> None:
    instance = metered["chat"].instance_type
    response = admin_client.post(
        "/admin/catalog/instancetypeprice/add/",
        {
            "instance_type": instance.pk, "hourly_price_usd": "3", "effective_from_0": DAY.isoformat(),
            "effective_from_1": "13:00:00", "source": "https://example.com/prices", "is_estimate": "",
        },
    )  # fmt: skip
    assert response.status_code == 302, response.content[:2000]
    since = MORNING - timedelta(days=1)
    cost = costs.cost_between(
        organization_id=metered["chat"].organization_id, since=since, until=since + timedelta(days=3)
    )
    chat, idle = hourly_price_before(metered) * 2 * 5 + 3 * 2 * 5, hourly_price(metered["idle"]) * 5
    assert cost == (chat + idle).quantize(Decimal("0.000001"))


def test_options_asked_as_csv_are_answered_as_json(client_for, member, metered) -> None:
    response = client_for(member).options(COSTS + "?format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")


def test_a_recreated_deployment_is_a_row_of_its_own_under_the_same_name(
    client_for, member, acme, metered
) -> None:
    old = metered["chat"]
    old.status = "deleted"
    old.save(update_fields=["status"])
    new = deployment(acme, "chat")
    run(new, 1, MORNING, 2)
    serve(new, 500, MORNING + timedelta(minutes=30))
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "deployment"}))
    chats = {r["deployment_id"]: (r["deployment"], r["replica_hours"], r["tokens"]) for r in rows[:2]}
    assert chats == {old.pk: ("chat", 20.0, 4000), new.pk: ("chat", 2.0, 500)}


def test_a_long_report_is_answered_a_page_at_a_time(client_for, member, metered) -> None:
    client = client_for(member)
    whole = client.get(COSTS, {**WINDOW, "group_by": "deployment"}).json()
    assert (whole["count"], whole["offset"], whole["limit"]) == (2, 0, 1000)
    second = client.get(COSTS, {**WINDOW, "group_by": "deployment", "limit": 1, "offset": 1}).json()
    assert second["count"] == 2 and second["results"] == whole["results"][1:]
    assert second["results"][0]["cost_share"] == whole["results"][1]["cost_share"]  # of the whole report
    beyond = client.get(COSTS, {**WINDOW, "group_by": "deployment", "offset": 5}).json()
    assert (beyond["count"], beyond["results"]) == (2, [])


def test_tokens_of_a_deployment_never_metered_in_the_window_are_a_row(
    client_for, member, acme, metered
) -> None:
    unmetered = deployment(acme, "fresh")
    serve(unmetered, 300, MORNING)
    rows = results(client_for(member).get(COSTS, {**WINDOW, "group_by": "day,deployment"}))
    fresh = next(r for r in rows if r["deployment"] == "fresh")
    assert (fresh["tokens"], fresh["cost_usd"], fresh["cost_per_1k_tokens"]) == (300, 0.0, 0.0)


def test_csv_exports_every_row_unless_a_limit_is_given(client_for, member, metered) -> None:
    client = client_for(member)
    every = client.get(COSTS, {**WINDOW, "group_by": "deployment", "format": "csv"})
    first = client.get(COSTS, {**WINDOW, "group_by": "deployment", "format": "csv", "limit": 1})
    assert len(every.content.decode().splitlines()) == 3 and len(first.content.decode().splitlines()) == 2


def test_the_usage_apis_key_group_asks_for_costs_by_api_key(client_for, member, metered) -> None:
    client = client_for(member)
    as_usage = results(client.get(COSTS, {**WINDOW, "group_by": "day,key"}))
    assert as_usage == results(client.get(COSTS, {**WINDOW, "group_by": "day,api_key"}))
    assert {r["api_key"] for r in as_usage} == {metered["batch"].prefix, metered["web"].prefix, None}
