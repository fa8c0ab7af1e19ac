"""The web UI at 390 pixels, by keyboard, and the playground's failures, in a real headless Chromium
(issue 17, items 12, 13 and 14).

The pages come from the test's live server (one thread, the test database); the playground's chat
endpoint is answered by the browser itself (Playwright routes), so each test knows exactly what the
"engine" said: the page's behaviour is under test here, not the gateway's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import connections
from django.test import Client

from marketplace.accounts.choices import Role
from marketplace.accounts.models import Membership
from marketplace.accounts.services import create_api_key, create_organization
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving.choices import DeploymentStatus
from tests.browser.conftest import shoot
from tests.conftest import make_user
from tests.web.conftest import make_deployment

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"


@pytest.fixture(autouse=True)
def _database_beside_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    """Playwright's sync API keeps an event loop in this thread, idle while the test itself runs; Django
    would take the test's own queries for queries from async code."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def people(transactional_catalog: None, settings: Any) -> dict[str, Any]:
    """acme (owner, a member with a 400-character name) and a platform admin, with keys and deployments
    enough to fill every table."""
    settings.SERVING_BACKEND = "kubernetes"
    owner = make_user("olivia")
    acme = create_organization(slug="acme", name="Acme", owner=owner)
    long_name = make_user("l" * 150)  # the longest username Django allows
    Membership.objects.create(organization=acme, user=long_name, role=Role.MEMBER)
    admin = make_user("root", is_staff=True)
    Membership.objects.create(organization=acme, user=admin, role=Role.OWNER)
    globex = create_organization(slug="globex", name="Globex Corporation of Very Long Names", owner=None)
    for organization in (acme, globex):
        make_deployment(organization, name=f"{organization.slug}-chat-with-a-long-deployment-name")
    for index in range(3):
        create_api_key(organization=acme, name=f"billing-service-{index}", created_by=owner, expires_at=None)
    return {"owner": owner, "admin": admin, "acme": acme}


@pytest.fixture
def open_as(browser: Any, live_server: Any) -> Iterator[Callable[..., Any]]:
    contexts = []

    def open_page(user: AbstractUser, path: str, viewport: dict[str, int] | None = None) -> Any:
        client = Client()
        client.force_login(user)
        context = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900}, base_url=live_server.url
        )
        context.set_default_timeout(30_000)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
        contexts.append(context)
        page = context.new_page()
        page.goto(path)
        return page

    yield open_page
    for context in contexts:
        context.close()
    connections.close_all()  # opened beside Playwright's loop; left open, they keep the test database in use


def test_nothing_overflows_sideways_at_390_pixels(
    people: dict[str, Any], open_as: Any, screenshots: Path
) -> None:
    page = open_as(people["admin"], "/organization/", PHONE)
    for path in ("/organization/", "/api-keys/", "/platform/"):
        page.goto(path)
        shoot(page, screenshots, f"narrow-{path.strip('/')}")
        assert page.evaluate(OVERFLOW) <= 0, f"{path} scrolls sideways by {page.evaluate(OVERFLOW)} px"


def test_revoke_and_member_actions_are_on_screen_at_390_pixels(people: dict[str, Any], open_as: Any) -> None:
    page = open_as(people["owner"], "/api-keys/", PHONE)
    for box in [button.bounding_box() for button in page.get_by_role("button", name="Revoke").all()]:
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    page.goto("/organization/")
    for button in (
        page.get_by_role("button", name="Change").all() + page.get_by_role("button", name="Remove").all()
    ):
        box = button.bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"]
    quota_text = page.locator(".bar-figure").first.bounding_box()
    assert quota_text is not None and quota_text["x"] + quota_text["width"] <= PHONE["width"]


def test_arrow_keys_on_the_model_select_keep_the_page_the_focus_and_the_typed_name(
    people: dict[str, Any], open_as: Any
) -> None:
    for slug in ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct"):
        subscribe(organization=people["acme"], card=ModelCard.objects.get(slug=slug), license_sha256=None,
                  user=people["owner"])  # fmt: skip
    page = open_as(people["owner"], "/deployments/new/?model=llama-3.1-8b-instruct")
    page.evaluate("window.notReloaded = true")
    page.get_by_label("Deployment name").fill("my-assistant")
    page.get_by_label("Subscribed model").focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_function("document.querySelector('#id-model').value === 'qwen2.5-7b-instruct'")
    page.wait_for_selector("#model-aside h3:has-text('Qwen2.5 7B Instruct')")
    assert page.evaluate("window.notReloaded === true"), "the page reloaded"
    assert page.evaluate("document.activeElement.id") == "id-model"
    assert page.get_by_label("Deployment name").input_value() == "my-assistant"
    page.keyboard.press("ArrowUp")
    page.wait_for_selector("#model-aside h3:has-text('Llama 3.1 8B Instruct')")
    assert page.evaluate("document.activeElement.id") == "id-model"
    assert page.locator('input[name="instance_type"]').count() > 0


