"""The coarser cost and usage roll-ups (ReplicaMonth, UsageMonth, DeploymentDay, OrganizationDay) stay
exactly the sums of the daily rows whoever writes them: metering across a month end, a price added later,
the usage flush retried or raced, a key, deployment or organisation deleted, concurrent workers; and the
cost reports that read them say what the daily rows say, over whole months, parts of months and pages."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Q, Sum

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType
from serving import cost_rollups, costs
from serving.gateway.metering import write_batch
from serving.models import (
    Deployment,
    DeploymentDay,
    OrganizationDay,
    ReplicaDay,
    ReplicaMonth,
    UsageDay,
    UsageMonth,
)
from tests.conftest import make_user
from tests.serving.cost_data import deployment, run
from tests.serving.test_usage_days import MONTH_END, queued


def expected() -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    """Every roll-up as summing the daily rows says (only rows that hold a daily row)."""
    sums: dict[str, dict[tuple[Any, ...], list[Any]]] = {
        name: defaultdict(lambda: [0] * 7) for name in ("replica", "usage", "deployment", "organization")
    }
    for row in ReplicaDay.objects.all():
        month = row.day.replace(day=1)
        cell = sums["replica"][(row.organization_id, row.deployment_id, row.instance_type_id, month)]
        for i, value in enumerate((row.replica_seconds, row.cost_usd, int(row.price_is_estimate), 1)):
            cell[i] += value
        cell = sums["deployment"][(row.organization_id, row.deployment_id, row.day)]
        for i, value in enumerate((row.replica_seconds, row.cost_usd, int(row.price_is_estimate), 1)):
            cell[i] += value
    for row in UsageDay.objects.filter(deployment__isnull=False):
        tokens = row.prompt_tokens + row.completion_tokens
        cell = sums["usage"][(row.organization_id, row.deployment_id, row.api_key_id, row.day.replace(day=1))]
        cell[0] += tokens
        cell[1] += 1
        cell = sums["deployment"][(row.organization_id, row.deployment_id, row.day)]
        cell[4] += tokens
        cell[5] += 1
    for (organization, _, day), cell in sums["deployment"].items():
        whole = sums["organization"][(organization, day)]
        for i, value in enumerate((cell[0], cell[1], cell[2], cell[4], 1)):
            whole[i] += value
    return {
        "replica": {k: tuple(v[:4]) for k, v in sums["replica"].items()},
        "usage": {k: tuple(v[:2]) for k, v in sums["usage"].items()},
        "deployment": {k: tuple(v[:6]) for k, v in sums["deployment"].items()},
        "organization": {k: tuple(v[:5]) for k, v in sums["organization"].items()},
    }


def stored() -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    return {
        "replica": {
            (r.organization_id, r.deployment_id, r.instance_type_id, r.month): (
                r.replica_seconds, r.cost_usd, r.estimated_days, r.days,
            )
            for r in ReplicaMonth.objects.all()
        },
        "usage": {
            (r.organization_id, r.deployment_id, r.api_key_id, r.month): (r.tokens, r.days)
            for r in UsageMonth.objects.all()
        },
        "deployment": {
            (r.organization_id, r.deployment_id, r.day): (
                r.replica_seconds, r.cost_usd, r.estimated_days, r.replica_days, r.tokens, r.usage_days,
            )
            for r in DeploymentDay.objects.all()
        },
        "organization": {
            (r.organization_id, r.day): (
                r.replica_seconds, r.cost_usd, r.estimated_days, r.tokens, r.deployments,
            )
            for r in OrganizationDay.objects.all()
        },
    }  # fmt: skip


def assert_exact() -> None:
    assert stored() == expected()


def assert_references_hold() -> None:
    """The deferred foreign keys checked now, as a commit would (no row left for a deleted one)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def calls(organization: Organization, chat: Deployment, key_id: int | None, start: datetime) -> list[bytes]:
    """Calls every 5 hours for four days from `start`, half by the key, and one no deployment took."""
    return [
        queued(
            organization,
            deployment_id=chat.pk,
            api_key_id=key_id if n % 2 else None,
            prompt_tokens=10 + n,
            completion_tokens=3 * n,
            status_code=500 if n % 7 == 0 else 200,
            created_at=(start + timedelta(hours=5 * n)).isoformat(),
        )
        for n in range(20)
    ] + [queued(organization, created_at=start.isoformat())]


