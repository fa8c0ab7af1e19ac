"""A guardrail may detect personal data with Microsoft Presidio's pattern recognizers instead of the built-in
detectors: each type on what it must and must not catch, masking in a stream split at every position of an
entity, a block, no network ever (the e-mail recognizer's public-suffix list is the bundled copy), and the
choice validated by the API, naming the field."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import tldextract
from django.contrib.auth.models import AbstractUser
from django.test import Client as DjangoClient
from rest_framework.test import APIClient

from learning import masking
from learning.guardrails import (
    BLOCKED,
    INPUT,
    MASKED,
    OUTPUT,
    PRESIDIO,
    StreamGuard,
    check,
    compile_policy,
    presidio,
    service,
)
from learning.models import Guardrail
from marketplace.accounts.models import Organization

EVERY_TYPE = {kind: "mask" for kind in masking.ALL_KINDS}
POLICY = compile_policy({"personal_data": EVERY_TYPE, "detector": PRESIDIO})
PROSE = "The weather report for the coming days says light rain in the morning and sun later. " * 3
Client = Callable[[AbstractUser | None], APIClient]


def masked(text: str) -> str:
    return check(POLICY, text, direction=INPUT).text


def test_the_policy_uses_presidios_recognizers() -> None:
    assert POLICY.detector == PRESIDIO and POLICY.find is presidio.find


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe@example.org now", "mail [EMAIL] now"),
        ("call +44 20 7946 0958", "call [PHONE]"),
        ("call (415) 555-0100 today", "call [PHONE] today"),
        ("card 4111 1111 1111 1111.", "card [CARD]."),
        ("IBAN GB82 WEST 1234 5698 7654 32 ok", "IBAN [IBAN] ok"),
        ("from 203.0.113.9 and 2001:db8::1", "from [IP] and [IP]"),
        ("SSN 536-90-4399 on file", "SSN [US_SSN] on file"),
        ("NINO AB 12 34 56 C here", "NINO [UK_NINO] here"),
        ("aadhaar 2345 6789 0124 here", "aadhaar [IN_AADHAAR] here"),
        ("BSN 111222333 of the client", "BSN [NL_BSN] of the client"),  # no Presidio recognizer: built-in
    ],
)
def test_each_type_is_found_through_presidio(text: str, expected: str) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN GB83 WEST 1234 5698 7654 32 fails its checksum",
        "mail ann@example.invalidtld has no public suffix",
        "from 999.1.1.1 is no address",
        "SSN 000-12-3456 is never issued",
        "aadhaar 2345 6789 0125 fails Verhoeff",
        "version 1.2.3 released in 2024, order 12345, a nine-digit id 987654321",
    ],
)
def test_what_fails_validation_or_is_too_weak_is_not_personal_data(text: str) -> None:
    assert masked(text) == text


def test_a_card_is_one_card_not_a_card_and_a_phone_number() -> None:
    verdict = check(POLICY, "pay with 4111 1111 1111 1111 today", direction=INPUT)
    assert [hit.name for hit in verdict.interventions] == ["CARD"]


def test_each_type_keeps_its_action() -> None:
    policy = compile_policy(
        {"personal_data": {"EMAIL": "mask", "CARD": "block", "PHONE": "report"}, "detector": PRESIDIO}
    )
    verdict = check(policy, "jane.doe@example.org, 4111 1111 1111 1111", direction=OUTPUT)
    assert verdict.action == BLOCKED and verdict.text == policy.blocked_output_message
    reported = check(policy, "call +44 20 7946 0958", direction=INPUT)
    assert reported.text == "call +44 20 7946 0958" and reported.interventions[0].action == "reported"


@pytest.mark.parametrize(
    "entity",
    ["jane.doe@example.org", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "+44 20 7946 0958"],
)
def test_an_entity_split_at_every_position_of_a_stream_is_masked_whole(entity: str) -> None:
    text = f"{PROSE}Contact: {entity} today. {PROSE}"
    expected = check(POLICY, text, direction=OUTPUT).text
    assert "[" in expected and entity not in expected
    start = text.index(entity)
    for split in range(start, start + len(entity) + 1):
        guard = StreamGuard(POLICY)
        out = guard.feed(text[:split]) + guard.feed(text[split:]) + guard.finish()
        assert out == expected, split
        assert guard.verdict().action == MASKED


def test_the_hold_back_window_is_longer_than_any_entity_presidio_finds_with_spaces() -> None:
    assert POLICY.hold_back > presidio.LONGEST_SPACED_ENTITY


def test_a_blocked_entity_stops_the_stream_before_any_of_it_is_released() -> None:
    guard = StreamGuard(compile_policy({"personal_data": {"CARD": "block"}, "detector": PRESIDIO}))
    sent = "".join(guard.feed(piece) for piece in [PROSE, "card 4111 1111 ", "1111 1111", " ok. " + PROSE])
    assert guard.blocked is not None and "4111" not in sent
    assert guard.finish() == ""


def test_presidio_never_opens_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a fresh start (recognizers and suffix list loaded again) with every connection refused and
    tldextract's downloading module-level extractor unusable, e-mail addresses are still validated."""

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket.socket, "connect_ex", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(tldextract, "extract", refused)
    presidio.offline_domains.cache_clear()
    presidio._recognizers.cache_clear()
    policy = compile_policy({"personal_data": {"EMAIL": "mask"}, "detector": PRESIDIO})
    assert check(policy, "mail ann@example.co.uk", direction=INPUT).text == "mail [EMAIL]"
    assert check(policy, "mail ann@example.invalidtld", direction=INPUT).text == "mail ann@example.invalidtld"


