"""The writer: queued records become one object per organisation, deployment and window, indexed, once;
retention deletes objects with their index rows."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from learning import writer
from learning.capture import DEAD_LETTER_KEY, QUEUE_KEY
from learning.models import InvocationLogObject, InvocationLogSettings
from learning.records import window_start
from learning.storage import FolderStore, S3Store, decode_records
from learning.tasks import delete_log_objects, expire_invocation_logs, write_invocation_logs
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

MakeRecord = Callable[..., dict[str, Any]]
NOON = datetime.datetime(2026, 12, 2, 12, 0, 30, tzinfo=datetime.UTC)


def at(minutes: float) -> str:
    return (NOON + datetime.timedelta(minutes=minutes)).isoformat()


def enqueue(connection: redis.Redis, *records: dict[str, Any] | str) -> None:
    connection.rpush(QUEUE_KEY, *(r if isinstance(r, str) else json.dumps(r) for r in records))


def stored(store: Any) -> list[dict[str, Any]]:
    return [record for key in store.list("") for record in decode_records(store.get(key))]


def test_queued_records_become_one_indexed_object(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore, make_record: MakeRecord
) -> None:
    deployment = make_deployment(acme)
    records = [make_record(acme.pk, deployment_id=deployment.pk, time=at(m)) for m in (0, 1, 2)]
    enqueue(redis_connection, *records)
    assert writer.write_queued(redis_connection, folder_store).records == 3
    [row] = InvocationLogObject.objects.all()
    assert (row.organization, row.deployment, row.deployment_name, row.records) == (
        acme,
        deployment,
        "chat",
        3,
    )
    assert (row.first_at, row.last_at) == (NOON, NOON + datetime.timedelta(minutes=2))
    assert decode_records(folder_store.get(row.key)) == records
    assert row.bytes == len(folder_store.get(row.key))
    assert redis_connection.llen(QUEUE_KEY) == 0


def test_objects_are_split_by_organisation_deployment_and_window(
    acme: Organization, globex: Organization, redis_connection: redis.Redis, folder_store: FolderStore,
    make_record: MakeRecord,
) -> None:  # fmt: skip
    chat, other = make_deployment(acme, "chat"), make_deployment(acme, "other")
    enqueue(
        redis_connection,
        make_record(acme.pk, deployment_id=chat.pk, time=at(0)),
        make_record(acme.pk, deployment_id=chat.pk, time=at(1)),
        make_record(acme.pk, deployment_id=other.pk, deployment="other", time=at(1)),
        make_record(acme.pk, deployment_id=chat.pk, time=at(5)),  # the next 5-minute window
        make_record(globex.pk, time=at(1)),
    )
    writer.write_queued(redis_connection, folder_store)
    counts = sorted(
        InvocationLogObject.objects.values_list("organization__slug", "deployment_name", "records")
    )
    assert counts == [("acme", "chat", 1), ("acme", "chat", 2), ("acme", "other", 1), ("globex", "chat", 1)]
    assert len(folder_store.list(f"invocation-logs/org-{acme.pk}/")) == 3
    assert len(folder_store.list(f"invocation-logs/org-{globex.pk}/")) == 1


def test_a_writer_that_died_before_trimming_stores_nothing_twice(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore, make_record: MakeRecord
) -> None:
    first = [make_record(acme.pk, time=at(0)) for _ in range(3)]
    enqueue(redis_connection, *first)
    # The first run stores the batch and dies before its LTRIM: the records are still queued.
    writer.write_batch(redis_connection.lrange(QUEUE_KEY, 0, -1), folder_store)
    later = make_record(acme.pk, time=at(1))
    enqueue(redis_connection, later)
    writer.write_queued(redis_connection, folder_store)
    assert sorted(r["id"] for r in stored(folder_store)) == sorted(r["id"] for r in [*first, later])
    [row] = InvocationLogObject.objects.all()
    assert row.records == 4


def test_malformed_records_are_dead_lettered_and_the_rest_stored(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore, make_record: MakeRecord
) -> None:
    good = make_record(acme.pk)
    enqueue(
        redis_connection,
        "not json",
        make_record(acme.pk, id="../../etc"),
        make_record(acme.pk, status=700),
        good,
    )
    result = writer.write_queued(redis_connection, folder_store)
    assert (result.records, len(result.dead), redis_connection.llen(DEAD_LETTER_KEY)) == (1, 3, 3)
    assert stored(folder_store) == [good]


def test_a_record_too_deeply_nested_to_mask_is_dead_lettered_and_the_queue_moves_on(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore, make_record: MakeRecord
) -> None:
    """A request nested 600 levels deep is valid JSON the gateway forwards (the engine refuses it); the
    masking walk cannot follow it. Before, the writer raised on it and the batch stayed queued for
    ever, every organisation's records behind it."""
    deep = {"role": "user", "content": json.loads("[" * 600 + "]" * 600)}
    good = make_record(acme.pk)
    enqueue(redis_connection, make_record(acme.pk, request={"messages": [deep]}, mask=True), good)
    result = writer.write_queued(redis_connection, folder_store)
    assert (len(result.dead), redis_connection.llen(DEAD_LETTER_KEY)) == (1, 1)
    assert [record["id"] for record in stored(folder_store)] == [good["id"]]
    assert redis_connection.llen(QUEUE_KEY) == 0


