"""Every form of the web UI is protected against cross-site requests, and people sign in and out."""

from __future__ import annotations

import pytest
from django.test import Client

from marketplace.accounts.models import ApiKey
from serving.models import Deployment


@pytest.fixture
def csrf_browser(owner, acme, globex) -> Client:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    return browser


POSTS = [
    "/models/llama-3.1-8b-instruct/subscribe/",
    "/models/llama-3.1-8b-instruct/unsubscribe/",
    "/deployments/new/",
    "/deployments/{pk}/scale/",
    "/deployments/{pk}/delete/",
    "/deployments/{pk}/playground/chat/",
    "/api-keys/new/",
    "/api-keys/1/revoke/",
    "/organization/switch/",
    "/organization/members/",
    "/organization/members/olivia/role/",
    "/organization/members/olivia/remove/",
    "/platform/organizations/acme/quota/",
    "/sign-out/",
]


def test_every_form_refuses_a_post_without_its_csrf_token(csrf_browser, acme_deployment) -> None:
    for url in POSTS:
        response = csrf_browser.post(url.format(pk=acme_deployment.pk), {"confirm": "chat", "name": "x"})
        assert response.status_code == 403, url
    assert Deployment.objects.get(pk=acme_deployment.pk).status == "ready"
    assert not ApiKey.objects.exists()


def test_a_post_with_the_token_goes_through(csrf_browser, acme) -> None:
    page = csrf_browser.get("/api-keys/")
    token = page.cookies["csrftoken"].value
    response = csrf_browser.post("/api-keys/new/", {"name": "ok", "csrfmiddlewaretoken": token})
    assert response.status_code == 201


def test_sign_in_and_out(owner, acme) -> None:
    browser = Client()
    wrong = browser.post("/sign-in/", {"username": "olivia", "password": "nope"})
    assert wrong.status_code == 200 and "do not match" in wrong.text
    right = browser.post("/sign-in/", {"username": "olivia", "password": "correct horse battery"})
    assert right.status_code == 302
    assert "olivia" in browser.get("/").text
    assert browser.post("/sign-out/").status_code == 302
    assert browser.get("/deployments/").status_code == 302  # signed out: back to sign-in
