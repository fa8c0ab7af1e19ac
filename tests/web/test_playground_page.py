"""The playground page and its chat endpoint: only for the deployment's organisation, only the fields
the page sends, errors in the OpenAI format the page shows. (Streaming from a real engine is the
browser journey's part.)"""

from __future__ import annotations

import json

from tests.web.conftest import make_deployment


def chat(browser, pk: int, body: object):
    return browser.post(
        f"/deployments/{pk}/playground/chat/", json.dumps(body), content_type="application/json"
    )


def test_page_offers_the_chat_for_a_ready_deployment(browser_for, member, acme_deployment) -> None:
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/playground/").text
    assert 'id="chat-form"' in page and f"/deployments/{acme_deployment.pk}/playground/chat/" in page


def test_page_explains_a_deployment_that_is_not_ready(browser_for, member, acme) -> None:
    deployment = make_deployment(acme, status="provisioning", status_message="Loading the model.")
    page = browser_for(member).get(f"/deployments/{deployment.pk}/playground/").text
    assert "The playground works once it is ready" in page and 'id="chat-form"' not in page


def test_embedding_models_have_no_chat(browser_for, member, acme) -> None:
    deployment = make_deployment(acme, name="vectors", model="all-minilm-l6-v2", instance_type="local-cpu")
    page = browser_for(member).get(f"/deployments/{deployment.pk}/playground/").text
    assert "is an embedding model" in page and 'id="chat-form"' not in page


def test_bad_bodies_are_400_naming_the_problem(browser_for, member, acme_deployment) -> None:
    browser = browser_for(member)
    unknown = chat(
        browser, acme_deployment.pk, {"messages": [{"role": "user", "content": "hi"}], "tools": []}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tools"
    garbage = browser.post(
        f"/deployments/{acme_deployment.pk}/playground/chat/", "{", content_type="application/json"
    )
    assert garbage.status_code == 400 and "JSON" in garbage.json()["error"]["message"]
    empty = chat(browser, acme_deployment.pk, {"messages": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"


def test_the_page_tells_a_platform_admin_why_there_is_no_chat(
    browser_for, platform_admin, acme_deployment
) -> None:
    page = browser_for(platform_admin).get(f"/deployments/{acme_deployment.pk}/playground/").text
    assert "the playground is for its members" in page and 'id="chat-form"' not in page


def test_a_platform_admin_chats_only_where_a_member(browser_for, platform_admin, acme_deployment) -> None:
    # Admins see every deployment, but a chat spends the organisation's budget as its own.
    body = {"messages": [{"role": "user", "content": "hi"}]}
    response = chat(browser_for(platform_admin), acme_deployment.pk, body)
    assert response.status_code == 404 and "member of" in response.json()["error"]["message"]


def test_outsider_and_anonymous_cannot_chat(browser_for, outsider, client, acme_deployment) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert chat(browser_for(outsider), acme_deployment.pk, body).status_code == 404
    assert chat(client, acme_deployment.pk, body).status_code == 401
