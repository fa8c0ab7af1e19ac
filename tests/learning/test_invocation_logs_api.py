"""/api/invocation-logs/: owners and admins read records with their bodies, members without, outsiders
nothing; filters, pages and export."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from learning import browse, writer
from learning.capture import QUEUE_KEY
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

URL = "/api/invocation-logs/"
ClientFor = Callable[[AbstractUser | None], APIClient]
START = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)


def at(minutes: int) -> str:
    return (START + datetime.timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def logged(
    acme: Organization, globex: Organization, redis_connection: redis.Redis, configured_store: FolderStore,
    make_record: Callable[..., dict[str, Any]],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Records of both organisations, written to the store by the writer, by a name for each."""
    chat, other = make_deployment(acme, "chat"), make_deployment(acme, "other")
    records = {
        "first": make_record(acme.pk, deployment_id=chat.pk, time=at(0)),
        "second": make_record(acme.pk, deployment_id=chat.pk, time=at(1), key_prefix="mk-second0"),
        "failed": make_record(acme.pk, deployment_id=chat.pk, time=at(2), status=429),
        "other": make_record(
            acme.pk, deployment_id=other.pk, deployment="other", time=at(7),
            request={"messages": [{"role": "user", "content": "where is the parcel"}]},
        ),
        "theirs": make_record(
            globex.pk, time=at(3), request={"messages": [{"role": "user", "content": "globex secret plan"}]}
        ),
    }  # fmt: skip
    redis_connection.rpush(QUEUE_KEY, *(json.dumps(r) for r in records.values()))
    writer.write_queued(redis_connection, configured_store)
    return records


