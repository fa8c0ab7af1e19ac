"""The two journeys of the web UI, end to end in a real headless Chromium against the whole platform.

1. A new user signs in, searches the catalog, opens the small CPU chat model, subscribes, deploys it on
   this machine (a real vLLM engine), watches it become ready, chats in the playground and sees the
   answer stream in, creates an API key, calls the deployment with the unmodified openai client, and
   sees both calls in the usage chart.
2. A platform admin lowers an organisation's GPU quota and then sees a GPU deployment refused with
   the message that says what is short (against the stateful fake Kubernetes API: no cluster runs here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.browser.conftest import (
    ADMIN_PASSWORD,
    PEOPLE_PASSWORD,
    engine_prepared,
    running_platform,
    shoot,
)
from tests.serving.fake_kubernetes import FakeKubernetes

pytestmark = pytest.mark.slow


def test_new_user_deploys_chats_and_calls_a_model(tmp_path: Path, page_for: Any, screenshots: Path) -> None:
    if not engine_prepared():
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")
    with running_platform(tmp_path, SERVING_BACKEND="local", REDIS_DB="10") as platform:
        platform.add_person("ada", "lab")
        page = page_for(platform, "ada", PEOPLE_PASSWORD)

        # Search the catalog: the list updates without a reload.
        page.locator("#facet-task").get_by_role("checkbox", name="chat").check()
        page.locator("#result-count", has_text="models").wait_for()
        page.wait_for_function("location.search.includes('task=chat')")
        shoot(page, screenshots, "catalog")
        page.get_by_role("searchbox", name="Search").fill("smollm2 135m")
        page.locator("#result-count", has_text="1 model").wait_for()
        assert "task=chat" in page.url and "q=smollm2" in page.url  # every state has its own URL
        page.get_by_role("link", name="SmolLM2 135M Instruct").click()

        # Read and accept the license.
        page.locator("summary", has_text="Read the license").wait_for()
        shoot(page, screenshots, "model")
        page.get_by_label("I have read the license and accept it for Lab").check()
        page.get_by_role("button", name="Subscribe").click()
        page.locator("#subscribed").wait_for()

        # Deploy on this machine.
        page.get_by_role("link", name="Deploy SmolLM2 135M Instruct").click()
        page.get_by_label("Deployment name").fill("tiny-chat")
        page.get_by_text("Advanced: vLLM options").click()  # the card's defaults suit this machine
        assert page.get_by_label("Max model length (tokens)").is_visible()
        shoot(page, screenshots, "deploy")
        page.get_by_role("button", name="Deploy", exact=True).click()

        # Watch it become ready: the status updates itself.
        page.wait_for_url("**/deployments/*/")
        status = page.locator("#deployment-status")
        status.filter(has_text="Ready").wait_for(timeout=300_000)
        assert "Starting the engine" in page.locator(".steps").inner_text()
        shoot(page, screenshots, "deployment-ready")

        # Chat in the playground; the answer arrives in pieces, as the engine streams it.
        page.get_by_role("link", name="Open the playground").click()
        page.evaluate(
            """() => {
                window.answerUpdates = 0;
                new MutationObserver(() => { window.answerUpdates += 1; })
                    .observe(document.getElementById("transcript"),
                             {subtree: true, characterData: true, childList: true});
            }"""
        )
        page.get_by_label("Message").fill("What is the capital of France?")
        page.get_by_role("button", name="Send").click()
        answer = page.locator(".message.assistant .body")
        answer.and_(page.locator(":not(.streaming)")).wait_for(timeout=60_000)
        page.locator("#chat-stats", has_text="completion tokens").wait_for()
        assert page.locator("#chat-error").is_hidden()
        assert answer.inner_text().strip()
        assert page.evaluate("window.answerUpdates") > 3  # several pieces, not one block
        shoot(page, screenshots, "playground")

        # Create an API key and call the deployment with it.
        page.get_by_role("link", name="API keys").click()
        page.get_by_label("Name").fill("notebook")
        page.get_by_role("button", name="Create a key").click()
        secret = page.locator("#new-key").inner_text()
        shoot(page, screenshots, "api-keys")
        client = OpenAI(base_url=f"{platform.url}/v1", api_key=secret, max_retries=0)
        reply = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
        )
        assert reply.choices[0].message.content

        # Both calls show in the usage chart (the playground's and the key's).
        page.get_by_role("link", name="Deployments").click()
        page.get_by_role("link", name="tiny-chat").click()
        page.locator('[data-chart="requests"] .chart-total', has_text="2 requests").wait_for(timeout=60_000)
        assert page.locator('[data-chart="requests"] rect').count() >= 1
        shoot(page, screenshots, "deployment")


def test_admin_lowers_a_gpu_quota_and_a_deploy_is_refused(
    tmp_path: Path, page_for: Any, screenshots: Path
) -> None:
    fake = FakeKubernetes().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake.url}'}}}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
        "users: [{name: fake, user: {token: fake}}]\n"
    )
    try:
        with running_platform(
            tmp_path, SERVING_BACKEND="kubernetes", KUBECONFIG=str(kubeconfig), REDIS_DB="11"
        ) as platform:
            page = page_for(platform, "admin", ADMIN_PASSWORD)
            # The demo organisation subscribes to a GPU model.
            page.goto("/models/llama-3.1-8b-instruct/")
            page.get_by_label("I have read the license and accept it for Demo").check()
            page.get_by_role("button", name="Subscribe").click()
            page.locator("#subscribed").wait_for()

            # Lower its GPU quota to one GPU.
            page.get_by_role("link", name="Platform").click()
            shoot(page, screenshots, "platform")
            page.get_by_role("link", name="Edit quota of Demo").click()
            page.get_by_role("spinbutton", name="GPUs, all models").fill("1")
            page.get_by_role("button", name="Save the quota").click()
            page.wait_for_url("**/platform/")
            assert "1" in page.locator("#organization-list tr", has_text="Demo").inner_text()

            # Two replicas of a one-GPU instance need two GPUs: refused, with what is short.
            page.goto("/deployments/new/?model=llama-3.1-8b-instruct")
            page.get_by_label("Deployment name").fill("big-chat")
            page.locator("input[name=instance_type][value=aws-g5-xlarge]").check()
            page.get_by_label("Min replicas").fill("2")
            page.get_by_label("Max replicas").fill("2")
            page.get_by_role("button", name="Deploy", exact=True).click()
            error = page.locator("#error-max_replicas")
            error.wait_for()
            assert "Needs 2 GPUs, the organisation's GPU quota leaves 1 of 1" in error.inner_text()
            assert page.get_by_label("Max replicas").get_attribute("aria-invalid") == "true"
            shoot(page, screenshots, "deploy-refused")
            page.goto("/organization/")
            shoot(page, screenshots, "organization")
    finally:
        fake.stop()
