"""Usage records go from the gateway's Redis queue to PostgreSQL in batches: each exactly once, even when a
flush dies half-way, and a malformed record never blocks the ones behind it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from django.conf import settings
from django.utils import timezone

from marketplace.accounts import services as account_services
from marketplace.accounts.models import ApiKey, Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving.choices import Backend
from serving.gateway.metering import DEAD_LETTER_KEY, QUEUE_KEY, UsageQueue, flush_usage, write_batch
from serving.models import Deployment, UsageRecord

METERING_REDIS_DB = 10


@pytest.fixture
def queue_url() -> Iterator[str]:
    """A Redis database of these tests' own, emptied before and after each test."""
    url = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{METERING_REDIS_DB}"
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    try:
        yield url
    finally:
        connection.flushdb()
        connection.close()


@pytest.fixture
def connection(queue_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(queue_url)
    yield client
    client.close()


@pytest.fixture
def api_key(acme: Organization) -> ApiKey:
    return account_services.create_api_key(organization=acme, name="meter", created_by=None, expires_at=None)[
        0
    ]


@pytest.fixture
def deployment(acme: Organization) -> Deployment:
    return Deployment.objects.create(
        organization=acme, name="chat", model_card=ModelCard.objects.get(slug="smollm2-135m-instruct"),
        instance_type=InstanceType.objects.get(slug="local-cpu"), backend=Backend.LOCAL,
    )  # fmt: skip


def usage(organization: Organization, **fields: Any) -> dict[str, Any]:
    """A record as the gateway queues it."""
    return {
        "request_id": uuid.uuid4().hex, "organization_id": organization.pk, "api_key_id": None,
        "deployment_id": None, "model": "chat", "route": "chat.completions", "prompt_tokens": 3,
        "completion_tokens": 5, "latency_ms": 120, "time_to_first_token_ms": 40, "status_code": 200,
        "streamed": True, "created_at": timezone.now().isoformat(), **fields,
    }  # fmt: skip


def push(url: str, *records: dict[str, Any]) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(url)
        queue = UsageQueue(client)
        for record in records:
            await queue.push(record)
        await client.aclose()

    asyncio.run(main())


def test_push_appends_the_record_as_json(queue_url: str, connection: redis.Redis, acme: Organization) -> None:
    record = usage(acme)
    push(queue_url, record)
    assert [json.loads(raw) for raw in connection.lrange(QUEUE_KEY, 0, -1)] == [record]


def test_a_flush_writes_every_queued_record_in_batches(
    queue_url: str, connection: redis.Redis, acme: Organization, api_key: ApiKey, deployment: Deployment
) -> None:
    records = [usage(acme, api_key_id=api_key.pk, deployment_id=deployment.pk) for _ in range(5)]
    push(queue_url, *records)
    assert flush_usage(connection, batch_size=2) == 5
    assert connection.llen(QUEUE_KEY) == 0
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {r["request_id"] for r in records}
    row = UsageRecord.objects.get(request_id=records[0]["request_id"])
    assert (row.organization, row.api_key, row.deployment) == (acme, api_key, deployment)
    assert (row.prompt_tokens, row.completion_tokens, row.latency_ms, row.time_to_first_token_ms) == (
        3,
        5,
        120,
        40,
    )
    assert row.streamed and row.status_code == 200 and row.route == "chat.completions"


def test_an_empty_queue_writes_nothing(connection: redis.Redis, db: None) -> None:
    assert flush_usage(connection) == 0


def test_a_flush_that_died_between_insert_and_trim_writes_each_record_once(
    queue_url: str, connection: redis.Redis, acme: Organization
) -> None:
    records = [usage(acme) for _ in range(3)]
    push(queue_url, *records)
    write_batch(connection.lrange(QUEUE_KEY, 0, -1))  # inserted, then the flusher died: nothing trimmed
    assert connection.llen(QUEUE_KEY) == 3
    assert flush_usage(connection) == 0
    assert connection.llen(QUEUE_KEY) == 0
    assert UsageRecord.objects.count() == 3
    assert UsageRecord.objects.values("request_id").distinct().count() == 3


def test_a_record_queued_twice_is_written_once(
    queue_url: str, connection: redis.Redis, acme: Organization
) -> None:
    record = usage(acme)
    push(queue_url, record, record)
    assert flush_usage(connection) == 1
    assert UsageRecord.objects.filter(request_id=record["request_id"]).count() == 1


def test_a_malformed_record_is_dead_lettered_and_does_not_block_the_queue(
    queue_url: str, connection: redis.Redis, acme: Organization
) -> None:
    before, after = usage(acme), usage(acme)
    negative = usage(acme, prompt_tokens=-1)
    push(queue_url, before)
    connection.rpush(QUEUE_KEY, b"{not json")
    push(queue_url, negative, usage(acme, created_at="yesterday"), after)
    assert flush_usage(connection, batch_size=2) == 2
    assert connection.llen(QUEUE_KEY) == 0
    dead = connection.lrange(DEAD_LETTER_KEY, 0, -1)
    assert dead[0] == b"{not json" and json.loads(dead[1]) == negative and len(dead) == 3
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {
        before["request_id"],
        after["request_id"],
    }


def test_a_dead_letter_is_not_repeated_when_a_flush_died_before_trimming(
    queue_url: str, connection: redis.Redis, acme: Organization
) -> None:
    connection.rpush(QUEUE_KEY, b"[]")
    write_batch(connection.lrange(QUEUE_KEY, 0, -1))
    flush_usage(connection)
    assert connection.lrange(DEAD_LETTER_KEY, 0, -1) == [b"[]"]


def test_usage_of_a_deleted_key_or_deployment_is_kept_without_them(
    queue_url: str, connection: redis.Redis, acme: Organization, api_key: ApiKey, deployment: Deployment
) -> None:
    record = usage(acme, api_key_id=api_key.pk, deployment_id=deployment.pk)
    push(queue_url, record)
    api_key.delete()
    deployment.delete()
    assert flush_usage(connection) == 1
    row = UsageRecord.objects.get(request_id=record["request_id"])
    assert (row.organization_id, row.api_key_id, row.deployment_id) == (acme.pk, None, None)


def test_usage_of_a_deleted_organisation_is_dropped_and_logged_once(
    queue_url: str, connection: redis.Redis, acme: Organization, globex: Organization, caplog: Any
) -> None:
    push(queue_url, usage(acme), usage(globex), usage(globex))
    globex.delete()
    with caplog.at_level(logging.WARNING, logger="serving.gateway.metering"):
        assert flush_usage(connection) == 1
    assert connection.llen(QUEUE_KEY) == 0 and connection.llen(DEAD_LETTER_KEY) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 2 usage records of organisations that no longer exist"
    ]
