"""Deployments as people watch them: the list, the detail page with its live status and timeline, the
usage charts, scaling and deleting — each only for the organisation that owns the deployment."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.utils import timezone

from marketplace.accounts.models import Quota
from serving.models import Deployment, UsageRecord
from tests.web.conftest import make_deployment


def test_list_shows_the_organisations_deployments(browser_for, member, acme, globex, acme_deployment) -> None:
    make_deployment(globex, name="theirs")
    page = browser_for(member).get("/deployments/").text
    assert ">chat</a>" in page and "theirs" not in page


def test_detail_shows_status_timeline_and_snippets(browser_for, member, acme_deployment) -> None:
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/").text
    assert 'id="deployment-status">Ready' in page
    assert "1 of 1 replicas ready." in page and "Requested it." in page
    assert '"model": "chat"' in page and "bedrock-runtime" in page and "OpenAI(base_url=" in page


def test_a_rerankers_page_shows_rerank_calls_and_no_playground(browser_for, member, acme) -> None:
    reranker = make_deployment(acme, name="ranks", model="bge-reranker-v2-m3")
    page = browser_for(member).get(f"/deployments/{reranker.pk}/").text
    assert "curl http://testserver/v1/rerank" in page and '"http://testserver/v1/rerank",' in page
    assert "/v1/chat/completions" not in page and "Open the playground" not in page
    assert 'aria-selected="false" tabindex="-1">Python</button>' in page


def test_a_speech_models_page_shows_transcription_calls(browser_for, member, acme) -> None:
    whisper = make_deployment(acme, name="ears", model="whisper-large-v3")
    page = browser_for(member).get(f"/deployments/{whisper.pk}/").text
    assert "curl http://testserver/v1/audio/transcriptions" in page and "-F file=@speech.wav" in page
    assert 'client.audio.transcriptions.create(model="ears", file=audio)' in page
    assert "/v1/chat/completions" not in page and "Open the playground" not in page


def test_snippets_use_the_public_url_when_set(browser_for, member, acme_deployment, settings) -> None:
    settings.PUBLIC_URL = "https://marketplace.example.com"
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/").text
    assert (
        "curl https://marketplace.example.com/v1/chat/completions" in page and "http://testserver" not in page
    )


def test_status_partial_polls_while_provisioning(browser_for, member, acme) -> None:
    deployment = make_deployment(acme, status="provisioning", status_message="Loading the model.")
    response = browser_for(member).get(
        f"/deployments/{deployment.pk}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="status"
    )
    assert "<html" not in response.text
    assert (
        'hx-trigger="every 2s"' in response.text
        and 'aria-current="step">Starting the engine' in response.text
    )


def test_failed_status_explains_in_words(browser_for, member, acme) -> None:
    message = "No node has 1 free NVIDIA A10G GPU; 3 nodes have 0."
    deployment = make_deployment(acme, status="failed", status_message=message)
    assert message in browser_for(member).get(f"/deployments/{deployment.pk}/").text


def test_usage_charts_count_the_calls(browser_for, member, acme, acme_deployment) -> None:
    now = timezone.now()
    for minutes_ago, tokens in ((1, 10), (1, 20), (90, 5)):
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex, organization=acme, deployment=acme_deployment, model="chat",
            route="chat.completions", prompt_tokens=tokens, completion_tokens=tokens, latency_ms=100,
            status_code=200, created_at=now - timedelta(minutes=minutes_ago),
        )  # fmt: skip
    hour = browser_for(member).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": "1h"}).text
    assert "2 requests" in hour and "60 tokens" in hour and "mean 100 ms" in hour
    day = browser_for(member).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": "24h"}).text
    assert "3 requests" in day and "70 tokens" in day


def test_scale(browser_for, member, subscribed, acme_deployment) -> None:
    response = browser_for(member).post(
        f"/deployments/{acme_deployment.pk}/scale/",
        {"min_replicas": "2", "max_replicas": "2", "autoscaling_policy": "fixed"},
    )
    assert response.status_code == 302
    acme_deployment.refresh_from_db()
    assert (acme_deployment.min_replicas, acme_deployment.max_replicas, acme_deployment.reserved_gpus) == (
        2,
        2,
        2,
    )


def test_scale_over_quota_is_refused_inline(browser_for, member, acme, subscribed, acme_deployment) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=1)
    response = browser_for(member).post(
        f"/deployments/{acme_deployment.pk}/scale/",
        {"min_replicas": "3", "max_replicas": "3", "autoscaling_policy": "fixed"},
    )
    assert response.status_code == 400 and 'id="error-max_replicas"' in response.text
    acme_deployment.refresh_from_db()
    assert acme_deployment.max_replicas == 1


def test_delete_needs_the_name_typed(browser_for, member, acme_deployment) -> None:
    browser = browser_for(member)
    refused = browser.post(f"/deployments/{acme_deployment.pk}/delete/", {"confirm": "wrong"})
    assert refused.status_code == 400 and "to delete it" in refused.text
    assert Deployment.objects.get(pk=acme_deployment.pk).status == "ready"
    assert browser.post(f"/deployments/{acme_deployment.pk}/delete/", {"confirm": "chat"}).status_code == 302
    assert Deployment.objects.get(pk=acme_deployment.pk).status == "deleting"


def test_outsider_cannot_see_or_touch_a_deployment(browser_for, outsider, acme_deployment) -> None:
    browser = browser_for(outsider)
    base = f"/deployments/{acme_deployment.pk}"
    assert browser.get(f"{base}/").status_code == 404
    assert browser.get(f"{base}/usage/").status_code == 404
    assert browser.get(f"{base}/playground/").status_code == 404
    assert browser.post(f"{base}/scale/", {"min_replicas": "2", "max_replicas": "2"}).status_code == 404
    assert browser.post(f"{base}/delete/", {"confirm": "chat"}).status_code == 404
    assert Deployment.objects.get(pk=acme_deployment.pk).status == "ready"


def test_anonymous_is_sent_to_sign_in(client, acme_deployment) -> None:
    response = client.get(f"/deployments/{acme_deployment.pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/sign-in/")