def test_set_aside_records_unmasked_are_kept_a_day_at_most(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore, make_record: MakeRecord
) -> None:
    deep = {"role": "user", "content": json.loads("[" * 600 + "]" * 600)}
    enqueue(redis_connection, make_record(acme.pk, request={"messages": [deep]}, mask=True))
    writer.write_queued(redis_connection, folder_store)
    assert 0 < redis_connection.ttl(DEAD_LETTER_KEY) <= 24 * 3600


def test_a_dead_lettered_record_is_logged_without_its_bodies(
    acme: Organization, redis_connection: redis.Redis, folder_store: FolderStore, make_record: MakeRecord,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Bodies reach the store only masked; the application log must not hold them unmasked either."""
    record = make_record(acme.pk, status=700)  # a status no HTTP answer has
    enqueue(redis_connection, {"request": record.pop("request"), **record})  # the body leads the line
    with caplog.at_level("WARNING", logger="learning.writer"):
        assert len(writer.write_queued(redis_connection, folder_store).dead) == 1
    assert "dead-lettered" in caplog.text and "ann@example.com" not in caplog.text


def test_records_of_a_deleted_deployment_keep_its_name_and_of_a_deleted_organisation_go(
    acme: Organization, globex: Organization, redis_connection: redis.Redis, folder_store: FolderStore,
    make_record: MakeRecord,
) -> None:  # fmt: skip
    deployment = make_deployment(acme)
    enqueue(redis_connection, make_record(acme.pk, deployment_id=deployment.pk), make_record(globex.pk))
    deployment.delete()
    globex.delete()
    result = writer.write_queued(redis_connection, folder_store)
    assert (result.records, result.orphaned) == (1, 1)
    [row] = InvocationLogObject.objects.all()
    assert (row.deployment_id, row.deployment_name) == (None, "chat")


def test_the_writer_stores_to_an_s3_compatible_server(
    acme: Organization, redis_connection: redis.Redis, s3_store: S3Store, make_record: MakeRecord
) -> None:
    records = [make_record(acme.pk) for _ in range(5)]
    enqueue(redis_connection, *records)
    writer.write_queued(redis_connection, s3_store)
    [row] = InvocationLogObject.objects.all()
    assert decode_records(s3_store.get(row.key)) == records


def test_the_periodic_task_writes_to_the_configured_store(
    acme: Organization, redis_connection: redis.Redis, configured_store: FolderStore, make_record: MakeRecord
) -> None:
    enqueue(redis_connection, make_record(acme.pk), make_record(acme.pk))
    assert write_invocation_logs() == 2
    assert len(stored(configured_store)) == 2


def object_of(
    organization: Organization, store: FolderStore, last_at: datetime.datetime
) -> InvocationLogObject:
    key = f"invocation-logs/org-{organization.pk}/{last_at:%Y%m%d%H%M%S}.jsonl.gz"
    store.put(key, b"x")
    return InvocationLogObject.objects.create(
        organization=organization, key=key, first_at=last_at, last_at=last_at, records=1, bytes=1
    )


def test_retention_deletes_expired_objects_with_their_index_rows(
    acme: Organization, globex: Organization, configured_store: FolderStore
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    InvocationLogSettings.objects.create(organization=acme, enabled=True, retention_days=7)
    old = object_of(acme, configured_store, now - datetime.timedelta(days=8))
    recent = object_of(acme, configured_store, now - datetime.timedelta(days=6))
    default_kept = object_of(globex, configured_store, now - datetime.timedelta(days=8))  # default: 30 days
    default_expired = object_of(globex, configured_store, now - datetime.timedelta(days=31))
    assert expire_invocation_logs() == 2
    assert set(InvocationLogObject.objects.values_list("key", flat=True)) == {recent.key, default_kept.key}
    assert configured_store.list("") == sorted([recent.key, default_kept.key])
    assert old.key not in configured_store.list("") and default_expired.key not in configured_store.list("")


def test_retention_finishes_a_deletion_whose_object_is_already_gone(
    acme: Organization, configured_store: FolderStore
) -> None:
    row = object_of(acme, configured_store, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=40))
    configured_store.delete(row.key)
    assert expire_invocation_logs() == 1
    assert not InvocationLogObject.objects.exists()


@pytest.mark.parametrize(("minute", "start"), [(0, 0), (4, 0), (5, 5), (59, 55)])
def test_windows_start_on_multiples_of_the_window(minute: int, start: int) -> None:
    moment = NOON.replace(minute=minute, second=59)
    assert window_start(moment, 5) == NOON.replace(minute=start, second=0)


def test_deleting_an_organisation_deletes_its_stored_objects_after_commit(
    acme: Organization, globex: Organization, redis_connection: redis.Redis, configured_store: FolderStore,
    make_record: MakeRecord, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    monkeypatch.setattr(delete_log_objects, "delay", lambda keys: delete_log_objects.apply(args=[keys]))
    enqueue(redis_connection, make_record(acme.pk), make_record(globex.pk, time=at(10)))
    writer.write_queued(redis_connection, configured_store)
    acme_keys = configured_store.list(f"invocation-logs/org-{acme.pk}/")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        globex.delete()
    assert len(configured_store.list("")) == 2  # nothing is deleted before the delete commits
    for callback in callbacks:
        callback()
    assert configured_store.list("") == acme_keys


def test_the_writer_and_retention_are_celery_tasks_beat_runs(settings: Any) -> None:
    from marketplace.celery import app

    app.loader.import_default_modules()  # what a worker does at start: autodiscovery of every app's tasks
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for name in ("learning.tasks.write_invocation_logs", "learning.tasks.expire_invocation_logs"):
        assert name in app.tasks and name in scheduled
    assert "learning.tasks.delete_log_objects" in app.tasks
