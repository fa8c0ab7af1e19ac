"""Prompt routers at the gateway, through the platform's own ASGI application in process, with stand-in
engines whose answers say who answered: the decision (a trained predictor sends sums to the small
deployment and essays to the large one), who served (headers), capacity (a candidate scaled to zero,
not ready or over its queue is skipped; an unavailable fallback gives way to the best available
candidate), shadow mode, metering, logging, keys' allow-lists and outsiders.

The predictor is trained here on the stand-ins' known quality (the small engine answers sums right and
essays wrong, the large one both), stored and activated as the learning side stores versions, so the
gateway loads it the way it loads any trained router."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.test import AsyncRequestFactory, Client
from prometheus_client import REGISTRY

from learning import router_service
from learning.models import InvocationLogSettings, RouterSample
from learning.storage import get_store
from marketplace.accounts.models import ApiKey, Organization
from marketplace.accounts.services import create_api_key
from serving.choices import DeploymentStatus
from serving.gateway import capacity, openai_api, shadow, upstream
from serving.gateway.directory import Directory, RouterTarget, Target
from serving.gateway.metering import QUEUE_KEY
from serving.models import Deployment
from tests.serving.gateway.conftest import CHAT, EMBED, deploy
from tests.serving.gateway.in_process import Answer, browser_headers, key_headers, post
from tests.serving.gateway.router_engines import (
    ESSAYS,
    SUMS,
    RouterEngine,
    answer_of,
    engine,
    make_router,
    train,
    trained_version,
    write_two_cards,
)

SUM, ESSAY = SUMS[0], ESSAYS[0]


@pytest.fixture
def store(settings: Any, tmp_path: Path) -> Iterator[None]:
    """The object store (predictors) as a folder of this test."""
    settings.DATA_DIR = str(tmp_path)
    get_store.cache_clear()
    yield
    get_store.cache_clear()


@pytest.fixture
def queue() -> Iterator[redis.Redis]:
    """The gateway's Redis, with the usage queue and every limit counter empty before and after."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


