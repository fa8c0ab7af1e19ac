"""/api/datasets/: owners and admins upload, make from logs, download and delete; members read the
descriptions and counts only; outsiders see nothing; a bad upload leaves nothing behind."""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from learning import writer
from learning.capture import QUEUE_KEY
from learning.models import Dataset
from learning.storage import FolderStore
from marketplace.accounts.models import Organization

URL = "/api/datasets/"
ClientFor = Callable[[AbstractUser | None], APIClient]


def upload_file(*records: Any) -> io.BytesIO:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records)
    handle = io.BytesIO(text.encode())
    handle.name = "data.jsonl"
    return handle


def chat(question: str, answer: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


TEN = [chat(f"Question {n}?", f"Answer {n}") for n in range(10)]


def upload(client: APIClient, *records: Any, **fields: Any) -> Any:
    data = {"name": "support", "organization": "acme", "file": upload_file(*records), **fields}
    return client.post(URL, data, format="multipart")


@pytest.fixture
def store(configured_store: FolderStore) -> FolderStore:
    return configured_store


def test_an_owner_uploads_a_dataset_split_by_its_seed(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore
) -> None:
    answer = upload(client_for(owner), *TEN, heldout_fraction=0.3, seed=4)
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert (body["name"], body["version"], body["source"]) == ("support", 1, "upload")
    assert (body["records"], body["train_records"], body["heldout_records"]) == (10, 7, 3)
    assert store.list("datasets/") == [Dataset.objects.get().key]


def test_the_same_name_makes_the_next_version(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore
) -> None:
    client = client_for(owner)
    upload(client, *TEN)
    assert upload(client, *TEN[:4]).json()["version"] == 2
    assert list(Dataset.objects.values_list("version", "records")) == [(2, 4), (1, 10)]


def test_a_bad_upload_names_the_line_and_field_and_writes_nothing(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore
) -> None:
    bad = {"messages": [{"role": "user", "content": "ok"}, {"role": "robot", "content": "x"}]}
    answer = upload(client_for(owner), *TEN[:2], bad, "{oops")
    assert answer.status_code == 400
    errors = answer.json()["file"]
    assert errors[0].startswith("Line 3: messages[1].role: must be one of system, user, assistant")
    assert errors[1].startswith("Line 4: line: is not JSON")
    assert not Dataset.objects.exists()
    assert store.list("") == []


def test_a_row_that_cannot_be_saved_removes_its_object(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore, monkeypatch: Any
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(Dataset.objects, "create", broken)
    with pytest.raises(RuntimeError):
        upload(client_for(owner), *TEN)
    assert store.list("") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "no spaces"}, "name"),
        ({"heldout_fraction": 1.5}, "heldout_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_fields_are_refused_by_name(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore, fields: dict[str, Any], field: str
) -> None:
    answer = upload(client_for(owner), *TEN, **fields)
    assert answer.status_code == 400 and field in answer.json()
    assert store.list("") == []


def test_a_member_sees_datasets_but_cannot_upload_or_download(
    client_for: ClientFor, owner: AbstractUser, member: AbstractUser, store: FolderStore
) -> None:
    dataset = upload(client_for(owner), *TEN).json()
    client = client_for(member)
    assert [d["id"] for d in client.get(URL).json()["results"]] == [dataset["id"]]
    assert client.get(f"{URL}{dataset['id']}/download/").status_code == 403
    assert upload(client, *TEN).status_code == 403
    assert client.delete(f"{URL}{dataset['id']}/").status_code == 403


def test_an_owner_downloads_all_or_one_part_as_json_lines(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore
) -> None:
    client = client_for(owner)
    dataset = upload(client, *TEN, heldout_fraction=0.2).json()
    answer = client.get(f"{URL}{dataset['id']}/download/")
    assert answer["Content-Type"] == "application/x-ndjson"
    records = [json.loads(line) for line in b"".join(answer.streaming_content).splitlines()]
    assert [r["id"] for r in records] == [str(n) for n in range(1, 11)]
    assert records[0]["messages"] == [{"role": "user", "content": "Question 0?"}]
    assert records[0]["reference"] == "Answer 0"
    held = client.get(f"{URL}{dataset['id']}/download/", {"part": "heldout"})
    held_records = [json.loads(line) for line in b"".join(held.streaming_content).splitlines()]
    assert len(held_records) == 2 and {r["split"] for r in held_records} == {"heldout"}


@pytest.mark.parametrize(
    ("stored", "problem"),
    [(None, "are missing from the object store"), (b"not gzip", "cannot be read (BadGzipFile)")],
    ids=["missing", "unreadable"],
)
def test_a_download_whose_stored_records_are_gone_or_damaged_is_a_conflict(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore, stored: bytes | None, problem: str
) -> None:
    client = client_for(owner)
    dataset = upload(client, *TEN).json()
    key = Dataset.objects.get(pk=dataset["id"]).key
    store.delete(key) if stored is None else store.put(key, stored)
    answer = client.get(f"{URL}{dataset['id']}/download/")
    assert answer.status_code == 409
    assert problem in answer.json()["detail"] and "upload it again" in answer.json()["detail"]