def request_ids(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.content
    return [item["request_id"] for item in answer.json()["results"]]


def ids_of(logged: dict[str, dict[str, Any]], *names: str) -> list[str]:
    return [logged[name]["id"] for name in names]


def test_an_owner_lists_records_newest_first_with_bodies(
    client_for: ClientFor, owner: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    answer = client_for(owner).get(URL)
    assert request_ids(answer) == ids_of(logged, "other", "failed", "second", "first")
    first = answer.json()["results"][-1]
    assert first["request"] == {
        "model": "chat",
        "messages": [{"role": "user", "content": "Reach me at ann@example.com about my order"}],
    }
    assert (first["organization"], first["deployment"], first["bodies_shown"]) == ("acme", "chat", True)


def test_a_member_sees_records_without_bodies(
    client_for: ClientFor, member: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    results = client_for(member).get(URL).json()["results"]
    assert len(results) == 4
    assert all("request" not in r and "answer" not in r and r["bodies_shown"] is False for r in results)
    assert results[0]["tokens"] == {"prompt": 12, "completion": 3}


def test_a_member_opening_one_record_sees_no_body(
    client_for: ClientFor, member: AbstractUser, owner: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    record_id = client_for(owner).get(URL).json()["results"][0]["id"]
    as_member = client_for(member).get(f"{URL}{record_id}/")
    assert as_member.status_code == 200 and "request" not in as_member.json()
    assert client_for(owner).get(f"{URL}{record_id}/").json()["request"]["messages"][0]["content"] == (
        "where is the parcel"
    )


def test_an_api_key_reads_as_a_member_without_bodies(
    api_key_client: Callable[[Organization], tuple[APIClient, str]], acme: Organization,
    logged: dict[str, dict[str, Any]],
) -> None:  # fmt: skip
    client, _ = api_key_client(acme)
    results = client.get(URL).json()["results"]
    assert len(results) == 4 and not any("request" in r for r in results)


def test_a_member_cannot_search_bodies(
    client_for: ClientFor, member: AbstractUser, owner: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    assert request_ids(client_for(member).get(URL, {"q": "parcel"})) == []
    assert request_ids(client_for(owner).get(URL, {"q": "PARCEL"})) == ids_of(logged, "other")


def test_an_outsider_sees_none_of_another_organisations_records(
    client_for: ClientFor, outsider: AbstractUser, owner: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    client = client_for(outsider)
    assert request_ids(client.get(URL)) == ids_of(logged, "theirs")
    assert request_ids(client.get(URL, {"organization": "acme"})) == []
    acme_record = client_for(owner).get(URL).json()["results"][0]["id"]
    assert client.get(f"{URL}{acme_record}/").status_code == 404
    exported = client.get(f"{URL}export/", {"since": at(-60), "until": at(60)})
    assert [
        json.loads(line)["organization"] for line in b"".join(exported.streaming_content).splitlines()
    ] == ["globex"]


def test_anonymous_callers_are_refused(client_for: ClientFor, logged: dict[str, dict[str, Any]]) -> None:
    assert client_for(None).get(URL).status_code in (401, 403)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"deployment": "other"}, ["other"]),
        ({"key": "mk-second0"}, ["second"]),
        ({"status": "429"}, ["failed"]),
        ({"status": "errors"}, ["failed"]),
        ({"since": at(1), "until": at(2)}, ["failed", "second"]),
        ({"organization": "acme", "deployment": "chat", "status": "200"}, ["second", "first"]),
    ],
)
def test_filters(
    client_for: ClientFor, owner: AbstractUser, logged: dict[str, dict[str, Any]], query: dict[str, str],
    expected: list[str],
) -> None:  # fmt: skip
    assert request_ids(client_for(owner).get(URL, query)) == ids_of(logged, *expected)


def test_pages_follow_the_cursor_without_repeats_or_gaps(
    client_for: ClientFor, owner: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    client, seen, query = client_for(owner), [], {"limit": 1}
    while True:
        answer = client.get(URL, query).json()
        seen += [item["request_id"] for item in answer["results"]]
        if not answer["next"]:
            break
        query = {"limit": 1, "cursor": answer["next"]}
    assert seen == ids_of(logged, "other", "failed", "second", "first")


def test_a_page_reads_a_bounded_number_of_objects_and_says_where_to_go_on(
    monkeypatch: pytest.MonkeyPatch, client_for: ClientFor, owner: AbstractUser,
    logged: dict[str, dict[str, Any]],
) -> None:  # fmt: skip
    monkeypatch.setattr(browse, "MAX_OBJECTS_PER_PAGE", 1)
    answer = client_for(owner).get(URL, {"status": "429"}).json()
    assert answer["results"] == [] and answer["next"]  # the newest object holds no 429
    assert request_ids(client_for(owner).get(URL, {"status": "429", "cursor": answer["next"]})) == ids_of(
        logged, "failed"
    )


def test_export_gives_json_lines_of_the_range(
    client_for: ClientFor, owner: AbstractUser, member: AbstractUser, logged: dict[str, dict[str, Any]]
) -> None:
    answer = client_for(owner).get(f"{URL}export/", {"since": at(0), "until": at(5)})
    assert answer.status_code == 200 and answer["Content-Type"] == "application/x-ndjson"
    assert "attachment" in answer["Content-Disposition"]
    lines = [json.loads(line) for line in b"".join(answer.streaming_content).splitlines()]
    assert [line["request_id"] for line in lines] == ids_of(logged, "first", "second", "failed")
    assert all("request" in line for line in lines)
    as_member = client_for(member).get(f"{URL}export/", {"since": at(0), "until": at(5)})
    assert not any(
        "request" in json.loads(line) for line in b"".join(as_member.streaming_content).splitlines()
    )


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("", {"status": "teapot"}, "status"),
        ("", {"status": "700"}, "status"),
        ("", {"status": "²"}, "status"),  # a digit to str.isdigit, not to int()
        ("", {"cursor": "99999999999999999999.0"}, "cursor"),
        ("", {"since": "0001-01-01T00:00:00+05:00"}, "since"),
        ("export/", {"since": "9999-12-31T00:00", "until": "9999-12-31T23:59:59-05:00"}, "until"),
        ("", {"cursor": "nonsense"}, "cursor"),
        ("", {"since": "yesterday"}, "since"),
        ("", {"since": at(5), "until": at(0)}, "since"),
        ("", {"limit": "0"}, "limit"),
        ("export/", {"until": at(5)}, "since"),
        ("export/", {"since": at(-60 * 24 * 40), "until": at(0)}, "since"),
    ],
)
def test_bad_queries_are_refused_naming_the_field(
    client_for: ClientFor, owner: AbstractUser, logged: dict[str, dict[str, Any]], path: str,
    query: dict[str, str], field: str,
) -> None:  # fmt: skip
    answer = client_for(owner).get(URL + path, query)
    assert answer.status_code == 400 and field in answer.json()


def test_an_unknown_record_is_not_found(client_for: ClientFor, owner: AbstractUser, logged: Any) -> None:
    assert client_for(owner).get(f"{URL}999999-abc/").status_code == 404
