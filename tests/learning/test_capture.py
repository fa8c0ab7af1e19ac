"""Capturing invocations: the organisation's choices decide what is queued; personal data is masked
before anything reaches the store; a full queue is counted; nothing here ever raises into the gateway."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from django.conf import settings
from django.db import connections
from prometheus_client import REGISTRY

from learning import writer
from learning.capture import OVERFLOW_KEY, QUEUE_KEY, Capturer, Policy, overflow_count
from learning.models import InvocationLogSettings
from learning.storage import FolderStore, decode_records
from marketplace.accounts.models import Organization

pytestmark = pytest.mark.usefixtures("transactional_db")  # the policy is read in a thread of its own


def run_captures(
    records: list[dict[str, Any]], *, url: str | None = None, steady: bool = False
) -> list[bool]:
    """Capture the records concurrently through one Capturer, as one gateway process would; `steady`: with
    the organisations' policies already read, as in steady state (else the first captures read them)."""

    async def scenario() -> list[bool]:
        connection = redis.asyncio.Redis.from_url(url or settings.REDIS_URL)
        try:
            capturer = Capturer(connection, ttl=60)
            if steady:
                for organization_id in {int(record["organization_id"]) for record in records}:
                    await capturer.policy(organization_id)
            return list(await asyncio.gather(*(capturer.capture(record) for record in records)))
        finally:
            await connection.aclose()

    return asyncio.run(scenario())


def queued(connection: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(line) for line in connection.lrange(QUEUE_KEY, 0, -1)]


def stored(connection: redis.Redis, store: FolderStore) -> list[dict[str, Any]]:
    """What the writer stores of the queue: every record of every object."""
    writer.write_queued(connection, store)
    return [record for key in store.list("") for record in decode_records(store.get(key))]


