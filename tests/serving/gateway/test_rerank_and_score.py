"""POST /v1/rerank and POST /v1/score: the engine's Jina/Cohere-style rerank and its score API, with the
keys, limits, metering and error format of the other OpenAI-compatible routes.

Answered for real by the real MiniLM engine through a real gateway: vLLM scores pairs with an embedding
model too (a bi-encoder: the cosine similarity of the two texts' embeddings), and no cross-encoder ships
on the package registries this machine reaches. The deployment's card is the MiniLM card with the
reranking task beside embedding (the catalog's MiniLM card lists embeddings only; its rerankers are
cross-encoders). What the gateway refuses before the engine is asked is checked in process, on the
catalog's BGE reranker card behind the scripted stand-in engine, which must never be reached.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings

from learning.guardrails import service
from learning.models import GuardrailAttachment
from marketplace.accounts.models import Organization
from marketplace.accounts.services import create_api_key
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving.gateway import pipeline
from serving.gateway.metering import QUEUE_KEY, flush_usage
from serving.gateway.scoring import MAX_DOCUMENTS
from serving.models import Deployment, UsageRecord
from tests.serving.gateway.conftest import CHAT, EMBED, GATEWAY_REDIS_DB, Tenant, deploy, key_for
from tests.serving.gateway.in_process import Answer, key_headers, post
from tests.serving.gateway.scripted_engine import ScriptedEngine, scripted_engine
from tests.serving.gateway.test_routes_by_capability import openai_client

QUERY = "What is the capital of France?"
DOCUMENTS = ["The weather is cold today.", "Paris is the capital of France.", "I like green apples."]
RERANKER = "bge-reranker-v2-m3"


# --- Answered by the real engine, through a real gateway ----------------------------------------------


@pytest.fixture
def scorer(tenant: Tenant) -> Tenant:
    """The tenant's `minilm` deployment, of a card that also lists reranking (so it serves rerank and
    score: the engine behind it is the real MiniLM)."""
    card = ModelCard.objects.get(slug=EMBED)
    card.pk, card.slug, card.tasks = None, f"{EMBED}-scorer", ["embedding", "reranking"]
    card.save()
    subscribe(organization=tenant.organization, card=card, license_sha256=None, user=None)
    Deployment.objects.filter(pk=tenant.embed.pk).update(model_card=card)
    return tenant


def call(
    gateway_url: str, tls_certificate: Path, key: str, path: str, body: dict[str, Any]
) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(tls_certificate))
    return httpx.post(
        f"{gateway_url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        verify=context,
        timeout=60,
    )


def metered(tenant: Tenant, route: str, count: int) -> list[UsageRecord]:
    """The gateway's usage records of `route`, once `count` have been queued, flushed to PostgreSQL."""
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    deadline = time.monotonic() + 10
    while connection.llen(QUEUE_KEY) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    flush_usage(connection)
    return list(UsageRecord.objects.filter(organization=tenant.organization, route=route))


@pytest.mark.slow
def test_rerank_orders_the_documents_by_relevance_and_is_metered_in_the_engines_tokens(
    gateway_url: str, tls_certificate: Path, scorer: Tenant
) -> None:
    body = {"model": "minilm", "query": QUERY, "documents": DOCUMENTS}
    answer = call(gateway_url, tls_certificate, scorer.key, "/v1/rerank", body)
    assert answer.status_code == 200, answer.text
    reranked = answer.json()
    assert reranked["results"][0]["index"] == 1
    assert reranked["results"][0]["document"]["text"] == DOCUMENTS[1]
    scores = [result["relevance_score"] for result in reranked["results"]]
    assert scores == sorted(scores, reverse=True)
    assert reranked["usage"]["prompt_tokens"] > 0
    [record] = metered(scorer, "rerank", 1)
    assert (record.prompt_tokens, record.completion_tokens, record.status_code, record.model) == (
        reranked["usage"]["prompt_tokens"],
        0,
        200,
        "minilm",
    )
    assert answer.headers["x-request-id"] == record.request_id


@pytest.mark.slow
def test_rerank_with_top_n_answers_only_the_best(
    gateway_url: str, tls_certificate: Path, scorer: Tenant
) -> None:
    body = {"model": "minilm", "query": QUERY, "documents": DOCUMENTS, "top_n": 1}
    answer = call(gateway_url, tls_certificate, scorer.key, "/v1/rerank", body)
    assert [result["index"] for result in answer.json()["results"]] == [1]


