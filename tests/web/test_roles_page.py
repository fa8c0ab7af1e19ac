"""The organisation page says what each role may do (the table the permission checks read), and
confirms a change of role or a new member (issue 17, items 3 and 4)."""

from __future__ import annotations

from bs4 import BeautifulSoup

from marketplace.accounts import rights
from tests.conftest import make_user


def rights_shown(html: str) -> dict[str, list[str]]:
    table = BeautifulSoup(html, "html.parser").find(id="role-rights")
    assert table is not None, "no table of rights"
    rows = {}
    for row in table.find("tbody").find_all("tr"):
        cells = [cell.find(class_="visually-hidden").get_text() for cell in row.find_all("td")]
        rows[row.find("th").get_text(strip=True)] = cells
    return rows


def test_the_page_shows_what_each_role_may_do_as_the_checks_decide(browser_for, member, acme) -> None:
    shown = rights_shown(browser_for(member).get("/organization/").text)
    expected = {
        right.description[0].upper() + right.description[1:]: [
            "yes" if right.allows(role) else "no" for role in rights.EVERYONE
        ]
        for right in rights.RIGHTS
    }
    assert shown == expected


def test_a_member_reads_that_they_may_create_keys_but_not_manage_members(browser_for, member, acme) -> None:
    shown = rights_shown(browser_for(member).get("/organization/").text)
    member_column = {description: cells[2] for description, cells in shown.items()}
    assert member_column["Create API keys, and change or revoke the keys they created"] == "yes"
    assert member_column["Add and remove members and change their roles"] == "no"


def test_the_page_says_the_viewers_own_role(browser_for, member, acme) -> None:
    assert "Your role in Acme: Member." in browser_for(member).get("/organization/").text


def test_changing_a_role_is_confirmed(browser_for, owner, acme) -> None:
    make_user("nina")
    browser = browser_for(owner)
    added = browser.post("/organization/members/", {"username": "nina", "role": "member"}, follow=True)
    assert "nina was added to Acme." in added.text
    changed = browser.post("/organization/members/nina/role/", {"role": "admin"}, follow=True)
    assert "nina is now an admin of Acme." in changed.text


def test_choosing_the_same_role_says_nothing_changed(browser_for, owner, member, acme) -> None:
    page = browser_for(owner).post("/organization/members/mario/role/", {"role": "member"}, follow=True).text
    assert "mario was already a member: nothing changed." in page


def test_outsider_sees_no_acme_role_confirmation(browser_for, outsider, acme) -> None:
    response = browser_for(outsider).post("/organization/members/mario/role/", {"role": "admin"})
    assert response.status_code == 404
