"""Styled 404 and 403 pages that say where to go next, and a favicon (issue 17, item 16)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from marketplace.web.views.platform import NOT_FOR_YOU


def test_a_missing_page_is_styled_and_offers_a_way_on(browser_for, member) -> None:
    response = browser_for(member).get("/no/such/page/")
    assert response.status_code == 404
    assert "There is nothing here" in response.text and 'href="/deployments/"' in response.text
    assert "Resolver404" not in response.text


def test_someone_elses_deployment_is_not_found_in_our_words(browser_for, outsider) -> None:
    response = browser_for(outsider).get("/deployments/999999/")
    assert response.status_code == 404
    assert "matches the given query" not in response.text
    assert "belongs to an organisation you are not a member of" in response.text


def test_a_member_on_the_platform_page_learns_it_is_for_platform_admins(browser_for, member) -> None:
    response = browser_for(member).get("/platform/")
    assert response.status_code == 403
    assert "This page is for platform admins" in response.text
    assert NOT_FOR_YOU.replace("'", "&#x27;") in response.text
    assert 'href="/organization/"' in response.text


def test_outsider_is_refused_the_platform_page_alike(browser_for, outsider) -> None:
    assert browser_for(outsider).get("/platform/").status_code == 403


def test_every_page_names_a_favicon_that_exists(browser_for, member) -> None:
    page = browser_for(member).get("/").text
    assert '<link rel="icon" href="/static/favicon.svg"' in page
    found = [Path(folder) / "favicon.svg" for folder in settings.STATICFILES_DIRS]
    assert any(path.exists() and path.read_text().startswith("<svg") for path in found)
