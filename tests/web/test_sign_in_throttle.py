"""Sign-in is throttled per username and per client address: after SIGN_IN_MAX_FAILURES wrong passwords
within the window, the sign-in page refuses (429, Retry-After) with a sentence saying when to try again,
while other people at other addresses sign in as usual. The API's and the admin's sign-in count too."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from marketplace.web import sign_in
from tests.conftest import make_user

MAX_FAILURES = 3


@pytest.fixture(autouse=True)
def _low_limit(settings: Any) -> None:
    settings.SIGN_IN_MAX_FAILURES = MAX_FAILURES
    settings.SIGN_IN_WINDOW_SECONDS = 600


def fresh(prefix: str) -> str:
    """A username or address of this test alone: counters live in Redis across tests and runs."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fresh_address() -> str:
    part = uuid.uuid4().int
    return f"10.{part % 250}.{part // 250 % 250}.{part // 62500 % 250 + 1}"


@pytest.fixture
def person(db: None) -> AbstractUser:
    return make_user(fresh("tess"))


def sign_in_page(client: Client, username: str, password: str, address: str) -> Any:
    return client.post("/sign-in/", {"username": username, "password": password}, REMOTE_ADDR=address)


def right_password(person: AbstractUser) -> Any:
    """The right password, from an address of its own."""
    return sign_in_page(Client(), person.username, "correct horse battery", fresh_address())


def test_wrong_passwords_up_to_the_limit_are_just_wrong(person: AbstractUser) -> None:
    address = fresh_address()
    for _ in range(MAX_FAILURES - 1):
        page = sign_in_page(Client(), person.username, "nope", address)
        assert page.status_code == 200 and "do not match" in page.text
    right = sign_in_page(Client(), person.username, "correct horse battery", address)
    assert right.status_code == 302


def test_past_the_limit_for_a_username_even_the_right_password_is_refused_with_when_to_retry(
    person: AbstractUser,
) -> None:
    for _ in range(MAX_FAILURES):
        sign_in_page(Client(), person.username, "nope", fresh_address())  # spread over addresses
    page = sign_in_page(Client(), person.username, "correct horse battery", fresh_address())
    assert page.status_code == 429
    assert 590 <= int(page["Retry-After"]) <= 600
    assert "Too many failed sign-ins" in page.text and "Try again in 10 minutes" in page.text
    assert "_auth_user_id" not in Client().session


def test_past_the_limit_for_an_address_other_usernames_from_it_are_refused(person: AbstractUser) -> None:
    address = fresh_address()
    for _ in range(MAX_FAILURES):
        sign_in_page(Client(), fresh("guess"), "nope", address)  # one address, many usernames
    page = sign_in_page(Client(), person.username, "correct horse battery", address)
    assert page.status_code == 429 and "Try again in" in page.text


def test_a_locked_username_or_address_does_not_affect_anyone_else(person: AbstractUser) -> None:
    attacker = fresh_address()
    victim = make_user(fresh("vic"))
    for _ in range(MAX_FAILURES):
        sign_in_page(Client(), victim.username, "nope", attacker)
    browser = Client()
    page = sign_in_page(browser, person.username, "correct horse battery", fresh_address())
    assert page.status_code == 302
    assert browser.get("/deployments/").status_code == 200


def test_a_right_password_clears_its_usernames_count(person: AbstractUser) -> None:
    for _ in range(MAX_FAILURES - 1):
        sign_in_page(Client(), person.username, "nope", fresh_address())
    assert right_password(person).status_code == 302
    for _ in range(MAX_FAILURES - 1):
        sign_in_page(Client(), person.username, "nope", fresh_address())
    assert right_password(person).status_code == 302


def test_the_username_count_ignores_letter_case(person: AbstractUser) -> None:
    for variant in (person.username.upper(), person.username.title(), person.username):
        sign_in_page(Client(), variant, "nope", fresh_address())
    page = sign_in_page(Client(), person.username, "correct horse battery", fresh_address())
    assert page.status_code == 429


def test_the_api_sign_in_counts_and_is_refused_too(person: AbstractUser) -> None:
    address = fresh_address()
    for _ in range(MAX_FAILURES):
        Client().post(
            "/api/auth/login/", {"username": person.username, "password": "nope"}, REMOTE_ADDR=address
        )
    browser = Client()
    browser.post(
        "/api/auth/login/",
        {"username": person.username, "password": "correct horse battery"},
        REMOTE_ADDR=fresh_address(),
    )
    assert "_auth_user_id" not in browser.session
    assert right_password(person).status_code == 429


def test_the_lock_ends_with_its_window(person: AbstractUser, settings: Any) -> None:
    settings.SIGN_IN_WINDOW_SECONDS = 1
    address = fresh_address()
    for _ in range(MAX_FAILURES):
        sign_in_page(Client(), person.username, "nope", address)
    assert sign_in_page(Client(), person.username, "correct horse battery", address).status_code == 429
    assert sign_in.retry_after(person.username, address, now=time.time() + 1.5) == 0


def test_the_refusal_says_when_in_minutes_or_seconds() -> None:
    assert "Try again in 45 seconds (at 00:00 UTC)" in sign_in.refusal_sentence(45, now=-45)
    assert "Try again in 15 minutes (at 00:15 UTC)" in sign_in.refusal_sentence(900, now=0)


def test_signing_in_keeps_its_csrf_protection(person: AbstractUser) -> None:
    page = Client(enforce_csrf_checks=True).post(
        "/sign-in/", {"username": person.username, "password": "correct horse battery"}
    )
    assert page.status_code == 403