@pytest.mark.slow
def test_score_scores_each_pair_and_is_metered_in_the_engines_tokens(
    gateway_url: str, tls_certificate: Path, scorer: Tenant
) -> None:
    body = {"model": "minilm", "queries": QUERY, "documents": DOCUMENTS}
    answer = call(gateway_url, tls_certificate, scorer.key, "/v1/score", body)
    assert answer.status_code == 200, answer.text
    scored = answer.json()
    assert [item["index"] for item in scored["data"]] == [0, 1, 2]
    scores = [item["score"] for item in scored["data"]]
    assert max(scores) == scores[1]
    [record] = metered(scorer, "score", 1)
    assert (record.prompt_tokens, record.status_code) == (scored["usage"]["prompt_tokens"], 200)
    assert record.prompt_tokens > 0


@pytest.mark.slow
def test_score_takes_the_older_text_1_and_text_2_pair(
    gateway_url: str, tls_certificate: Path, scorer: Tenant
) -> None:
    body = {"model": "minilm", "text_1": [QUERY, QUERY], "text_2": DOCUMENTS[:2]}
    answer = call(gateway_url, tls_certificate, scorer.key, "/v1/score", body)
    assert answer.status_code == 200, answer.text
    first, second = (item["score"] for item in answer.json()["data"])
    assert second > first


# --- Admission ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "many"), [("query", "documents"), ("queries", "documents"), ("text_1", "text_2")]
)
def test_the_admission_estimate_counts_the_query_once_for_each_text_it_is_paired_with(
    one: str, many: str
) -> None:
    query = "q" * 400  # 100 tokens at the estimate's 4 characters a token

    def estimate(texts: int) -> int:
        return pipeline.estimate_prompt_tokens({"model": "r", one: query, many: ["d"] * texts})

    assert estimate(10) - estimate(1) >= 9 * 100


# --- Refused before the engine is asked (in process, stand-in engine) ------------------------------------


@pytest.fixture
def secret(acme: Organization, transactional_catalog: None) -> Iterator[str]:
    """A key of acme, which has a reranker deployment `reranker` and a chat deployment `chat`."""
    with scripted_engine() as url:
        deploy(acme, "reranker", RERANKER, url)
        deploy(acme, "chat", CHAT, url)
        yield create_api_key(organization=acme, name="k", created_by=None, expires_at=None)[1]


@pytest.fixture
def usage_queue() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.delete(QUEUE_KEY)
    yield connection
    connection.close()


def refused(secret: str, path: str, body: Any) -> Answer:
    answer = post(path, body, key_headers(secret))
    assert ScriptedEngine.received == []
    return answer


def error(answer: Answer) -> dict[str, Any]:
    found: dict[str, Any] = answer.json()["error"]
    return found


RERANK = {"model": "reranker", "query": QUERY, "documents": DOCUMENTS}
SCORE = {"model": "reranker", "queries": QUERY, "documents": DOCUMENTS}


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"documents": None}, "documents", "must be a string or a non-empty array of strings"),
        ({"documents": 42}, "documents", "must be a string or a non-empty array of strings"),
        ({"documents": []}, "documents", "must be a string or a non-empty array of strings"),
        ({"documents": ["a", 1]}, "documents", "must be a string or a non-empty array of strings"),
        ({"documents": ["a"] * (MAX_DOCUMENTS + 1)}, "documents", f"at most {MAX_DOCUMENTS} texts"),
        ({"query": None}, "query", "must be a non-empty string"),
        ({"query": ""}, "query", "must be a non-empty string"),
        ({"top_n": -1}, "top_n", "must be a whole number of at least 0"),
        ({"top_n": "3"}, "top_n", "must be a whole number of at least 0"),
        ({"instruction": "Judge by tone"}, "instruction", "Unrecognized request argument"),
        ({"priority": -10}, "priority", "Unrecognized request argument"),
    ],
    ids=[
        "documents-missing", "documents-number", "documents-empty", "documents-not-strings",
        "documents-too-many", "query-missing", "query-empty", "top_n-negative", "top_n-string",
        "instruction", "priority",
    ],
)  # fmt: skip
def test_a_malformed_rerank_request_is_a_400_naming_the_field(
    secret: str, usage_queue: redis.Redis, change: dict[str, Any], param: str, words: str
) -> None:
    body = {name: value for name, value in {**RERANK, **change}.items() if value is not None}
    answer = refused(secret, "/v1/rerank", body)
    assert answer.status == 400
    assert error(answer)["param"] == param
    assert words in error(answer)["message"]
    assert usage_queue.llen(QUEUE_KEY) == 0


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "reranker"}, "queries", "must be given, with 'documents'"),
        ({"model": "reranker", "queries": QUERY}, "documents", "must be given with 'queries'"),
        ({**SCORE, "text_2": "x"}, "text_2", "cannot be combined with 'queries' and 'documents'"),
        ({**SCORE, "queries": [QUERY, QUERY]}, "queries", "as many as 'documents' (3); it holds 2"),
        ({"model": "reranker", "text_1": ["a", "b"], "text_2": "c"}, "text_1", "as many as 'text_2' (1)"),
        ({**SCORE, "documents": [{"content": []}]}, "documents", "must be a string or a non-empty array"),
    ],
    ids=["no-pair", "half-a-pair", "two-pairs", "counts-differ", "many-to-one", "not-text"],
)
def test_a_malformed_score_request_is_a_400_naming_the_field(
    secret: str, body: dict[str, Any], param: str, words: str
) -> None:
    answer = refused(secret, "/v1/score", body)
    assert (answer.status, error(answer)["param"]) == (400, param)
    assert words in error(answer)["message"]