def test_deleting_a_dataset_removes_its_object(
    client_for: ClientFor, owner: AbstractUser, store: FolderStore, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(owner)
    dataset = upload(client, *TEN).json()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"{URL}{dataset['id']}/").status_code == 204
    assert not Dataset.objects.exists() and store.list("") == []


def test_an_outsider_sees_nothing_and_cannot_touch_anothers_dataset(
    client_for: ClientFor, owner: AbstractUser, outsider: AbstractUser, store: FolderStore
) -> None:
    dataset = upload(client_for(owner), *TEN).json()
    client = client_for(outsider)
    assert client.get(URL).json()["results"] == []
    assert client.get(f"{URL}{dataset['id']}/").status_code == 404
    assert client.get(f"{URL}{dataset['id']}/download/").status_code == 404
    assert client.delete(f"{URL}{dataset['id']}/").status_code == 404
    assert upload(client, *TEN).status_code == 400  # names acme, which is not theirs
    assert Dataset.objects.count() == 1


def test_an_anonymous_caller_is_refused(client_for: ClientFor, store: FolderStore) -> None:
    assert client_for(None).get(URL).status_code in (401, 403)


START = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)


@pytest.fixture
def logged(
    acme: Organization, globex: Organization, redis_connection: redis.Redis, store: FolderStore,
    make_record: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    """Six chat calls of acme (two asking the same), one failed, and one of globex."""

    def call(organization: Organization, minute: int, question: str, **fields: Any) -> dict[str, Any]:
        return make_record(
            organization.pk, time=(START + datetime.timedelta(minutes=minute)).isoformat(),
            request={"model": "chat", "messages": [{"role": "user", "content": question}]},
            answer={"choices": [{"message": {"role": "assistant", "content": f"re: {question}"}}]},
            **fields,
        )  # fmt: skip

    records = [call(acme, n, f"acme question {n}") for n in range(5)]
    records += [call(acme, 5, "acme question 0"), call(acme, 6, "failed", status=500)]
    records.append(call(globex, 1, "globex question"))
    redis_connection.rpush(QUEUE_KEY, *(json.dumps(r) for r in records))
    writer.write_queued(redis_connection, store)


def from_logs(client: APIClient, **fields: Any) -> Any:
    body = {
        "organization": "acme", "name": "from-traffic", "since": START.isoformat(),
        "until": (START + datetime.timedelta(hours=1)).isoformat(), **fields,
    }  # fmt: skip
    return client.post(f"{URL}from-logs/", body, format="json")


def download(client: APIClient, dataset_id: int) -> list[dict[str, Any]]:
    answer = client.get(f"{URL}{dataset_id}/download/")
    return [json.loads(line) for line in b"".join(answer.streaming_content).splitlines()]


def test_an_owner_makes_a_dataset_from_logged_calls_deduplicated(
    client_for: ClientFor, owner: AbstractUser, logged: None
) -> None:
    client = client_for(owner)
    answer = from_logs(client)
    assert answer.status_code == 201, answer.content
    assert (answer.json()["source"], answer.json()["records"]) == ("logs", 5)
    records = download(client, answer.json()["id"])
    assert sorted(r["messages"][0]["content"] for r in records) == [f"acme question {n}" for n in range(5)]
    assert all(r["reference"] == f"re: {r['messages'][0]['content']}" for r in records)


def test_a_sample_of_logged_calls_is_drawn_by_the_seed(
    client_for: ClientFor, owner: AbstractUser, logged: None
) -> None:
    client = client_for(owner)
    first = download(client, from_logs(client, sample_size=3, seed=9).json()["id"])
    second = download(client, from_logs(client, sample_size=3, seed=9).json()["id"])
    assert len(first) == 3 and [r["messages"] for r in first] == [r["messages"] for r in second]


def test_a_range_without_logged_chat_calls_is_refused_by_field(
    client_for: ClientFor, owner: AbstractUser, logged: None
) -> None:
    answer = from_logs(client_for(owner), deployment="nothing-here")
    assert answer.status_code == 400 and "since" in answer.json()
    assert not Dataset.objects.exists()


def test_a_member_cannot_make_a_dataset_from_logs(
    client_for: ClientFor, member: AbstractUser, logged: None
) -> None:
    assert from_logs(client_for(member)).status_code == 403


def test_an_outsider_cannot_make_a_dataset_of_anothers_logs(
    client_for: ClientFor, outsider: AbstractUser, logged: None
) -> None:
    assert from_logs(client_for(outsider)).status_code == 400
    answer = from_logs(client_for(outsider), organization="globex")
    assert answer.status_code == 201
    records = download(client_for(outsider), answer.json()["id"])
    assert [r["messages"][0]["content"] for r in records] == ["globex question"]