def log_everything(organization: Organization, **choices: Any) -> None:
    InvocationLogSettings.objects.create(organization=organization, enabled=True, **choices)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_nothing_is_logged_by_default(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    assert run_captures([make_record(acme.pk)]) == [False]
    assert redis_connection.llen(QUEUE_KEY) == 0


def test_logging_off_in_settings_queues_nothing(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    InvocationLogSettings.objects.create(organization=acme, enabled=False)
    assert run_captures([make_record(acme.pk)]) == [False]
    assert redis_connection.llen(QUEUE_KEY) == 0


def test_an_enabled_organisation_gets_its_record_stored_masked(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore,
    make_record: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    log_everything(acme)
    record = make_record(acme.pk)
    assert run_captures([record]) == [True]
    [kept] = stored(redis_connection, folder_store)
    assert kept["request"]["messages"][0]["content"] == "Reach me at [EMAIL] about my order"
    assert kept["masked"] == 1
    assert {k: v for k, v in kept.items() if k not in ("request", "masked")} == {
        k: v for k, v in record.items() if k != "request"
    }


def test_nothing_unmasked_reaches_the_store(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore,
    make_record: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    log_everything(acme)
    answer = {"choices": [{"message": {"content": "Paid with 4111 1111 1111 1111 from 192.0.2.7"}}]}
    run_captures([make_record(acme.pk, answer=answer) for _ in range(3)])
    writer.write_queued(redis_connection, folder_store)
    objects = b"".join(gzip.decompress(folder_store.get(key)) for key in folder_store.list(""))
    assert objects.count(b"[EMAIL]") == 3 and objects.count(b"[CARD]") == 3 and objects.count(b"[IP]") == 3
    # Whole values: a random request id may well hold "4111".
    assert b"ann@example.com" not in objects and b"4111 1111" not in objects and b"192.0.2.7" not in objects


def test_without_masking_the_request_is_stored_as_sent(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore,
    make_record: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    log_everything(acme, mask_personal_data=False)
    record = make_record(acme.pk)
    run_captures([record])
    [kept] = stored(redis_connection, folder_store)
    assert (kept["request"], kept["masked"]) == (record["request"], 0)


def test_bodies_not_kept_are_not_queued(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme, keep_requests=False, keep_answers=False)
    run_captures([make_record(acme.pk)])
    [stored] = queued(redis_connection)
    assert (stored["request"], stored["answer"], stored["tokens"]) == (
        None,
        None,
        {"prompt": 12, "completion": 3},
    )


def test_only_the_named_deployments_are_logged(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme, deployments=["chat"])
    assert run_captures(
        [make_record(acme.pk, deployment="chat"), make_record(acme.pk, deployment="other")]
    ) == [
        True,
        False,
    ]


def test_only_the_named_keys_are_logged(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme, api_keys=["mk-keep0000"])
    records = [make_record(acme.pk, key_prefix="mk-keep0000"), make_record(acme.pk, key_prefix="mk-other000")]
    assert run_captures(records) == [True, False]


def test_a_sample_rate_of_zero_logs_nothing_and_a_half_logs_about_half(
    acme: Organization,
    globex: Organization,
    redis_connection: redis.Redis,
    make_record: Callable[..., dict[str, Any]],
) -> None:
    log_everything(acme, sample_rate=0.0)
    log_everything(globex, sample_rate=0.5)
    assert not any(run_captures([make_record(acme.pk) for _ in range(50)]))
    kept = sum(run_captures([make_record(globex.pk) for _ in range(400)]))
    assert 140 < kept < 260  # binomial(400, 0.5): outside this, about one run in a million


def test_one_organisations_choice_does_not_apply_to_another(
    acme: Organization,
    globex: Organization,
    redis_connection: redis.Redis,
    make_record: Callable[..., dict[str, Any]],
) -> None:
    log_everything(acme)
    assert run_captures([make_record(acme.pk), make_record(globex.pk)]) == [True, False]


def test_a_full_queue_counts_the_overflow_for_the_organisation_and_in_metrics(
    settings: Any,
    acme: Organization,
    redis_connection: redis.Redis,
    make_record: Callable[..., dict[str, Any]],
) -> None:
    settings.INVOCATION_LOG_QUEUE_MAX = 10
    log_everything(acme)
    before = counter("marketplace_invocation_logs_overflow_total")
    results = run_captures([make_record(acme.pk) for _ in range(50)])  # concurrently: the bound must hold
    assert (sum(results), redis_connection.llen(QUEUE_KEY)) == (10, 10)
    assert overflow_count(redis_connection, acme.pk) == 40
    assert counter("marketplace_invocation_logs_overflow_total") - before == 40


def test_overflow_is_counted_per_organisation(
    settings: Any, acme: Organization, globex: Organization, redis_connection: redis.Redis,
    make_record: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    settings.INVOCATION_LOG_QUEUE_MAX = 1
    log_everything(acme)
    log_everything(globex)
    run_captures([make_record(acme.pk), make_record(acme.pk), make_record(globex.pk)])
    assert redis_connection.hgetall(OVERFLOW_KEY) == {
        str(acme.pk).encode(): b"1",
        str(globex.pk).encode(): b"1",
    }


def test_redis_unreachable_is_counted_and_never_raised(
    acme: Organization, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme)
    before = counter("marketplace_invocation_logs_failed_total")
    assert run_captures([make_record(acme.pk)], url="redis://127.0.0.1:9/0") == [False]
    assert counter("marketplace_invocation_logs_failed_total") - before == 1


def test_a_record_without_an_organisation_is_counted_and_never_raised(redis_connection: redis.Redis) -> None:
    before = counter("marketplace_invocation_logs_failed_total")
    assert run_captures([{"deployment": "chat"}]) == [False]
    assert counter("marketplace_invocation_logs_failed_total") - before == 1


def test_the_policy_is_read_once_per_ttl_not_per_call(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme)

    def turn_off() -> None:
        InvocationLogSettings.objects.update(enabled=False)
        connections.close_all()  # this thread's own connection

    async def scenario() -> tuple[list[bool], list[bool]]:
        connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        capturer = Capturer(connection, ttl=60)
        first = [await capturer.capture(make_record(acme.pk)) for _ in range(20)]
        # Turned off meanwhile: the snapshot holds until its TTL runs out.
        await asyncio.to_thread(turn_off)
        second = [await capturer.capture(make_record(acme.pk)) for _ in range(5)]
        capturer.policies.clear()  # the TTL ran out
        second.append(await capturer.capture(make_record(acme.pk)))
        await connection.aclose()
        return first, second

    first, second = asyncio.run(scenario())
    assert all(first) and second == [True] * 5 + [False]


def test_policy_selects_by_deployment_key_and_draw() -> None:
    policy = Policy(enabled=True, deployments=frozenset({"chat"}), api_keys=frozenset(), sample_rate=0.25)
    assert policy.selects("chat", None, 0.1)
    assert not policy.selects("chat", None, 0.3)
    assert not policy.selects("other", None, 0.1)
    assert not Policy().selects("chat", None, 0.0)


def test_records_captured_together_are_queued_in_one_round_trip(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme)

    def scripts_run() -> int:
        """Scripts Redis ran: an EVALSHA of a script it has not loaded yet fails (NOSCRIPT, counted as a
        failed call) and the client sends it again, in the same flush."""
        stats = redis_connection.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
            - int(stats.get(f"cmdstat_{name}", {}).get("failed_calls", 0))
            for name in ("evalsha", "eval")
        )

    before = scripts_run()
    # In steady state (the policy read once per TTL), the 40 captures queue within one linger: one script.
    assert run_captures([make_record(acme.pk) for _ in range(40)], steady=True) == [True] * 40
    assert (scripts_run() - before, redis_connection.llen(QUEUE_KEY)) == (1, 40)


def test_a_lone_capture_is_pushed_once_the_linger_is_over(
    acme: Organization, redis_connection: redis.Redis, make_record: Callable[..., dict[str, Any]]
) -> None:
    log_everything(acme)

    async def scenario() -> float:
        connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        capturer = Capturer(connection, ttl=60, linger=0.05)
        await capturer.policy(acme.pk)
        begin = asyncio.get_running_loop().time()
        assert await capturer.capture(make_record(acme.pk))
        waited = asyncio.get_running_loop().time() - begin
        await connection.aclose()
        return waited

    assert 0.04 <= asyncio.run(scenario()) < 1