@pytest.fixture
def chat(acme: Organization) -> Deployment:
    return deployment(acme, "chat")


@pytest.fixture
def key(acme: Organization):
    return account_services.create_api_key(organization=acme, name="app", created_by=None, expires_at=None)[0]


def test_metering_across_a_month_end_adds_to_every_rollup(acme, chat) -> None:
    other = deployment(acme, "other", "aws-g6-xlarge")
    run(chat, 2, MONTH_END - timedelta(hours=30), 40)
    run(other, 1, MONTH_END - timedelta(hours=2), 5)
    assert ReplicaMonth.objects.count() == 4 and OrganizationDay.objects.count() == 3
    assert_exact()


def test_a_reading_pass_by_pass_adds_what_the_days_add(acme, chat) -> None:
    moment = MONTH_END - timedelta(minutes=50)
    for n in range(30):
        reading = costs.ReplicaReading(chat.pk, acme.pk, chat.instance_type_id, 1 + n % 3)
        costs.record_replicas([reading], at=moment + timedelta(minutes=7 * n))
    assert_exact()


def test_a_price_added_later_reprices_the_rollups_and_their_estimates(acme, chat) -> None:
    run(chat, 2, MONTH_END - timedelta(hours=30), 40)
    costs.add_price(
        chat.instance_type, hourly_price_usd=Decimal("7.25"), effective_from=MONTH_END, source="test",
        is_estimate=True,
    )  # fmt: skip
    assert_exact()
    assert OrganizationDay.objects.filter(estimated_days__gt=0).count() == 2  # 31 March from 23:00, 1 April
    costs.add_price(
        chat.instance_type, hourly_price_usd=Decimal("3"), effective_from=MONTH_END - timedelta(hours=1),
        source="test",
    )  # fmt: skip
    assert_exact()


def test_a_retried_usage_batch_adds_nothing_to_the_rollups(acme, chat, key) -> None:
    batch = calls(acme, chat, key.pk, MONTH_END - timedelta(hours=40))
    write_batch(batch)
    first = stored()
    write_batch(batch)
    assert stored() == first
    assert_exact()
    assert UsageMonth.objects.filter(deployment=chat).count() == 4  # March and April, with and without key


def test_a_day_of_failed_calls_only_is_a_row_of_no_tokens(acme, chat) -> None:
    write_batch([queued(acme, deployment_id=chat.pk, prompt_tokens=0, completion_tokens=0, status_code=503)])
    assert_exact()
    assert DeploymentDay.objects.get().tokens == 0 and OrganizationDay.objects.get().deployments == 1


def test_deleting_a_key_or_a_deployment_takes_its_days_out_of_the_rollups(acme, chat, key) -> None:
    other = deployment(acme, "other")
    run(chat, 1, MONTH_END - timedelta(hours=3), 6)
    run(other, 2, MONTH_END - timedelta(hours=1), 3)
    write_batch(calls(acme, chat, key.pk, MONTH_END - timedelta(hours=40)))
    write_batch(calls(acme, other, key.pk, MONTH_END))
    key.delete()
    assert_exact()
    assert_references_hold()
    chat.delete()
    assert_exact()
    assert_references_hold()
    assert not DeploymentDay.objects.filter(deployment_id=chat.pk).exists()
    assert OrganizationDay.objects.filter(organization=acme).exists()  # `other`'s days are left


def test_deleting_an_organisation_removes_its_rollups(acme, chat, key, globex) -> None:
    theirs = deployment(globex, "theirs")
    for mine in (chat, theirs):
        run(mine, 1, MONTH_END - timedelta(hours=3), 6)
        write_batch(calls(mine.organization, mine, None, MONTH_END))
    acme.delete()
    assert_exact()
    assert_references_hold()
    assert set(OrganizationDay.objects.values_list("organization", flat=True)) == {globex.pk}