def test_a_version_asking_for_presidio_where_it_is_missing_uses_the_built_in_detectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presidio, "available", lambda: False)
    policy = compile_policy({"personal_data": {"EMAIL": "mask"}, "detector": PRESIDIO})
    assert policy.detector == "builtin"
    assert check(policy, "mail jane.doe@example.org", direction=INPUT).text == "mail [EMAIL]"


# --- The choice through the API ---------------------------------------------------------------------------


def test_an_owner_chooses_presidio_and_a_published_version_keeps_it(
    client_for: Client, owner: AbstractUser
) -> None:
    client = client_for(owner)
    made = client.post(
        "/api/guardrails/",
        {"name": "g", "personal_data": {"EMAIL": "mask"}, "detector": "presidio"},
        format="json",
    )
    assert made.status_code == 201, made.json()
    assert made.json()["draft"]["detector"] == "presidio"
    version = client.post(f"/api/guardrails/{made.json()['id']}/publish/").json()
    assert version["config"]["detector"] == "presidio"


def test_the_built_in_detectors_are_the_default(client_for: Client, owner: AbstractUser) -> None:
    made = client_for(owner).post("/api/guardrails/", {"name": "g"}, format="json")
    assert made.json()["draft"]["detector"] == "builtin"


@pytest.mark.parametrize("detector", ["spacy", "", None, 1, True, ["presidio"], {"name": "presidio"}])
def test_an_unknown_detector_is_refused_naming_the_field(
    client_for: Client, owner: AbstractUser, acme: Organization, detector: Any
) -> None:
    response = client_for(owner).post("/api/guardrails/", {"name": "g", "detector": detector}, format="json")
    assert response.status_code == 400
    assert "detector" in response.json(), response.json()
    assert not Guardrail.objects.exists()


def test_presidio_is_refused_where_it_is_not_installed(
    client_for: Client, owner: AbstractUser, acme: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presidio, "available", lambda: False)
    response = client_for(owner).post(
        "/api/guardrails/", {"name": "g", "detector": "presidio"}, format="json"
    )
    assert response.status_code == 400
    assert "not installed" in response.json()["detector"][0]
    assert not Guardrail.objects.exists()


def test_a_malformed_detector_edit_changes_nothing(client_for: Client, owner: AbstractUser) -> None:
    client = client_for(owner)
    made = client.post("/api/guardrails/", {"name": "g", "detector": "presidio"}, format="json").json()
    response = client.patch(f"/api/guardrails/{made['id']}/", {"detector": "ner"}, format="json")
    assert response.status_code == 400 and "detector" in response.json()
    assert Guardrail.objects.get(pk=made["id"]).draft["detector"] == "presidio"


def test_an_outsider_cannot_change_another_organisations_detector(
    client_for: Client, owner: AbstractUser, outsider: AbstractUser
) -> None:
    made = client_for(owner).post("/api/guardrails/", {"name": "g"}, format="json").json()
    response = client_for(outsider).patch(
        f"/api/guardrails/{made['id']}/", {"detector": "presidio"}, format="json"
    )
    assert response.status_code == 404
    assert Guardrail.objects.get(pk=made["id"]).draft["detector"] == "builtin"


# --- The choice on the guardrail's page -------------------------------------------------------------------


def signed_in(user: AbstractUser) -> DjangoClient:
    browser = DjangoClient()
    browser.force_login(user)
    return browser


@pytest.fixture
def drafted(acme: Organization, owner: AbstractUser) -> Guardrail:
    return service.create_guardrail(
        organization=acme, user=owner, name="support", config={"personal_data": {"EMAIL": "mask"}}
    )


def test_the_page_offers_both_detectors_with_their_cost(drafted: Guardrail, member: AbstractUser) -> None:
    page = signed_in(member).get(f"/guardrails/{drafted.pk}/").content.decode()
    assert '<option value="builtin" selected>' in page
    assert "about 0.06 ms a call" in page and "Presidio&#x27;s pattern recognizers" in page


def test_an_owner_chooses_presidio_on_the_page(drafted: Guardrail, owner: AbstractUser) -> None:
    form = {"pii-EMAIL": "mask", "detector": "presidio", "topic-count": "0"}
    assert signed_in(owner).post(f"/guardrails/{drafted.pk}/draft/", form).status_code == 302
    drafted.refresh_from_db()
    assert drafted.draft["detector"] == "presidio"
    assert (
        '<option value="presidio" selected>'
        in signed_in(owner).get(f"/guardrails/{drafted.pk}/").content.decode()
    )


def test_an_unknown_detector_on_the_page_is_refused_beside_its_field(
    drafted: Guardrail, owner: AbstractUser
) -> None:
    form = {"pii-EMAIL": "block", "detector": "ner", "topic-count": "0"}
    response = signed_in(owner).post(f"/guardrails/{drafted.pk}/draft/", form)
    assert response.status_code == 400
    assert b'id="error-detector"' in response.content
    drafted.refresh_from_db()
    assert drafted.draft["personal_data"] == {"EMAIL": "mask"}


def test_an_outsider_cannot_choose_another_organisations_detector_on_the_page(
    drafted: Guardrail, outsider: AbstractUser, globex: Organization
) -> None:
    form = {"pii-EMAIL": "mask", "detector": "presidio", "topic-count": "0"}
    assert signed_in(outsider).post(f"/guardrails/{drafted.pk}/draft/", form).status_code == 404
    assert signed_in(outsider).get(f"/guardrails/{drafted.pk}/").status_code == 404
    drafted.refresh_from_db()
    assert drafted.draft["detector"] == "builtin"
