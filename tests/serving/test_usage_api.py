"""GET /api/usage/: an organisation's members see its usage; an outsider sees none of it, even by
naming it; platform admins see every organisation's, grouped by organisation if they ask."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from serving.models import UsageRecord

USAGE = "/api/usage/"


@pytest.fixture
def records(acme, globex) -> None:
    for organization, tokens in ((acme, 10), (acme, 20), (globex, 1000)):
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex, organization=organization, model="chat", route="chat.completions",
            prompt_tokens=tokens, completion_tokens=tokens, latency_ms=50, status_code=200,
            created_at=timezone.now(),
        )  # fmt: skip


def totals(response) -> tuple[int, int]:
    rows = response.json()["results"]
    return sum(r["requests"] for r in rows), sum(r["prompt_tokens"] for r in rows)


def test_members_see_their_organisations_usage(client_for, member, records) -> None:
    assert totals(client_for(member).get(USAGE)) == (2, 30)


def test_an_outsider_sees_none_of_it_even_by_name(client_for, outsider, records) -> None:
    client = client_for(outsider)
    assert totals(client.get(USAGE)) == (1, 1000)  # their own only
    named = client.get(USAGE, {"organization": "acme"})
    assert (
        named.status_code == 400
        and "No organisation 'acme' that you belong to." in named.json()["organization"][0]
    )


def test_an_api_key_sees_its_organisations_usage(api_key_client, acme, records) -> None:
    client, _ = api_key_client(acme)
    assert totals(client.get(USAGE)) == (2, 30)


def test_platform_admins_see_every_organisation(client_for, platform_admin, records) -> None:
    response = client_for(platform_admin).get(USAGE, {"group_by": "organization"})
    assert {r["organization"]: r["requests"] for r in response.json()["results"]} == {"acme": 2, "globex": 1}


def test_bad_parameters_name_the_field(client_for, member, records) -> None:
    client = client_for(member)
    assert "group_by" in client.get(USAGE, {"group_by": "colour"}).json()
    assert "since" in client.get(USAGE, {"since": "2026-12-01", "until": "2026-11-01"}).json()
    assert client.get(USAGE, {"since": "yesterday"}).status_code == 400
