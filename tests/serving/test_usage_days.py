"""The daily usage roll-up stays exactly the sum of the usage records: written by the flush in the same
transaction, once per record however often a batch is retried or raced, merged when a key or deployment is
deleted, filled by the migration; and the reports that read it (/api/costs/, /api/usage/) say what summing
the raw records says, across a price change and a month boundary (UTC days)."""

from __future__ import annotations

import importlib
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, Count, Q, Sum
from django.db.models.functions import TruncDate

from marketplace.accounts import services as account_services
from marketplace.accounts.models import ApiKey, Organization
from serving import costs, usage_days
from serving.gateway.metering import (
    DEAD_LETTER_KEY,
    FLUSH_LOCK_KEY,
    QUEUE_KEY,
    flush_usage,
    parse_record,
    write_batch,
)
from serving.models import Deployment, UsageDay, UsageRecord
from tests.conftest import make_user
from tests.serving.cost_data import deployment, run

# A month boundary (31 March → 1 April, UTC) with a price change between: the reports' days are UTC.
MONTH_END = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
PRICE_CHANGE = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
SPAN = {"since": "2026-03-30", "until": "2026-04-02"}


def queued(organization: Organization, **fields: Any) -> bytes:
    """One record as the gateway queues it."""
    return json.dumps(
        {
            "request_id": uuid.uuid4().hex,
            "organization_id": organization.pk,
            "api_key_id": None,
            "deployment_id": None,
            "model": "chat",
            "route": "chat.completions",
            "prompt_tokens": 3,
            "completion_tokens": 5,
            "latency_ms": 120,
            "time_to_first_token_ms": 40,
            "status_code": 200,
            "streamed": False,
            "created_at": MONTH_END.isoformat(),
            **fields,
        }
    ).encode()


def raw_sums() -> dict[tuple[Any, ...], tuple[int, ...]]:
    """Per organisation, deployment, key and UTC day: what summing the records says."""
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 7)
    for record in UsageRecord.objects.all():
        cell = sums[
            (record.organization_id, record.deployment_id, record.api_key_id, record.created_at.date())
        ]
        ttft = record.time_to_first_token_ms
        for i, value in enumerate(
            (
                1,
                int(record.status_code >= 400),
                record.prompt_tokens,
                record.completion_tokens,
                record.latency_ms,
                ttft or 0,
                int(ttft is not None),
            )
        ):
            cell[i] += value
    return {cell: tuple(values) for cell, values in sums.items()}


def rolled_up() -> dict[tuple[Any, ...], tuple[int, ...]]:
    return {
        (row.organization_id, row.deployment_id, row.api_key_id, row.day): (
            row.requests,
            row.errors,
            row.prompt_tokens,
            row.completion_tokens,
            row.latency_ms,
            row.time_to_first_token_ms,
            row.time_to_first_token_count,
        )
        for row in UsageDay.objects.all()
    }


@pytest.fixture
def chat(acme: Organization) -> Deployment:
    return deployment(acme, "chat")


@pytest.fixture
def key(acme: Organization) -> ApiKey:
    return account_services.create_api_key(organization=acme, name="app", created_by=None, expires_at=None)[0]


@pytest.fixture
def queue() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(QUEUE_KEY, DEAD_LETTER_KEY, FLUSH_LOCK_KEY)
    yield client
    client.delete(QUEUE_KEY, DEAD_LETTER_KEY, FLUSH_LOCK_KEY)
    client.close()


def mixed(acme: Organization, chat: Deployment, key: ApiKey) -> list[bytes]:
    """Calls on both sides of midnight UTC at a month's end, by a key and without one, answered or
    refused, with and without a first token, and one no deployment took."""
    records = []
    for n in range(12):
        at = MONTH_END + timedelta(minutes=20 * n)  # 23:00 on 31 March to 02:40 on 1 April
        records.append(
            queued(
                acme,
                deployment_id=chat.pk,
                api_key_id=key.pk if n % 3 else None,
                prompt_tokens=10 + n,
                completion_tokens=7 * n,
                latency_ms=100 + 13 * n,
                time_to_first_token_ms=None if n % 4 == 0 else 30 + n,
                status_code=429 if n % 5 == 0 else 200,
                created_at=at.isoformat(),
            )
        )
    records.append(queued(acme, status_code=404, prompt_tokens=0, completion_tokens=0))
    return records


