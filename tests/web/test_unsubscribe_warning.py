"""Unsubscribing from a model the organisation still serves is warned about before anyone clicks, with
the deployments named (the service refuses it until they are deleted; issue 17, item 4)."""

from __future__ import annotations

from bs4 import BeautifulSoup

from serving.choices import DeploymentStatus
from tests.web.conftest import make_deployment

MODEL_PAGE = "/models/llama-3.1-8b-instruct/"


def unsubscribe_button(html: str):
    return BeautifulSoup(html, "html.parser").find("button", string="Unsubscribe")


def test_live_deployments_are_named_and_unsubscribe_is_disabled(browser_for, owner, acme, subscribed) -> None:
    make_deployment(acme, name="chat")
    make_deployment(acme, name="bot")
    page = browser_for(owner).get(MODEL_PAGE).text
    warning = BeautifulSoup(page, "html.parser").find(id="unsubscribe-warning").get_text(" ", strip=True)
    assert "Acme runs 2 deployments of Llama 3.1 8B Instruct (bot, chat)" in warning
    assert "delete them" in warning
    assert unsubscribe_button(page).has_attr("disabled")


def test_a_deleted_deployment_does_not_hold_the_subscription(browser_for, owner, acme, subscribed) -> None:
    make_deployment(acme, name="gone", status=DeploymentStatus.DELETED)
    page = browser_for(owner).get(MODEL_PAGE).text
    assert 'id="unsubscribe-warning"' not in page
    assert not unsubscribe_button(page).has_attr("disabled")


def test_unsubscribing_asks_for_confirmation(browser_for, owner, acme, subscribed) -> None:
    form = unsubscribe_button(browser_for(owner).get(MODEL_PAGE).text).find_parent("form")
    assert "Unsubscribe Acme from Llama 3.1 8B Instruct?" in form["data-confirm"]


def test_outsider_sees_no_warning_about_acme_deployments(browser_for, outsider, acme, subscribed) -> None:
    make_deployment(acme, name="chat")
    page = browser_for(outsider).get(MODEL_PAGE).text
    assert 'id="unsubscribe-warning"' not in page and "(chat)" not in page
