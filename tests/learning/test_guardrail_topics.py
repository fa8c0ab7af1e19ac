"""Denied topics: their examples are embedded through the gateway's own path as the organisation (a
stand-in engine over real HTTP, which embeds a text as the lengths of its first three words), at
publishing, when trying the draft, and when scoring examples to choose a threshold."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from learning.guardrails import service
from learning.models import Guardrail
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from serving import tasks as serving_tasks
from serving.models import UsageRecord
from tests.conftest import make_user
from tests.learning.standin import stand_in_engine
from tests.serving.gateway.conftest import EMBED, deploy

pytestmark = pytest.mark.usefixtures("transactional_catalog")  # the gateway reads rows from its own thread

TOPIC = {
    "name": "Investments",
    "definition": "Advice on what to buy or sell",
    "examples": ["buy cheap stocks", "buy cheap bonds", "sell all shares"],
    "threshold": 0.99,
}


@pytest.fixture
def organization() -> Iterator[Organization]:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # limits and usage of earlier tests
    with stand_in_engine() as url:
        owner = make_user("tess")
        organization = account_services.create_organization(slug="topics", name="Topics", owner=owner)
        Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
        deploy(organization, "minilm", EMBED, url)
        yield organization


@pytest.fixture
def guardrail(organization: Organization) -> Guardrail:
    return service.create_guardrail(
        organization=organization, user=None, name="advice",
        config={"topics": [TOPIC], "embedding_deployment": "minilm"},
    )  # fmt: skip


def owner_api(organization: Organization) -> APIClient:
    client = APIClient()
    client.force_authenticate(organization.memberships.get().user)
    return client


def test_publishing_embeds_the_examples_once_and_meters_the_call(guardrail: Guardrail) -> None:
    version = service.publish(guardrail, None)
    assert [len(vectors) for vectors in version.topic_vectors] == [3]
    assert version.topic_vectors[0][0] == [3.0, 5.0, 6.0]  # "buy cheap stocks"
    serving_tasks.flush_usage()
    assert UsageRecord.objects.filter(organization=guardrail.organization, model="minilm").count() == 1


def test_scoring_shows_each_examples_similarity_to_the_others_and_suggests_a_threshold(
    organization: Organization, guardrail: Guardrail
) -> None:
    response = owner_api(organization).post(
        f"/api/guardrails/{guardrail.pk}/score-topic-examples/",
        {"topic": "investments", "texts": ["hello there"]},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    scores = {row["text"]: row["score"] for row in body["examples"]}
    assert scores["buy cheap stocks"] == pytest.approx(0.9967, abs=1e-3)  # [3,5,6] against [3,5,5]
    assert body["texts"][0]["blocked"] is False
    low, high = min(scores.values()), body["texts"][0]["score"]
    assert body["suggested_threshold"] == pytest.approx((low + high) / 2, abs=1e-3)


def test_trying_the_draft_blocks_a_text_about_the_topic(
    organization: Organization, guardrail: Guardrail
) -> None:
    client = owner_api(organization)
    blocked = client.post(f"/api/guardrails/{guardrail.pk}/try/", {"text": "buy cheap shares"}, format="json")
    assert blocked.json()["action"] == "blocked"
    assert blocked.json()["interventions"][0]["name"] == "Investments"
    passed = client.post(f"/api/guardrails/{guardrail.pk}/try/", {"text": "hello"}, format="json")
    assert passed.json()["action"] == "none"


def test_the_threshold_helper_page_shows_the_scores(organization: Organization, guardrail: Guardrail) -> None:
    browser = Client()
    browser.force_login(organization.memberships.get().user)
    page = browser.post(f"/guardrails/{guardrail.pk}/score/", {"topic": "Investments", "texts": "hello"})
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="scores"' in text and "must pass" in text and 'id="suggested"' in text


def test_an_embeddings_deployment_that_fails_refuses_publishing_with_what_to_do(guardrail: Guardrail) -> None:
    from serving.models import Deployment

    Deployment.objects.filter(name="minilm").update(endpoints=["http://127.0.0.1:9"])  # nothing listens
    with pytest.raises(service.Refused) as refused:
        service.publish(guardrail, None)
    assert refused.value.field == "embedding_deployment"
    assert "minilm" in str(refused.value)
    assert not guardrail.versions.exists()