def test_a_flush_adds_exactly_what_it_inserted_to_the_days(queue, acme, chat, key) -> None:
    queue.rpush(QUEUE_KEY, *mixed(acme, chat, key))
    assert flush_usage(queue, batch_size=5) == 13
    assert rolled_up() == raw_sums()
    assert {day for (_, _, _, day) in rolled_up()} == {
        MONTH_END.date(),
        (MONTH_END + timedelta(hours=1)).date(),
    }


def test_a_retried_batch_is_not_counted_twice(queue, acme, chat, key) -> None:
    batch = mixed(acme, chat, key)
    queue.rpush(QUEUE_KEY, *batch)
    write_batch(batch)  # inserted, then the flusher died before trimming: the same batch comes again
    assert flush_usage(queue) == 0
    assert write_batch(batch).written == 0
    assert UsageRecord.objects.count() == 13
    assert rolled_up() == raw_sums()


def test_a_batch_that_repeats_a_stored_record_adds_only_the_new_ones(acme, chat, key) -> None:
    first = mixed(acme, chat, key)
    write_batch(first[:5])
    assert write_batch(first).written == 8
    assert rolled_up() == raw_sums()


def test_a_batch_with_a_malformed_record_adds_the_rows_it_kept(acme, chat, key) -> None:
    batch = [*mixed(acme, chat, key), queued(acme, latency_ms=-1)]
    result = write_batch(batch)
    assert (result.written, len(result.dead)) == (13, 1)
    assert rolled_up() == raw_sums()


def test_records_created_one_at_a_time_are_rolled_up_too(acme, chat, key) -> None:
    for n in range(3):
        UsageRecord.objects.create(
            request_id=f"r{n}",
            organization=acme,
            deployment=chat,
            api_key=key,
            model="chat",
            route="chat.completions",
            prompt_tokens=n,
            completion_tokens=2 * n,
            latency_ms=9,
            status_code=200 + 300 * (n % 2),
            created_at=MONTH_END,
        )
    assert rolled_up() == raw_sums()


def test_deleting_a_key_or_deployment_merges_its_days_into_the_rows_without_it(acme, chat, key) -> None:
    write_batch(mixed(acme, chat, key))
    key.delete()
    assert rolled_up() == raw_sums()
    chat.delete()
    assert rolled_up() == raw_sums()
    assert not UsageDay.objects.filter(Q(api_key__isnull=False) | Q(deployment__isnull=False)).exists()


def test_deleting_an_organisation_removes_its_days(acme, chat, key, globex) -> None:
    write_batch([*mixed(acme, chat, key), queued(globex)])
    acme.delete()
    assert rolled_up() == raw_sums()
    assert set(UsageDay.objects.values_list("organization", flat=True)) == {globex.pk}


def test_the_migration_fills_the_days_from_the_stored_records(acme, chat, key) -> None:
    write_batch(mixed(acme, chat, key))
    UsageDay.objects.all().delete()
    migration = importlib.import_module("serving.migrations.0007_usage_day")
    with connection.cursor() as cursor:
        cursor.execute(migration.BACKFILL)
    assert rolled_up() == raw_sums()
    usage_days.rebuild()
    assert rolled_up() == raw_sums()


@pytest.mark.django_db(transaction=True)
def test_two_flushes_racing_on_one_batch_count_each_record_once(transactional_catalog) -> None:
    """The second flush found none of the batch stored (the first had not committed), inserts after the
    first commits, skips every record, and adds nothing."""
    organization = account_services.create_organization(slug="race", name="Race", owner=make_user("racer"))
    chat = deployment(organization, "chat")
    batch = [queued(organization, deployment_id=chat.pk, prompt_tokens=n) for n in range(20)]
    rows = [parse_record(raw) for raw in batch]
    first_inserted, second_may_go = threading.Event(), threading.Event()
    counts: list[int] = []
    failures: list[BaseException] = []

    def first() -> None:
        try:
            with transaction.atomic():
                counts.append(usage_days.insert_records(rows))
                first_inserted.set()
                second_may_go.wait(10)
                time.sleep(0.5)  # the second is waiting on our uncommitted rows by now
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    def second() -> None:
        try:
            first_inserted.wait(10)
            second_may_go.set()
            counts.append(usage_days.insert_records([parse_record(raw) for raw in batch]))
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert counts == [20, 0]
    assert rolled_up() == raw_sums()
    assert UsageDay.objects.get().requests == 20


