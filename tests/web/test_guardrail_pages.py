"""The web UI's guardrail pages: an owner creates a guardrail, edits its draft, tries it on a text and
publishes versions; a member reads and tries but changes nothing; an outsider sees nothing of another
organisation's guardrails; a refused draft names its field and changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from learning.guardrails import service
from learning.models import Guardrail, GuardrailVersion
from marketplace.accounts.models import Organization

BrowserFor = Callable[[AbstractUser | None], Client]

DRAFT_FORM = {
    "pii-EMAIL": "mask", "pii-CARD": "block", "pii-US_SSN": "report", "pii-PHONE": "off",
    "words": "Project Falcon\nacme", "prompt_attacks": "on", "topic-count": "1",
    "blocked_input_message": "Not here.",
}  # fmt: skip


@pytest.fixture
def guardrail(acme: Organization, owner: AbstractUser) -> Guardrail:
    return service.create_guardrail(
        organization=acme, user=owner, name="support", config={"personal_data": {"EMAIL": "mask"}}
    )


def test_the_navigation_leads_to_the_guardrails(browser_for: BrowserFor, member: AbstractUser) -> None:
    page = browser_for(member).get("/guardrails/")
    assert page.status_code == 200
    assert b'href="/guardrails/" aria-current="page">Guardrails</a>' in page.content


def test_an_owner_creates_a_guardrail_that_masks_the_usual_personal_data(
    browser_for: BrowserFor, owner: AbstractUser
) -> None:
    response = browser_for(owner).post("/guardrails/", {"name": "support", "description": "Help desk"})
    guardrail = Guardrail.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/guardrails/{guardrail.pk}/"
    assert guardrail.draft["personal_data"] == {k: "mask" for k in ("EMAIL", "IBAN", "CARD", "IP", "PHONE")}
    assert b"not published yet" in browser_for(owner).get("/guardrails/").content


def test_a_bad_name_is_refused_beside_its_field(browser_for: BrowserFor, owner: AbstractUser) -> None:
    response = browser_for(owner).post("/guardrails/", {"name": "Bad Name"})
    assert response.status_code == 400 and b'id="error-name"' in response.content
    assert not Guardrail.objects.exists()


def test_an_owner_edits_the_draft_and_publishes_it(
    browser_for: BrowserFor, owner: AbstractUser, guardrail: Guardrail
) -> None:
    browser = browser_for(owner)
    assert browser.post(f"/guardrails/{guardrail.pk}/draft/", DRAFT_FORM).status_code == 302
    guardrail.refresh_from_db()
    assert guardrail.draft["personal_data"] == {"EMAIL": "mask", "CARD": "block", "US_SSN": "report"}
    assert (
        guardrail.draft["words"] == ["Project Falcon", "acme"] and guardrail.draft["prompt_attacks"] is True
    )
    assert browser.post(f"/guardrails/{guardrail.pk}/publish/").status_code == 302
    page = browser.get(f"/guardrails/{guardrail.pk}/").content.decode()
    assert f"/guardrail/{guardrail.pk}/version/1/apply" in page
    assert "Publish the draft as version 2" in page
    assert GuardrailVersion.objects.get().config["words"] == ["Project Falcon", "acme"]


def test_a_refused_draft_names_its_field_and_changes_nothing(
    browser_for: BrowserFor, owner: AbstractUser, guardrail: Guardrail
) -> None:
    form = {**DRAFT_FORM, "topic-count": "1", "topic-0-name": "Stocks", "topic-0-examples": "buy stocks",
            "topic-0-threshold": "2"}  # fmt: skip
    response = browser_for(owner).post(f"/guardrails/{guardrail.pk}/draft/", form)
    assert response.status_code == 400
    assert (
        b'id="error-topic-0"' in response.content and b"A cosine similarity from 0 to 1" in response.content
    )
    guardrail.refresh_from_db()
    assert guardrail.draft["personal_data"] == {"EMAIL": "mask"}


def test_trying_the_draft_shows_the_text_the_caller_gets_and_what_intervened(
    browser_for: BrowserFor, member: AbstractUser, guardrail: Guardrail
) -> None:
    response = browser_for(member).post(
        f"/guardrails/{guardrail.pk}/try/", {"text": "write to jane@example.org", "direction": "input"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "write to [EMAIL]" in page
    assert "<code>jane@example.org</code>" in page and "masked" in page


def test_an_empty_try_is_refused_beside_the_text(
    browser_for: BrowserFor, member: AbstractUser, guardrail: Guardrail
) -> None:
    response = browser_for(member).post(f"/guardrails/{guardrail.pk}/try/", {"text": "  "})
    assert response.status_code == 400 and b'id="error-text"' in response.content


def test_the_page_states_the_limits_of_prompt_attack_detection(
    browser_for: BrowserFor, member: AbstractUser, guardrail: Guardrail
) -> None:
    page = browser_for(member).get(f"/guardrails/{guardrail.pk}/").content.decode()
    assert 'id="prompt-attack-limits"' in page and "misses paraphrases" in page


def test_a_member_reads_and_tries_but_may_not_edit_publish_or_create(
    browser_for: BrowserFor, member: AbstractUser, guardrail: Guardrail
) -> None:
    browser = browser_for(member)
    page = browser.get(f"/guardrails/{guardrail.pk}/").content.decode()
    assert "Save the draft" not in page and "Only an owner or admin of Acme edits and publishes" in page
    assert browser.post(f"/guardrails/{guardrail.pk}/draft/", DRAFT_FORM).status_code == 403
    assert browser.post(f"/guardrails/{guardrail.pk}/publish/").status_code == 403
    assert browser.post(f"/guardrails/{guardrail.pk}/score/", {"topic": "x"}).status_code == 403
    assert browser.post("/guardrails/", {"name": "mine"}).status_code == 403
    guardrail.refresh_from_db()
    assert guardrail.draft["personal_data"] == {"EMAIL": "mask"}
    assert not GuardrailVersion.objects.exists() and Guardrail.objects.count() == 1


def test_an_outsider_neither_sees_nor_touches_another_organisations_guardrail(
    browser_for: BrowserFor, outsider: AbstractUser, guardrail: Guardrail
) -> None:
    browser = browser_for(outsider)
    assert b"support" not in browser.get("/guardrails/").content
    assert browser.get(f"/guardrails/{guardrail.pk}/").status_code == 404
    for action in ("draft", "publish", "try", "score"):
        assert (
            browser.post(f"/guardrails/{guardrail.pk}/{action}/", {"text": "x", **DRAFT_FORM}).status_code
            == 404
        )
    guardrail.refresh_from_db()
    assert guardrail.draft["personal_data"] == {"EMAIL": "mask"} and not GuardrailVersion.objects.exists()


def test_signed_out_visitors_are_sent_to_sign_in(browser_for: BrowserFor, guardrail: Guardrail) -> None:
    response = browser_for(None).get(f"/guardrails/{guardrail.pk}/")
    assert response.status_code == 302 and "/sign-in/" in response["Location"]
