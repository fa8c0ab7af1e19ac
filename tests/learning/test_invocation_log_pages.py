"""The web UI's invocation log pages: settings (what is kept, who reads it, the overflow), the log
browser and one record; members see no bodies; outsiders see nothing of another organisation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import AbstractUser
from django.test import Client

from learning import writer
from learning.capture import OVERFLOW_KEY, QUEUE_KEY
from learning.models import InvocationLogObject, InvocationLogSettings
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

SETTINGS = "/invocation-logs/settings/"
LOGS = "/invocation-logs/"
BrowserFor = Callable[[AbstractUser | None], Client]


@pytest.fixture
def logged(
    acme: Organization, globex: Organization, redis_connection: redis.Redis, configured_store: FolderStore,
    make_record: Callable[..., dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    InvocationLogSettings.objects.create(organization=acme, enabled=True)
    chat = make_deployment(acme, "chat")
    records = {
        "acme": make_record(acme.pk, deployment_id=chat.pk, answer={"text": "the acme answer"}),
        "globex": make_record(globex.pk, answer={"text": "the globex answer"}),
    }
    redis_connection.rpush(QUEUE_KEY, *(json.dumps(r) for r in records.values()))
    writer.write_queued(redis_connection, configured_store)
    return records


def record_url(request_id: str) -> str:
    for obj in InvocationLogObject.objects.all():
        if obj.key.endswith(f"-{request_id}.jsonl.gz"):
            return f"{LOGS}{obj.pk}-{request_id}/"
    raise AssertionError(f"no object holds {request_id}")


def test_the_settings_page_says_logging_is_off_and_who_would_read_it(
    browser_for: BrowserFor, member: AbstractUser
) -> None:
    page = browser_for(member).get(SETTINGS).content.decode()
    assert "Logging is <strong>off</strong>" in page
    assert "Members see only the time" in page
    assert 'name="enabled"' not in page  # members get no form


def test_an_owner_turns_logging_on_from_the_page(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization
) -> None:
    make_deployment(acme, "chat")
    answer = browser_for(owner).post(
        SETTINGS,
        {"enabled": "on", "deployments": ["chat"], "sample_rate": "0.25", "retention_days": "14",
         "keep_requests": "on", "mask_personal_data": "on"},
    )  # fmt: skip
    assert answer.status_code == 200
    row = InvocationLogSettings.objects.get(organization=acme)
    assert (row.enabled, row.deployments, row.sample_rate, row.retention_days) == (True, ["chat"], 0.25, 14)
    assert (row.keep_requests, row.keep_answers, row.mask_personal_data) == (True, False, True)
    page = answer.content.decode()
    assert (
        "Logging is <strong>on</strong>" in page and "about 25% of" in page and "the deployment chat" in page
    )


def test_a_bad_value_is_shown_at_its_field_and_nothing_is_saved(
    browser_for: BrowserFor, owner: AbstractUser
) -> None:
    answer = browser_for(owner).post(SETTINGS, {"enabled": "on", "sample_rate": "3"})
    assert answer.status_code == 400
    assert 'id="error-sample_rate"' in answer.content.decode()
    assert not InvocationLogSettings.objects.exists()


def test_a_member_cannot_change_the_settings(browser_for: BrowserFor, member: AbstractUser) -> None:
    answer = browser_for(member).post(SETTINGS, {"enabled": "on"})
    assert answer.status_code == 403
    assert not InvocationLogSettings.objects.exists()


def test_the_settings_page_shows_the_overflow(
    browser_for: BrowserFor, member: AbstractUser, acme: Organization, redis_connection: redis.Redis
) -> None:
    redis_connection.hincrby(OVERFLOW_KEY, str(acme.pk), 3)
    assert "3 invocations could not be logged" in browser_for(member).get(SETTINGS).content.decode()


def test_an_outsider_changes_only_their_own_organisations_settings(
    browser_for: BrowserFor, outsider: AbstractUser, globex: Organization
) -> None:
    answer = browser_for(outsider).post(SETTINGS, {"enabled": "on"})
    assert answer.status_code == 200
    assert list(InvocationLogSettings.objects.values_list("organization__slug", flat=True)) == ["globex"]


def test_signed_out_visitors_are_sent_to_sign_in(browser_for: BrowserFor) -> None:
    for url in (SETTINGS, LOGS, f"{LOGS}1-abc/"):
        answer = browser_for(None).get(url)
        assert answer.status_code == 302 and "/sign-in/" in answer["Location"]


def test_an_owner_browses_and_opens_a_record_with_its_answer(
    browser_for: BrowserFor, owner: AbstractUser, logged: dict[str, Any]
) -> None:
    browser = browser_for(owner)
    listing = browser.get(LOGS).content.decode()
    assert record_url(logged["acme"]["id"]) in listing and record_url(logged["globex"]["id"]) not in listing
    page = browser.get(record_url(logged["acme"]["id"])).content.decode()
    assert "the acme answer" in page


def test_a_member_opens_a_record_without_its_answer(
    browser_for: BrowserFor, member: AbstractUser, logged: dict[str, Any]
) -> None:
    page = browser_for(member).get(record_url(logged["acme"]["id"])).content.decode()
    assert "the acme answer" not in page and "Only owners and admins" in page


def test_an_outsider_cannot_open_another_organisations_record(
    browser_for: BrowserFor, outsider: AbstractUser, logged: dict[str, Any]
) -> None:
    browser = browser_for(outsider)
    assert browser.get(record_url(logged["acme"]["id"])).status_code == 404
    assert record_url(logged["acme"]["id"]) not in browser.get(LOGS).content.decode()


@pytest.mark.parametrize("record_id", ["settings-x", "abc", "12", "99999999999999999999999-x"])
def test_a_record_address_that_is_not_one_answers_404(
    browser_for: BrowserFor, owner: AbstractUser, logged: Any, record_id: str
) -> None:
    assert browser_for(owner).get(f"{LOGS}{record_id}/").status_code == 404


def test_a_bad_filter_is_shown_at_its_field(
    browser_for: BrowserFor, owner: AbstractUser, logged: Any
) -> None:
    answer = browser_for(owner).get(LOGS, {"status": "teapot"})
    assert answer.status_code == 400 and 'id="error-status"' in answer.content.decode()


def test_a_time_range_offers_an_export_of_the_organisation(
    browser_for: BrowserFor, owner: AbstractUser, logged: Any
) -> None:
    page = (
        browser_for(owner)
        .get(LOGS, {"since": "2020-01-01T00:00", "until": "2030-01-01T00:00"})
        .content.decode()
    )
    assert "/api/invocation-logs/export/?organization=acme&amp;since=" in page