@pytest.mark.django_db(transaction=True)
def test_concurrent_flushes_of_overlapping_batches_stay_exact(transactional_catalog) -> None:
    organization = account_services.create_organization(slug="race", name="Race", owner=make_user("racer"))
    chat = deployment(organization, "chat")
    batch = [
        queued(
            organization,
            deployment_id=chat.pk,
            prompt_tokens=n,
            created_at=(MONTH_END + timedelta(minutes=7 * n)).isoformat(),
        )
        for n in range(60)
    ]
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def flush(part: list[bytes]) -> None:
        try:
            start.wait()
            write_batch(part)
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    parts = [batch[0:40], batch[20:60], batch[::2], batch[::-1]]
    threads = [threading.Thread(target=flush, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert UsageRecord.objects.count() == 60
    assert rolled_up() == raw_sums()


# The reports read the roll-up and say what summing the raw records says.


def report_from_raw_records(organization: Organization, group: str) -> dict[Any, int]:
    """Tokens a deployment served per day or per key, summed from the records themselves."""
    tokens: dict[Any, int] = defaultdict(int)
    for record in UsageRecord.objects.filter(organization=organization, deployment__isnull=False):
        where = record.created_at.date().isoformat() if group == "day" else record.api_key_id
        tokens[where] += record.prompt_tokens + record.completion_tokens
    return dict(tokens)


@pytest.fixture
def across_a_month_end(acme, chat, key) -> None:
    """Two days of metered hours, priced again at 06:00 on 1 April, and the mixed calls."""
    run(chat, 2, MONTH_END - timedelta(hours=23), 32)
    costs.add_price(
        chat.instance_type, hourly_price_usd=Decimal("9.5"), effective_from=PRICE_CHANGE, source="test"
    )
    write_batch(mixed(acme, chat, key))


def test_costs_by_day_count_the_tokens_the_records_hold(client_for, member, acme, across_a_month_end) -> None:
    response = client_for(member).get("/api/costs/", {**SPAN, "group_by": "day"})
    assert response.status_code == 200, response.content
    tokens = {row["day"]: row["tokens"] for row in response.json()["results"] if row["tokens"]}
    assert tokens == report_from_raw_records(acme, "day")
    assert len(tokens) == 2


def test_costs_by_key_count_the_tokens_the_records_hold(
    client_for, member, acme, key, across_a_month_end
) -> None:
    response = client_for(member).get("/api/costs/", {**SPAN, "group_by": "api_key"})
    assert response.status_code == 200, response.content
    tokens = {row["api_key"]: row["tokens"] for row in response.json()["results"]}
    raw = report_from_raw_records(acme, "api_key")
    assert tokens == {key.prefix: raw[key.pk], None: raw[None]}


@pytest.mark.parametrize("group_by", ["day", "deployment", "key", "day,deployment,key", "organization"])
def test_usage_says_what_summing_the_records_says(
    client_for, member, acme, across_a_month_end, group_by
) -> None:
    response = client_for(member).get("/api/usage/", {**SPAN, "group_by": group_by})
    assert response.status_code == 200, response.content
    names = {
        "day": "day",
        "deployment": "deployment__name",
        "key": "api_key__prefix",
        "organization": "organization__slug",
    }
    fields = [names[g] for g in group_by.split(",")]
    expected = []
    for row in (
        UsageRecord.objects.filter(organization=acme)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values(*fields)
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            average_latency_ms=Avg("latency_ms"),
            average_time_to_first_token_ms=Avg("time_to_first_token_ms"),
        )
        .order_by(*fields)
    ):
        item = {g: row[names[g]] for g in group_by.split(",")}
        if "day" in item:
            item["day"] = item["day"].isoformat()
        for figure in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            item[figure] = row[figure]
        for average in ("average_latency_ms", "average_time_to_first_token_ms"):
            item[average] = None if row[average] is None else round(row[average], 1)
        expected.append(item)
    assert response.json()["results"] == expected
    assert len(expected) > 1 or group_by == "organization"


def test_an_outsider_reads_none_of_the_days(client_for, outsider, acme, across_a_month_end) -> None:
    for path in ("/api/usage/", "/api/costs/"):
        response = client_for(outsider).get(path, {**SPAN, "group_by": "day"})
        assert response.status_code == 200 and response.json()["results"] == []
        named = client_for(outsider).get(path, {**SPAN, "organization": acme.slug})
        assert named.status_code == 400 and "organization" in named.json()