def test_rebuild_fills_the_rollups_from_the_daily_rows(acme, chat, key) -> None:
    run(chat, 2, MONTH_END - timedelta(hours=30), 40)
    write_batch(calls(acme, chat, key.pk, MONTH_END - timedelta(hours=40)))
    with connection.cursor() as cursor:
        for table in cost_rollups.ROLL_UP_TABLES:
            cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (forget them, as if never kept)
    assert stored() == {"replica": {}, "usage": {}, "deployment": {}, "organization": {}}
    cost_rollups.rebuild()
    assert_exact()


@pytest.mark.django_db(transaction=True)
def test_concurrent_metering_passes_and_flushes_keep_the_rollups_exact(transactional_catalog) -> None:
    """Two reconcilers metering the same and different deployments of one organisation, and two flushes
    of overlapping batches, all at once, over a month end: every roll-up row they share counts each."""
    organization = account_services.create_organization(slug="race", name="Race", owner=make_user("racer"))
    fleet = [deployment(organization, f"d{n}") for n in range(6)]
    start = MONTH_END - timedelta(hours=2)
    for mine in fleet:
        costs.record_replicas(
            [costs.ReplicaReading(mine.pk, organization.pk, mine.instance_type_id, 1)], at=start
        )
    batch = [b for mine in fleet for b in calls(organization, mine, None, MONTH_END - timedelta(hours=3))[:8]]
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def meter(deployments: list[Deployment]) -> None:
        try:
            barrier.wait()
            for n in range(1, 12):
                readings = [
                    costs.ReplicaReading(d.pk, organization.pk, d.instance_type_id, 1 + (n + d.pk) % 2)
                    for d in deployments
                ]
                costs.record_replicas(readings, at=start + timedelta(minutes=25 * n))
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    def flush(part: list[bytes]) -> None:
        try:
            barrier.wait()
            write_batch(part)
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=meter, args=(fleet[:4],)),
        threading.Thread(target=meter, args=(fleet[2:],)),
        threading.Thread(target=flush, args=(batch[: len(batch) * 2 // 3],)),
        threading.Thread(target=flush, args=(batch[len(batch) // 3 :],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert ReplicaDay.objects.exists() and UsageDay.objects.exists()
    assert_exact()


# The reports read the roll-ups and say what the daily rows say.


def test_a_window_is_its_whole_months_and_the_days_around_them() -> None:
    today = date(2026, 12, 2)
    assert costs.window_periods(date(2026, 1, 1), date(2026, 3, 31), today) == (
        [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)], [], [],
    )  # fmt: skip
    # Most of January: the month less its first four days; a little of March: its days.
    assert costs.window_periods(date(2026, 1, 5), date(2026, 3, 3), today) == (
        [date(2026, 1, 1), date(2026, 2, 1)], [(date(2026, 3, 1), date(2026, 3, 3))],
        [(date(2026, 1, 1), date(2026, 1, 4))],
    )  # fmt: skip
    # The current month up to today is the month: its days after today are not metered yet.
    assert costs.window_periods(date(2026, 11, 20), date(2026, 12, 2), today) == (
        [date(2026, 12, 1)], [(date(2026, 11, 20), date(2026, 11, 30))],
        [(date(2026, 12, 3), date(2026, 12, 31))],
    )  # fmt: skip


@pytest.fixture
def quarter(acme, globex, chat, key) -> dict[str, Any]:
    """Three deployments metered and called over most of January to March 2026, one of them moved to
    another instance type, with a price change in February; globex's own alongside."""
    big = deployment(acme, "big", "aws-g6-xlarge")
    later = deployment(acme, "later")
    theirs = deployment(globex, "theirs")
    jan = datetime(2026, 1, 3, 5, tzinfo=UTC)
    run(chat, 2, jan, 24 * 80)
    run(big, 1, jan + timedelta(days=20), 24 * 30)
    run(theirs, 3, jan, 24 * 70)
    run(later, 1, jan + timedelta(days=50), 24 * 30)
    later.instance_type = InstanceType.objects.get(slug="aws-g6-xlarge")
    later.save(update_fields=["instance_type"])
    run(later, 2, jan + timedelta(days=81), 24 * 5)
    costs.add_price(
        chat.instance_type, hourly_price_usd=Decimal("4.5"), effective_from=datetime(2026, 2, 10, tzinfo=UTC),
        source="test", is_estimate=True,
    )  # fmt: skip
    for mine, key_id in ((chat, key.pk), (big, None), (theirs, None), (later, key.pk)):
        write_batch(
            [
                queued(mine.organization, deployment_id=mine.pk, api_key_id=key_id if n % 3 else None,
                       prompt_tokens=n, completion_tokens=2 * n,
                       created_at=(jan + timedelta(hours=31 * n)).isoformat())
                for n in range(60)
            ]
        )  # fmt: skip
    assert_exact()
    return {"chat": chat, "big": big, "later": later}


def from_days(organization: Organization, since: date, until: date, group: str) -> dict[Any, tuple[Any, ...]]:
    """(replica-hours, cost, tokens, estimate) per deployment or instance type, summed from the daily rows."""
    span = Q(organization=organization, day__gte=since, day__lte=until)
    cost_key = {"deployment": "deployment_id", "instance_type": "instance_type_id"}[group]
    token_key = {"deployment": "deployment_id", "instance_type": "deployment__instance_type_id"}[group]
    rows: dict[Any, list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0, False])
    for where, seconds, cost, estimate in ReplicaDay.objects.filter(span).values_list(
        cost_key, "replica_seconds", "cost_usd", "price_is_estimate"
    ):
        rows[where][0] += seconds
        rows[where][1] += cost
        rows[where][3] = rows[where][3] or estimate
    for where, tokens in (
        UsageDay.objects.filter(span, deployment__isnull=False)
        .values_list(token_key)
        .annotate(tokens=Sum("prompt_tokens") + Sum("completion_tokens"))
    ):
        rows[where][2] += tokens
    return {
        where: (round(float(s) / 3600, 3), round(float(c), 6), t, e) for where, (s, c, t, e) in rows.items()
    }


WINDOWS = [
    (date(2026, 1, 1), date(2026, 3, 31)),  # whole months
    (date(2026, 1, 5), date(2026, 3, 28)),  # most of January and March: the months less days
    (date(2026, 1, 20), date(2026, 2, 3)),  # a little of each: their days
    (date(2026, 2, 10), date(2026, 2, 10)),  # one day
    (date(2025, 12, 15), date(2026, 4, 20)),  # around everything
]


@pytest.mark.parametrize(("since", "until"), WINDOWS)
@pytest.mark.parametrize("group", ["deployment", "instance_type"])
def test_a_report_over_whole_and_partial_months_says_what_the_days_say(
    acme, quarter, since, until, group
) -> None:
    scope = costs.CostScope(Organization.objects.filter(pk=acme.pk), since, until)
    report = costs.cost_report(scope, [group]).rows
    key = "deployment_id" if group == "deployment" else "instance_type"
    slugs = dict(InstanceType.objects.values_list("slug", "pk"))
    got = {
        (row[key] if group == "deployment" else slugs[row[key]]): (
            row["replica_hours"], row["cost_usd"], row["tokens"], row["price_is_estimate"]
        )
        for row in report
    }  # fmt: skip
    assert got == from_days(acme, since, until, group)
    assert got


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_each_keys_share_over_partial_months_is_what_the_days_give(acme, quarter, since, until) -> None:
    """By key from months and days against by key and day (from the daily rows), summed over the days:
    a deployment's cost is shared by the window's tokens, so only the totals per key must agree."""
    scope = costs.CostScope(Organization.objects.filter(pk=acme.pk), since, until)
    by_key = {row["api_key"]: row["tokens"] for row in costs.cost_report(scope, ["api_key"]).rows}
    daily: dict[Any, int] = defaultdict(int)
    for row in costs.cost_report(scope, ["day", "api_key"]).rows:
        daily[row["api_key"]] += row["tokens"]
    assert by_key == {k: v for k, v in daily.items() if k in by_key} and set(daily) <= set(by_key)
    whole = sum(row["cost_usd"] for row in costs.cost_report(scope, ["api_key"]).rows)
    assert whole == pytest.approx(sum(v[1] for v in from_days(acme, since, until, "deployment").values()))


@pytest.mark.parametrize("groups", [["day"], ["day", "deployment"], ["day", "model"], ["deployment", "day"]])
def test_a_report_by_day_from_the_rollups_says_what_the_days_say(acme, quarter, groups) -> None:
    since, until = WINDOWS[1]
    scope = costs.CostScope(Organization.objects.filter(pk=acme.pk), since, until)
    rows = costs.cost_report(scope, groups).rows
    # The same report of one deployment at a time, narrowed (DeploymentDay) and then the daily rows.
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(
        sum(v[1] for v in from_days(acme, since, until, "deployment").values())
    )
    assert sum(row["tokens"] for row in rows) == sum(
        v[2] for v in from_days(acme, since, until, "deployment").values()
    )
    per_day: dict[str, tuple[float, int]] = {}
    for row in costs.cost_report(scope, ["day", "instance_type"]).rows:  # from the daily rows
        cost, tokens = per_day.get(row["day"], (0.0, 0))
        per_day[row["day"]] = (cost + row["cost_usd"], tokens + row["tokens"])
    mine: dict[str, tuple[float, int]] = {}
    for row in rows:
        cost, tokens = mine.get(row["day"], (0.0, 0))
        mine[row["day"]] = (cost + row["cost_usd"], tokens + row["tokens"])
    assert mine.keys() == per_day.keys()
    for day, (cost, tokens) in mine.items():
        assert (cost, tokens) == (pytest.approx(per_day[day][0], abs=1e-5), per_day[day][1])


def test_a_report_by_day_and_deployment_is_the_same_a_page_at_a_time(acme, globex, quarter) -> None:
    since, until = WINDOWS[0]
    scope = costs.CostScope(Organization.objects.filter(pk__in=[acme.pk, globex.pk]), since, until)
    whole = costs.cost_report(scope, ["day", "deployment"])
    assert whole.count == len(whole.rows) > 100
    every = list(Deployment.objects.values_list("pk", flat=True))
    narrowed = costs.cost_report(
        costs.CostScope(scope.organizations, since, until, deployment_ids=every), ["day", "deployment"]
    )
    assert narrowed.rows == whole.rows  # the same rows read without the organisations' day counts
    for limit in (1, 7, 100):
        pages = []
        for offset in range(0, whole.count + limit, limit):
            page = costs.cost_report(scope, ["day", "deployment"], offset=offset, limit=limit)
            assert page.count == whole.count
            pages += page.rows
        assert pages == whole.rows


def test_a_report_by_day_of_a_limited_key_reads_only_its_deployments(acme, quarter) -> None:
    since, until = WINDOWS[0]
    scope = costs.CostScope(
        Organization.objects.filter(pk=acme.pk), since, until, deployment_names=frozenset({"big"})
    )
    days = costs.cost_report(scope, ["day"]).rows
    expected_cost = from_days(acme, since, until, "deployment")[quarter["big"].pk][1]
    assert sum(row["cost_usd"] for row in days) == pytest.approx(expected_cost)
    by_deployment = costs.cost_report(scope, ["deployment"]).rows
    assert [row["deployment"] for row in by_deployment] == ["big"]


def test_an_outsider_reads_only_their_own_organisations_rollups(client_for, outsider, acme, quarter) -> None:
    window = {"since": "2026-01-01", "until": "2026-03-31"}
    for group_by in ("deployment", "day,deployment", "api_key,deployment"):
        response = client_for(outsider).get("/api/costs/", {**window, "group_by": group_by})
        assert response.status_code == 200, response.content
        assert {row["deployment"] for row in response.json()["results"]} == {"theirs"}
    by_day = client_for(outsider).get("/api/costs/", {**window, "group_by": "day"}).json()["results"]
    theirs = Deployment.objects.get(name="theirs")
    assert sum(row["cost_usd"] for row in by_day) == pytest.approx(
        from_days(theirs.organization, date(2026, 1, 1), date(2026, 3, 31), "deployment")[theirs.pk][1]
    )
    named = client_for(outsider).get("/api/costs/", {**window, "organization": acme.slug})
    assert named.status_code == 400 and "organization" in named.json()
