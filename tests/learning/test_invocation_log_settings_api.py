"""/api/invocation-log-settings/: owners and admins turn logging on and narrow it; members read it;
outsiders see nothing of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from learning.capture import OVERFLOW_KEY
from learning.models import InvocationLogSettings
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

URL = "/api/invocation-log-settings/"
ACME = URL + "acme/"
ClientFor = Callable[[AbstractUser | None], APIClient]


def test_logging_is_off_until_someone_turns_it_on(client_for: ClientFor, member: AbstractUser) -> None:
    answer = client_for(member).get(ACME)
    assert answer.status_code == 200
    assert answer.json()["enabled"] is False and answer.json()["organization"] == "acme"
    assert not InvocationLogSettings.objects.exists()  # reading writes nothing


def test_an_owner_turns_it_on_narrowed_to_a_deployment_and_a_key(
    client_for: ClientFor, owner: AbstractUser, acme: Organization
) -> None:
    make_deployment(acme, "chat")
    key, _ = account_services.create_api_key(organization=acme, name="app", created_by=owner, expires_at=None)
    answer = client_for(owner).patch(
        ACME,
        {"enabled": True, "deployments": ["chat"], "api_keys": [key.prefix], "sample_rate": 0.5,
         "keep_answers": False, "retention_days": 7},
        format="json",
    )  # fmt: skip
    assert answer.status_code == 200, answer.json()
    row = InvocationLogSettings.objects.get(organization=acme)
    assert (row.enabled, row.deployments, row.api_keys, row.sample_rate) == (
        True,
        ["chat"],
        [key.prefix],
        0.5,
    )
    assert (row.keep_requests, row.keep_answers, row.retention_days, row.updated_by) == (
        True,
        False,
        7,
        owner,
    )


def test_a_platform_admin_may_edit_any_organisation(
    client_for: ClientFor, platform_admin: AbstractUser
) -> None:
    answer = client_for(platform_admin).patch(ACME, {"enabled": True}, format="json")
    assert answer.status_code == 200
    assert InvocationLogSettings.objects.get(organization__slug="acme").enabled


def test_a_member_reads_but_cannot_edit(client_for: ClientFor, member: AbstractUser) -> None:
    answer = client_for(member).patch(ACME, {"enabled": True}, format="json")
    assert answer.status_code == 403
    assert "owner or admin" in answer.json()["detail"]
    assert not InvocationLogSettings.objects.exists()


def test_an_api_key_reads_but_cannot_edit(
    api_key_client: Callable[[Organization], tuple[APIClient, str]], acme: Organization
) -> None:
    client, _ = api_key_client(acme)
    assert client.get(ACME).status_code == 200
    assert client.put(ACME, {"enabled": True}, format="json").status_code == 403
    assert not InvocationLogSettings.objects.exists()


def test_an_outsider_neither_sees_nor_edits_another_organisations_settings(
    client_for: ClientFor, outsider: AbstractUser
) -> None:
    client = client_for(outsider)
    assert client.get(ACME).status_code == 404
    assert client.patch(ACME, {"enabled": True}, format="json").status_code == 404
    assert [item["organization"] for item in client.get(URL).json()] == ["globex"]
    assert not InvocationLogSettings.objects.filter(organization__slug="acme").exists()


def test_anonymous_callers_are_refused(client_for: ClientFor) -> None:
    assert client_for(None).get(URL).status_code in (401, 403)


def test_the_list_shows_each_of_your_organisations_once(
    client_for: ClientFor, owner: AbstractUser, globex: Organization
) -> None:
    InvocationLogSettings.objects.create(organization=globex, enabled=True)
    account_services.create_organization(slug="initech", name="Initech", owner=owner)
    assert [(i["organization"], i["enabled"]) for i in client_for(owner).get(URL).json()] == [
        ("acme", False),
        ("initech", False),
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"retention_days": 0}, "retention_days"),
        ({"retention_days": 100_000}, "retention_days"),
        ({"deployments": ["no-such-deployment"]}, "deployments"),
        ({"deployments": "chat"}, "deployments"),
        ({"api_keys": ["mk-nothere"]}, "api_keys"),
        ({"enabled": "perhaps"}, "enabled"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    client_for: ClientFor, owner: AbstractUser, change: dict[str, Any], field: str
) -> None:
    answer = client_for(owner).patch(ACME, {"enabled": True, **change}, format="json")
    assert answer.status_code == 400
    assert field in answer.json()
    assert not InvocationLogSettings.objects.exists()


def test_a_deployment_of_another_organisation_cannot_be_named(
    client_for: ClientFor, owner: AbstractUser, globex: Organization
) -> None:
    make_deployment(globex, "theirs")
    answer = client_for(owner).patch(ACME, {"deployments": ["theirs"]}, format="json")
    assert answer.status_code == 400 and "theirs" in answer.json()["deployments"][0]


def test_the_overflow_of_a_full_queue_is_shown_to_the_organisation_only(
    client_for: ClientFor, member: AbstractUser, outsider: AbstractUser, acme: Organization,
    redis_connection: redis.Redis,
) -> None:  # fmt: skip
    redis_connection.hincrby(OVERFLOW_KEY, str(acme.pk), 7)
    assert client_for(member).get(ACME).json()["overflow"] == 7
    assert [i["overflow"] for i in client_for(outsider).get(URL).json()] == [0]