class Stand:
    """The stand-in engines of one test, by deployment name."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.engines: dict[str, type[RouterEngine]] = {}

    def calls(self, name: str, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        return [payload for where, payload in self.engines[name].received if where == path]


@pytest.fixture
def two_cards(transactional_db: None) -> None:
    """The two catalog cards these tests deploy, committed for real (the gateway reads in threads)."""
    write_two_cards()


@pytest.fixture
def stand(two_cards: None, store: None, queue: redis.Redis) -> Iterator[Stand]:
    found = Stand()
    with engine("small") as small, engine("large") as large, engine("embedder") as embedder:
        for name, (url, handler) in {"small": small, "large": large, "embedder": embedder}.items():
            found.urls[name], found.engines[name] = url, handler
        yield found


@pytest.fixture
def deployments(acme: Organization, stand: Stand) -> dict[str, Deployment]:
    return {
        "small": deploy(acme, "small", CHAT, stand.urls["small"]),
        "large": deploy(acme, "large", CHAT, stand.urls["large"]),
        "embedder": deploy(acme, "embedder", EMBED, stand.urls["embedder"]),
    }


@pytest.fixture
def key(acme: Organization, deployments: dict[str, Deployment]) -> str:
    return create_api_key(organization=acme, name="k", created_by=None, expires_at=None)[1]


def chat(secret: str, prompt: str, model: str = "auto", **extra: Any) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    return post("/v1/chat/completions", body, key_headers(secret))


def content(answer: Answer) -> str:
    return str(answer.json()["choices"][0]["message"]["content"])


def usage_records(connection: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(line) for line in connection.lrange(QUEUE_KEY, 0, -1)]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- The decision and who served -----------------------------------------------------------------------


def test_a_trained_router_sends_a_sum_to_the_small_deployment_and_an_essay_to_the_large_one(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme))
    for_sum, for_essay = chat(key, SUM), chat(key, ESSAY)
    assert (for_sum.status, content(for_sum), for_sum.headers["x-router-deployment"]) == (
        200, answer_of("small"), "small"
    )  # fmt: skip
    assert (for_essay.status, content(for_essay), for_essay.headers["x-router-deployment"]) == (
        200, answer_of("large"), "large"
    )  # fmt: skip


def test_the_engine_is_asked_for_the_chosen_deployment_by_its_own_name(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme))
    chat(key, SUM)
    assert [payload["model"] for payload in stand.calls("small")] == ["small"]


def test_every_invoke_answer_carries_the_request_id_its_usage_is_metered_under(
    key: str, queue: redis.Redis
) -> None:
    direct = chat(key, SUM, model="small")
    [record] = usage_records(queue)
    assert direct.headers["x-request-id"] == record["request_id"]
    assert "x-router-deployment" not in direct.headers  # no router chose


def test_a_call_refused_by_its_limits_says_its_request_id_and_no_deployment(
    acme: Organization, deployments: dict[str, Deployment]
) -> None:
    make_router(acme)
    secret = create_api_key(
        organization=acme, name="one a minute", created_by=None, expires_at=None, requests_per_minute=1
    )[1]
    assert chat(secret, SUM).status == 200
    refused = chat(secret, SUM)
    assert refused.status == 429 and refused.headers["x-request-id"]
    assert "x-router-deployment" not in refused.headers  # nobody answered: the router did not choose


def test_an_untrained_router_answers_through_its_fallback(
    acme: Organization, key: str, stand: Stand, queue: redis.Redis
) -> None:
    make_router(acme)
    answer = chat(key, SUM)
    [record] = usage_records(queue)
    assert (content(answer), answer.headers["x-router-deployment"]) == (answer_of("large"), "large")
    assert (record["router"], record["router_choice"]) == ("auto", "large")


def test_a_streamed_chat_through_a_router_says_who_served_and_streams_its_answer(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme))
    answer = chat(key, SUM, stream=True)
    assert answer.headers["x-router-deployment"] == "small" and answer.headers["x-request-id"]
    assert b"small" in answer.body and answer.body.endswith(b"data: [DONE]\n\n")


def test_a_completion_through_a_router_goes_to_the_chosen_deployment(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme))
    answer = post("/v1/completions", {"model": "auto", "prompt": SUM}, key_headers(key))
    assert (answer.status, answer.json()["choices"][0]["text"]) == (200, answer_of("small"))
    assert stand.calls("small", "/v1/completions")[0]["model"] == "small"


def test_bedrock_converse_through_a_router_has_the_prompt_router_trace(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme))
    body = {"messages": [{"role": "user", "content": [{"text": ESSAY}]}]}
    answer = post("/model/auto/converse", body, key_headers(key))
    assert answer.json()["trace"] == {"promptRouter": {"invokedModelId": "large"}}
    assert answer.json()["output"]["message"]["content"] == [{"text": answer_of("large")}]


def test_a_bedrock_converse_to_a_deployment_has_no_router_trace(key: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"text": ESSAY}]}]}
    answer = post("/model/large/converse", body, key_headers(key))
    assert answer.status == 200 and "trace" not in answer.json()


def test_models_lists_the_organisations_routers_beside_its_deployments(acme: Organization, key: str) -> None:
    make_router(acme)
    assert {"auto", "small", "large", "embedder"} == set(asyncio.run(_listed_models(key)))


async def _listed_models(secret: str) -> list[str]:
    request = AsyncRequestFactory().get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    response = await openai_api.models(request)
    return [model["id"] for model in json.loads(response.content)["data"]]


# --- Metering, logging and metrics -------------------------------------------------------------------------


def test_a_routed_call_is_metered_under_the_router_and_the_deployment_that_answered(
    acme: Organization, key: str, queue: redis.Redis, deployments: dict[str, Deployment]
) -> None:
    train(make_router(acme))
    chat(key, SUM)
    [record] = usage_records(queue)
    expected = {"model": "auto", "deployment_id": deployments["small"].pk, "router": "auto",
                "router_choice": "small", "route": "chat.completions", "prompt_tokens": 12,
                "completion_tokens": 3}  # fmt: skip
    assert {name: record[name] for name in expected} == expected


def test_a_call_to_a_deployment_is_metered_without_a_router(key: str, queue: redis.Redis) -> None:
    chat(key, SUM, model="large")
    [record] = usage_records(queue)
    assert (record["router"], record["router_choice"]) == ("", "")


def test_in_shadow_mode_the_fallback_answers_and_the_would_be_choice_is_metered(
    acme: Organization, key: str, queue: redis.Redis, stand: Stand
) -> None:
    train(make_router(acme, mode="shadow"))
    answer = chat(key, SUM)
    [record] = usage_records(queue)
    assert (content(answer), answer.headers["x-router-deployment"]) == (answer_of("large"), "large")
    assert (record["router"], record["router_choice"]) == ("auto", "small")
    assert stand.calls("small") == []


def test_a_logged_routed_call_names_its_router_and_choice_in_the_invocation_log(
    acme: Organization, key: str, stand: Stand
) -> None:
    from learning.capture import QUEUE_KEY as LOG_QUEUE

    train(make_router(acme))
    InvocationLogSettings.objects.create(
        organization=acme, enabled=True, mask_personal_data=False, deployments=["auto"]
    )
    connection = redis.Redis.from_url(settings.REDIS_URL)
    chat(key, SUM)
    [record] = [json.loads(line) for line in connection.lrange(LOG_QUEUE, 0, -1)]
    assert (record["deployment"], record["router"], record["router_choice"]) == ("small", "auto", "small")
    assert record["request"]["model"] == "small"  # as sent to the engine


def test_routed_calls_are_counted_by_router_and_deployment_in_prometheus(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme))
    labels = {"router": "auto", "deployment": "small", "mode": "active"}
    before = counter("marketplace_gateway_routed_total", **labels)
    chat(key, SUM)
    chat(key, SUM)
    assert counter("marketplace_gateway_routed_total", **labels) - before == 2


def test_shadow_calls_in_process_answer_the_sample_in_shadow_mode_too(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme, mode="shadow", shadow_rate=1.0, shadow_tokens_per_day=1000))
    answer = chat(key, SUM)  # the fallback answers; the small one, the router's choice, is shadow-called
    assert answer.headers["x-router-deployment"] == "large"
    assert [payload["model"] for payload in stand.calls("small")] == ["small"]
    sample = RouterSample.objects.get()
    assert (sample.request_id, set(sample.answers)) == (answer.headers["x-request-id"], {"small", "large"})


def test_shadow_calls_beyond_the_bound_in_flight_are_skipped_not_queued(
    acme: Organization, key: str, stand: Stand, monkeypatch: Any
) -> None:
    train(make_router(acme, shadow_rate=1.0, shadow_tokens_per_day=1000))
    monkeypatch.setattr(shadow, "MAX_IN_FLIGHT", 0)  # as if every slot were taken
    labels = {"router": "auto", "deployment": "large", "outcome": "busy"}
    before = counter("marketplace_gateway_router_shadow_calls_total", **labels)
    assert chat(key, SUM).headers["x-router-deployment"] == "small"
    assert stand.calls("large") == [] and not RouterSample.objects.exists()
    assert counter("marketplace_gateway_router_shadow_calls_total", **labels) == before + 1


# --- Capacity -----------------------------------------------------------------------------------------------


def shadow_day(queue: redis.Redis) -> int:
    return sum(int(queue.get(name) or 0) for name in queue.scan_iter("*shadow:router:*"))


def test_a_long_shadow_answer_cannot_take_the_routers_day_past_its_cap(
    acme: Organization, key: str, stand: Stand, queue: redis.Redis
) -> None:
    # The served answer used 15 tokens; the other candidate would write 500 if let.
    train(make_router(acme, mode="shadow", shadow_rate=1.0, shadow_tokens_per_day=100))
    stand.engines["small"].completion_tokens = 500
    chat(key, SUM)
    chat(key, SUM)
    assert shadow_day(queue) <= 100


def test_a_shadow_call_is_bounded_by_the_callers_max_tokens_and_reserves_no_more(
    acme: Organization, key: str, stand: Stand, queue: redis.Redis
) -> None:
    train(make_router(acme, mode="shadow", shadow_rate=1.0, shadow_tokens_per_day=20))
    stand.engines["small"].completion_tokens = 500
    chat(key, SUM, max_tokens=5)  # reserves 12 + 5 = 17 of the day's 20
    chat(key, SUM, max_tokens=5)  # no room for another 17: skipped
    assert [payload["max_tokens"] for payload in stand.calls("small")] == [5]
    assert shadow_day(queue) == 17


def test_a_shadow_call_without_the_callers_max_tokens_is_bounded_by_twice_the_served_answer(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme, mode="shadow", shadow_rate=1.0, shadow_tokens_per_day=1000))
    chat(key, SUM)
    assert [payload["max_tokens"] for payload in stand.calls("small")] == [shadow.MIN_COMPLETION_BOUND]


def test_a_candidate_scaled_to_zero_is_skipped(
    acme: Organization, key: str, deployments: dict[str, Deployment]
) -> None:
    train(make_router(acme))
    Deployment.objects.filter(pk=deployments["small"].pk).update(endpoints=[], ready_replicas=0)
    answer = chat(key, SUM)
    assert (answer.status, answer.headers["x-router-deployment"]) == (200, "large")


def test_a_candidate_that_is_not_ready_is_skipped(
    acme: Organization, key: str, deployments: dict[str, Deployment]
) -> None:
    train(make_router(acme))
    Deployment.objects.filter(pk=deployments["small"].pk).update(status=DeploymentStatus.UPDATING)
    assert chat(key, SUM).headers["x-router-deployment"] == "small"  # updating still serves
    Deployment.objects.filter(pk=deployments["small"].pk).update(status=DeploymentStatus.PROVISIONING)
    assert chat(key, SUM).headers["x-router-deployment"] == "large"


def test_a_candidate_whose_engine_queue_is_over_the_threshold_is_skipped(
    acme: Organization, key: str, stand: Stand, settings: Any
) -> None:
    train(make_router(acme))
    settings.GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA = 5
    stand.engines["small"].waiting = 6
    asyncio.run(capacity.refresh([stand.urls["small"]]))  # what the background refresher does
    assert chat(key, SUM).headers["x-router-deployment"] == "large"
    stand.engines["small"].waiting = 5
    asyncio.run(capacity.refresh([stand.urls["small"]]))
    assert chat(key, SUM).headers["x-router-deployment"] == "small"


def test_requests_in_flight_from_the_gateway_count_in_a_replicas_queue(
    acme: Organization, stand: Stand, settings: Any, deployments: dict[str, Deployment]
) -> None:
    from tests.serving.gateway.conftest import slow_streaming_engine

    settings.GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA = 1
    with slow_streaming_engine() as slow:
        target = asyncio.run(_busy_target(slow))
    assert target == (True, True, False)


async def _busy_target(endpoint: str) -> tuple[bool, bool, bool]:
    """Whether the candidate is available with 0, 1 and 2 streams in flight to its one replica."""
    target = Target(
        deployment_id=1, name="busy", model_slug=CHAT, endpoints=(endpoint,), routes=("chat.completions",)
    )
    seen = [capacity.available(target)]
    body = {"model": "busy", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    exchanges = []
    for _ in range(2):
        exchanges.append(await upstream.open_stream("/v1/chat/completions", body, (endpoint,)))
        seen.append(capacity.available(target))
    for exchange in exchanges:
        await upstream.close(exchange)
    return seen[0], seen[1], seen[2]


def test_the_engine_queue_is_read_from_vllm_metrics() -> None:
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 4.0\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 9.0\n'
    )
    assert (capacity.waiting_in(text), capacity.waiting_in("# nothing\n")) == (7.0, None)


def test_when_the_fallback_is_unavailable_the_best_available_candidate_answers_not_a_503(
    acme: Organization, key: str, deployments: dict[str, Deployment]
) -> None:
    train(make_router(acme))
    Deployment.objects.filter(pk=deployments["large"].pk).update(endpoints=[], ready_replicas=0)
    answer = chat(key, ESSAY)  # the small one answers essays badly, but it is the one that can answer
    assert (answer.status, answer.headers["x-router-deployment"]) == (200, "small")


def test_a_router_none_of_whose_candidates_is_ready_answers_503_saying_so(
    acme: Organization, key: str, deployments: dict[str, Deployment]
) -> None:
    make_router(acme)
    Deployment.objects.filter(name__in=["small", "large"]).update(status=DeploymentStatus.FAILED)
    answer = chat(key, SUM)
    assert (
        answer.status == 503 and "None of the router `auto`'s candidates" in answer.json()["error"]["message"]
    )


# --- Semantic predictor: the prompt's embedding -----------------------------------------------------------


def test_a_semantic_router_embeds_the_prompt_once_and_routes_on_it(
    acme: Organization, key: str, stand: Stand
) -> None:
    train(make_router(acme, embedding_deployment="embedder"), kind="semantic")
    for_sum, for_essay = chat(key, SUM), chat(key, ESSAY)
    assert (for_sum.headers["x-router-deployment"], for_essay.headers["x-router-deployment"]) == (
        "small", "large"
    )  # fmt: skip
    embedded = stand.calls("embedder", "/v1/embeddings")
    assert [payload["input"] for payload in embedded] == [SUM, ESSAY]


def test_a_semantic_routers_prompt_embedding_is_metered_to_the_organisation_not_the_key(
    acme: Organization, key: str, deployments: dict[str, Deployment], queue: redis.Redis
) -> None:
    train(make_router(acme, embedding_deployment="embedder"), kind="semantic")
    chat(key, SUM)
    by_route = {record["route"]: record for record in usage_records(queue)}
    embedded = by_route["router.embedding"]
    assert (embedded["deployment_id"], embedded["organization_id"], embedded["api_key_id"]) == (
        deployments["embedder"].pk, acme.pk, None
    )  # fmt: skip
    assert (embedded["router"], embedded["router_choice"], embedded["prompt_tokens"]) == ("auto", "small", 3)
    assert embedded["request_id"] != by_route["chat.completions"]["request_id"]
    month = [name for name in queue.scan_iter("*month:org:*")]
    served = by_route["chat.completions"]
    counted = sum(int(queue.get(name) or 0) for name in month)
    assert (
        counted == served["prompt_tokens"] + served["completion_tokens"] + 3
    )  # the call's and the embedding's


def test_an_ngram_router_calls_no_embedding_and_meters_none(
    acme: Organization, key: str, stand: Stand, queue: redis.Redis
) -> None:
    train(make_router(acme, embedding_deployment="embedder"))
    chat(key, SUM)
    assert stand.calls("embedder", "/v1/embeddings") == []
    assert [record["route"] for record in usage_records(queue)] == ["chat.completions"]


def test_a_failed_embedding_answers_through_the_fallback_not_an_error(
    acme: Organization, key: str, deployments: dict[str, Deployment]
) -> None:
    train(make_router(acme, embedding_deployment="embedder"), kind="semantic")
    Deployment.objects.filter(pk=deployments["embedder"].pk).update(endpoints=["http://127.0.0.1:9"])
    before = counter("marketplace_gateway_router_embedding_failures_total", router="auto")
    answer = chat(key, SUM)
    assert (answer.status, answer.headers["x-router-deployment"]) == (200, "large")
    assert counter("marketplace_gateway_router_embedding_failures_total", router="auto") == before + 1


def test_a_predictor_that_fails_on_the_prompt_answers_through_the_fallback_not_an_error(
    acme: Organization, key: str
) -> None:
    router = make_router(acme, embedding_deployment="embedder")
    router_service.activate(router, trained_version(router, "semantic", dimensions=3))  # embedder gives 2
    before = counter("marketplace_gateway_router_prediction_failures_total", router="auto")
    answer = chat(key, SUM)
    assert (answer.status, answer.headers["x-router-deployment"]) == (200, "large")
    assert counter("marketplace_gateway_router_prediction_failures_total", router="auto") == before + 1


# --- Who may call a router ----------------------------------------------------------------------------------


def test_embeddings_through_a_router_are_refused_naming_the_model(acme: Organization, key: str) -> None:
    make_router(acme)
    answer = post("/v1/embeddings", {"model": "auto", "input": "hello"}, key_headers(key))
    assert (answer.status, answer.json()["error"]["param"]) == (400, "model")
    assert "prompt router" in answer.json()["error"]["message"]


def test_another_organisations_router_is_the_same_404_as_a_name_that_does_not_exist(
    acme: Organization, globex: Organization, key: str
) -> None:
    make_router(acme)
    outsider = create_api_key(organization=globex, name="g", created_by=None, expires_at=None)[1]
    theirs, unknown = chat(outsider, SUM), chat(outsider, SUM, model="no-such-model")
    assert theirs.status == unknown.status == 404
    assert theirs.json()["error"]["message"].replace("auto", "X") == unknown.json()["error"][
        "message"
    ].replace("no-such-model", "X")


def test_a_key_allowed_the_router_reaches_its_candidates_through_it_though_they_are_not_in_its_list(
    acme: Organization, key: str
) -> None:
    train(make_router(acme))
    secret = create_api_key(
        organization=acme, name="router only", created_by=None, expires_at=None, allowed_deployments=["auto"]
    )[1]
    assert chat(secret, SUM).headers["x-router-deployment"] == "small"
    assert chat(secret, SUM, model="small").status == 404  # not directly


def test_a_key_allowed_only_a_candidate_cannot_call_the_router(acme: Organization, key: str) -> None:
    make_router(acme)
    allowed, secret = create_api_key(organization=acme, name="small only", created_by=None, expires_at=None)
    ApiKey.objects.filter(pk=allowed.pk).update(allowed_deployments=["small"])
    assert (chat(secret, SUM).status, chat(secret, SUM, model="small").status) == (404, 200)


def test_a_new_predictor_version_is_picked_up_when_the_cache_expires_without_a_restart(
    acme: Organization, key: str
) -> None:
    router = make_router(acme)
    version = trained_version(router)

    async def version_in_use(directory: Directory) -> int | None:
        caller = await directory.caller(f"Bearer {key}")
        assert caller is not None
        found = await directory.resolve(caller, "auto")
        assert isinstance(found, RouterTarget)
        return found.route.version

    async def scenario() -> list[int | None]:
        directory = Directory(ttl=1)
        seen = [await version_in_use(directory)]
        await sync_to_async(router_service.activate)(router, version)
        seen.append(await version_in_use(directory))  # cached: still the version read before
        await asyncio.sleep(1.05)
        seen.append(await version_in_use(directory))
        return seen

    assert asyncio.run(scenario()) == [None, None, 1]


# --- The web playground ------------------------------------------------------------------------------------


def playground(router: int, user: AbstractUser, prompt: str) -> Answer:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
    return post(f"/routers/{router}/playground/chat/", body, browser_headers(user))


def test_a_member_chats_through_a_router_in_the_playground_and_is_told_who_answered(
    acme: Organization, member: AbstractUser, deployments: dict[str, Deployment], queue: redis.Redis
) -> None:
    router = train(make_router(acme))
    for_sum, for_essay = playground(router.pk, member, SUM), playground(router.pk, member, ESSAY)
    assert (for_sum.status, for_sum.headers["x-router-deployment"]) == (200, "small")
    assert b'"content": "small"' in for_sum.body and for_sum.body.endswith(b"data: [DONE]\n\n")
    assert (for_essay.status, for_essay.headers["x-router-deployment"]) == (200, "large")
    records = usage_records(queue)
    assert sorted((r["router"], r["router_choice"], r["api_key_id"]) for r in records) == [
        ("auto", "large", None), ("auto", "small", None)
    ]  # fmt: skip


def test_an_outsider_cannot_chat_through_another_organisations_router_in_the_playground(
    acme: Organization,
    outsider: AbstractUser,
    globex: Organization,
    stand: Stand,
    queue: redis.Redis,
    deployments: dict[str, Deployment],
) -> None:
    router = make_router(acme)
    answer = playground(router.pk, outsider, SUM)
    assert answer.status == 404 and "router" in answer.json()["error"]["message"]
    assert stand.calls("small") == stand.calls("large") == [] and usage_records(queue) == []


def test_the_router_playground_page_is_for_the_organisations_members_only(
    acme: Organization,
    member: AbstractUser,
    outsider: AbstractUser,
    globex: Organization,
    deployments: dict[str, Deployment],
) -> None:
    router = make_router(acme)
    page = Client()
    page.force_login(member)
    shown = page.get(f"/routers/{router.pk}/playground/").content.decode()
    assert 'id="chat-form"' in shown and f"/routers/{router.pk}/playground/chat/" in shown
    assert f'href="/routers/{router.pk}/playground/"' in page.get(f"/routers/{router.pk}/").content.decode()
    page.force_login(outsider)
    assert page.get(f"/routers/{router.pk}/playground/").status_code == 404


def test_a_playground_chat_through_a_router_names_a_bad_field(
    acme: Organization, member: AbstractUser, stand: Stand, deployments: dict[str, Deployment]
) -> None:
    router = make_router(acme)
    body = {"messages": [{"role": "user", "content": SUM}], "tools": []}
    answer = post(f"/routers/{router.pk}/playground/chat/", body, browser_headers(member))
    assert answer.status == 400 and answer.json()["error"]["param"] == "tools"
    assert stand.calls("large") == []
