"""Refusals in the product's words, not the framework's, on pages and in the REST API; a very long
input neither comes back whole in a message nor widens the page (issue 17, item 15)."""

from __future__ import annotations

import pytest

from marketplace.wording import reword


@pytest.mark.parametrize(
    ("framework", "ours"),
    [
        ("Ensure this value has at most 200 characters (it has 250).",
         "Too long: at most 200 characters (this has 250)."),
        ("Ensure this field has no more than 100 characters.", "Too long: at most 100 characters."),
        ("Ensure this value is greater than or equal to 0.", "At least 0."),
        ("Object with slug=nowhere does not exist.", "There is no slug “nowhere”: check the spelling."),
        ("A valid integer is required.", "Enter a whole number."),
        ("This field may not be blank.", "Fill this in."),
    ],
)  # fmt: skip
def test_framework_refusals_are_reworded(framework: str, ours: str) -> None:
    assert reword(framework) == ours


def test_our_own_messages_pass_unchanged() -> None:
    ours = "Needs 3 GPUs, the organisation's GPU quota leaves 2 of 2: lower max replicas."
    assert reword(ours) == ours


def test_a_long_value_is_shortened_when_quoted_back() -> None:
    message = reword(f"Object with slug={'x' * 400} does not exist.")
    assert len(message) < 100 and message.endswith("…”: check the spelling.")


def test_an_unknown_username_on_the_page_is_said_in_our_words(browser_for, owner, acme) -> None:
    response = browser_for(owner).post("/organization/members/", {"username": "ghost", "role": "member"})
    assert response.status_code == 400
    assert "No one has this username" in response.text
    assert "Object with" not in response.text


def test_an_unknown_username_in_the_rest_api_is_said_in_our_words(client_for, owner, acme) -> None:
    answer = client_for(owner).post("/api/organizations/acme/members/", {"username": "ghost"}, format="json")
    assert answer.status_code == 400
    assert answer.json()["username"][0].startswith("No one has this username")


def test_a_too_long_search_in_the_rest_api_says_how_long_it_may_be(client_for, member, acme) -> None:
    answer = client_for(member).get("/api/models/", {"q": "a" * 250})
    assert answer.status_code == 400
    assert answer.json()["q"] == ["Too long: at most 200 characters (this has 250)."]


def test_a_400_character_username_is_not_echoed_and_the_page_wraps_it(browser_for, owner, acme) -> None:
    long_name = "u" * 400
    response = browser_for(owner).post("/organization/members/", {"username": long_name, "role": "member"})
    assert response.status_code == 400
    assert response.text.count(long_name) <= 1  # only in the field the person typed it into


def test_outsider_cannot_add_members_to_acme(client_for, outsider, acme) -> None:
    answer = client_for(outsider).post(
        "/api/organizations/acme/members/", {"username": "ghost"}, format="json"
    )
    assert answer.status_code == 404
    assert not acme.memberships.filter(user__username="ghost").exists()