def test_a_body_that_is_not_a_json_object_is_a_400(secret: str) -> None:
    answer = refused(secret, "/v1/rerank", b"[1, 2]")
    assert answer.status == 400
    assert error(answer)["message"] == "The request body must be a JSON object."


def test_outsider_cannot_rerank_with_another_organisations_deployment(
    globex: Organization, secret: str
) -> None:
    theirs = create_api_key(organization=globex, name="k", created_by=None, expires_at=None)[1]
    answer = refused(theirs, "/v1/rerank", RERANK)
    assert (answer.status, error(answer)["code"]) == (404, "model_not_found")
    assert error(answer)["message"] == "The model `reranker` does not exist or you do not have access to it."


def test_outsider_cannot_score_with_another_organisations_deployment(
    globex: Organization, secret: str
) -> None:
    theirs = create_api_key(organization=globex, name="k", created_by=None, expires_at=None)[1]
    assert refused(theirs, "/v1/score", SCORE).status == 404


def test_a_key_limited_to_other_deployments_cannot_rerank_with_this_one(
    acme: Organization, secret: str
) -> None:
    limited = key_for(acme, allowed_deployments=["chat"])
    answer = refused(limited, "/v1/rerank", RERANK)
    assert (answer.status, error(answer)["code"]) == (404, "model_not_found")


def test_an_unknown_key_is_a_401(secret: str) -> None:
    answer = refused("mk-not-a-key", "/v1/score", SCORE)
    assert (answer.status, error(answer)["code"]) == (401, "invalid_api_key")


def test_rerank_on_a_chat_deployment_is_a_400_naming_what_it_serves(secret: str) -> None:
    answer = refused(secret, "/v1/rerank", {**RERANK, "model": "chat"})
    assert (answer.status, error(answer)["param"]) == (400, "model")
    assert error(answer)["message"].startswith(
        "The deployment `chat` cannot answer /v1/rerank: it serves /v1/chat/completions, /v1/responses, "
        "/v1/completions."
    )


def test_chat_on_a_reranker_is_a_400_naming_rerank_and_score(secret: str) -> None:
    body = {"model": "reranker", "messages": [{"role": "user", "content": "Hello"}]}
    answer = refused(secret, "/v1/chat/completions", body)
    assert answer.status == 400
    assert (
        "`reranker` cannot answer /v1/chat/completions: it serves /v1/rerank, /v1/score."
        in (error(answer)["message"])
    )


def test_models_lists_a_reranker_with_rerank_and_score(secret: str) -> None:
    async def listed() -> dict[str, Any]:
        models = await openai_client(secret).models.list()
        return {model.id: model.model_extra["routes"] for model in models.data}  # type: ignore[index]

    assert asyncio.run(listed()) == {
        "reranker": ["rerank", "score"],
        "chat": ["chat.completions", "responses", "completions"],
    }


def test_a_reranker_with_a_guardrail_attached_is_refused_rather_than_called_unchecked(
    acme: Organization, secret: str
) -> None:
    guardrail = service.create_guardrail(
        organization=acme, user=None, name="g", config={"personal_data": {"EMAIL": "mask"}}
    )
    service.publish(guardrail, None)
    GuardrailAttachment.objects.create(
        guardrail=guardrail, deployment=Deployment.objects.get(name="reranker")
    )
    answer = refused(secret, "/v1/rerank", RERANK)
    assert (answer.status, error(answer)["param"]) == (400, "model")
    assert "the texts of /v1/rerank cannot be checked yet" in error(answer)["message"]