def test_the_deployment_name_follows_the_model_until_one_is_typed(
    people: dict[str, Any], open_as: Any
) -> None:
    for slug in ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct"):
        subscribe(organization=people["acme"], card=ModelCard.objects.get(slug=slug), license_sha256=None,
                  user=people["owner"])  # fmt: skip
    page = open_as(people["owner"], "/deployments/new/?model=llama-3.1-8b-instruct")
    page.get_by_label("Subscribed model").select_option("qwen2.5-7b-instruct")
    assert page.get_by_label("Deployment name").input_value() == "qwen2-5-7b-instruct"


# The playground. ------------------------------------------------------------------------------------------


def sse(*events: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


ANSWER = sse(
    {"choices": [{"index": 0, "delta": {"content": "Hello there"}}]},
    {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}},
)


@pytest.fixture
def playground(people: dict[str, Any], open_as: Any) -> Callable[[list[dict[str, Any]]], Any]:
    """The playground of a ready deployment, whose chat answers are `answers`, in order."""
    deployment = make_deployment(people["acme"], name="chat", status=DeploymentStatus.READY)

    def open_with(answers: list[dict[str, Any]]) -> Any:
        page = open_as(people["owner"], f"/deployments/{deployment.pk}/playground/")
        queue = list(answers)
        page.route("**/playground/chat/", lambda route: route.fulfill(**queue.pop(0)))
        return page

    return open_with


FAILED = {"status": 503, "content_type": "application/json",
          "body": json.dumps({"error": {"message": "No replica of chat is ready."}})}  # fmt: skip
ANSWERED = {"status": 200, "content_type": "text/event-stream", "body": ANSWER}


def test_a_failed_send_gives_the_prompt_back_and_leaves_no_empty_bubble(playground: Any) -> None:
    page = playground([FAILED])
    page.get_by_label("Message").fill("What is the capital of France?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_selector("#chat-error:not([hidden])")
    assert "No replica of chat is ready." in page.locator("#chat-error").inner_text()
    assert page.locator("#transcript li").count() == 0
    assert page.get_by_label("Message").input_value() == "What is the capital of France?"


def test_the_stats_line_never_shows_the_previous_answers_figures(playground: Any) -> None:
    page = playground([ANSWERED, FAILED])
    page.get_by_label("Message").fill("Hi")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("document.querySelector('#chat-stats').textContent.includes('11 prompt')")
    page.get_by_label("Message").fill("And again?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_selector("#chat-error:not([hidden])")
    assert "11 prompt" not in page.locator("#chat-stats").inner_text()
    assert page.locator("#transcript li").count() == 2  # the first exchange stays, the failed one goes


def test_a_very_long_prompt_is_folded_and_unfolds_on_demand(playground: Any) -> None:
    page = playground([ANSWERED])
    long_prompt = "Summarise this. " + "All work and no play makes Jack a dull boy. " * 200
    page.get_by_label("Message").fill(long_prompt)
    page.get_by_role("button", name="Send").click()
    asked = page.locator("#transcript li.user .body")
    asked.wait_for()
    assert asked.evaluate("element => element.getBoundingClientRect().height") < 250
    toggle = page.locator("#transcript li.user .unfold")
    assert toggle.inner_text() == f"Show all {len(long_prompt.strip()):,} characters"
    toggle.click()
    assert asked.evaluate("element => element.getBoundingClientRect().height") > 500
    assert toggle.get_attribute("aria-expanded") == "true"


def test_outsider_has_no_playground_of_acme(people: dict[str, Any], open_as: Any) -> None:
    deployment = make_deployment(people["acme"], name="chat")
    stranger = make_user("otto")
    create_organization(slug="elsewhere", name="Elsewhere", owner=stranger)
    page = open_as(stranger, f"/deployments/{deployment.pk}/playground/")
    assert page.locator("h1").inner_text() == "There is nothing here"
    assert page.locator("#chat-form").count() == 0
