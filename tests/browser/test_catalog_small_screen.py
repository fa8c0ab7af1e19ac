"""The catalog on a 390-pixel phone screen, in a real headless Chromium: the filters fold behind one
"Filters" line, so the first model is in the first screen; the line says how many filters are active; on
a wide screen the filters stay open beside the results.

The page is served by Django's live server (a thread on the test database) rather than the whole
platform: the catalog needs no worker or engine, and this keeps the test to seconds."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import shoot

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
WIDE = {"width": 1280, "height": 900}


def open_catalog(browser: Any, server: Any, viewport: dict[str, int], query: str = "") -> Any:
    context = browser.new_context(viewport=viewport, base_url=server.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(f"/{query}")
    return page


def test_on_a_phone_the_first_model_is_in_the_first_screen(
    live_server, transactional_catalog, browser, screenshots
) -> None:
    page = open_catalog(browser, live_server, PHONE, "?task=chat&task=embedding&language=ja")
    assert page.locator("#filter-fold > summary").inner_text().strip() == "Filters (3 active)"
    first = page.locator(".card").first.bounding_box()
    assert first is not None
    assert first["y"] + first["height"] <= PHONE["height"], first
    assert not page.locator("#facet-options").is_visible()
    shoot(page, screenshots, "catalog-phone")
    # One tap unfolds the filters; unticking one widens the list (htmx) and the fold counts it.
    page.locator("#filter-fold > summary").click()
    page.locator("#facet-task").get_by_role("checkbox", name="embedding").uncheck()
    page.locator("#filters-active", has_text="(2 active)").wait_for()
    shoot(page, screenshots, "catalog-phone-filters")


def test_on_a_wide_screen_the_filters_stay_open(
    live_server, transactional_catalog, browser, screenshots
) -> None:
    page = open_catalog(browser, live_server, WIDE)
    assert page.locator("#facet-options").is_visible()
    assert page.get_by_role("checkbox", name="Deployable here").is_visible()
    shoot(page, screenshots, "catalog-wide")


def test_a_filter_refused_while_filtering_shows_its_refusal_in_the_results(
    live_server, transactional_catalog, browser
) -> None:
    page = open_catalog(browser, live_server, WIDE)
    # An instance type removed after the page was loaded: the live results say what to change.
    page.evaluate(
        """() => {
          const select = document.querySelector("#f-fits");
          select.add(new Option("Gone", "gone-instance"));
          select.value = "gone-instance";
          select.dispatchEvent(new Event("change", {bubbles: true}));
        }"""
    )
    alert = page.locator("#results [role=alert]")
    alert.wait_for()
    assert "Fits instance type: Not one of the choices offered" in alert.inner_text()
    assert page.locator("#result-count").inner_text() == "0 models"


def test_a_bad_replica_count_on_the_model_page_replaces_the_cost_table_with_its_refusal(
    live_server, transactional_catalog, browser
) -> None:
    page = open_catalog(browser, live_server, WIDE, "models/smollm2-135m-instruct/")
    assert page.locator("#fits [role=alert]").count() == 0
    # Beyond the field's max: the browser's own check must not hold it back without a word.
    page.locator("#fit-max").fill("999")
    refusal = page.locator("#error-max_replicas")
    refusal.wait_for()
    assert "Max replicas must be a whole number from 1 to 64" in refusal.inner_text()
