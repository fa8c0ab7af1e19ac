"""A deployment answers the routes its model serves, and says which when called on another.

Chat on an embedding model, or embeddings on a chat model, is a 400 in the route's API format naming
the routes the deployment serves, before anything is spent and without the engine being asked; and
/v1/models lists each deployment with those routes. Through the platform's own ASGI application in
process (the unmodified openai client over httpx's ASGI transport), with the scripted stand-in engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from django.conf import settings

from marketplace.accounts.models import Organization
from marketplace.accounts.services import create_api_key
from serving.gateway.metering import QUEUE_KEY
from tests.serving.gateway.conftest import CHAT, EMBED, deploy, key_for
from tests.serving.gateway.in_process import key_headers, post
from tests.serving.gateway.scripted_engine import ScriptedEngine, scripted_engine

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def engine(transactional_catalog: None) -> Iterator[str]:
    with scripted_engine() as url:
        yield url


@pytest.fixture
def secret(acme: Organization, engine: str) -> str:
    """A key of acme, which has a chat deployment `chat` and an embedding deployment `embed`."""
    deploy(acme, "chat", CHAT, engine)
    deploy(acme, "embed", EMBED, engine)
    return create_api_key(organization=acme, name="k", created_by=None, expires_at=None)[1]


@pytest.fixture
def usage_queue() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.delete(QUEUE_KEY)
    yield connection
    connection.close()


def openai_client(secret: str) -> openai.AsyncOpenAI:
    """The unmodified openai client, talking to the platform's ASGI application in this process."""
    from marketplace.asgi import application

    transport = httpx.ASGITransport(app=application)
    return openai.AsyncOpenAI(
        api_key=secret,
        base_url="http://localhost/v1",
        http_client=httpx.AsyncClient(transport=transport, base_url="http://localhost"),
        max_retries=0,
    )


def refusal(secret: str, call: str) -> openai.APIStatusError:
    """What the openai client raises for `call` ("chat", "chat-stream", "completions", "embeddings")."""

    async def run() -> Any:
        client = openai_client(secret)
        if call == "embeddings":
            return await client.embeddings.create(model="chat", input="hi")
        if call == "completions":
            return await client.completions.create(model="embed", prompt="hi", max_tokens=3)
        return await client.chat.completions.create(
            model="embed", messages=HELLO, stream=call == "chat-stream"
        )  # type: ignore[arg-type]

    with pytest.raises(openai.APIStatusError) as raised:
        asyncio.run(run())
    return raised.value


@pytest.mark.parametrize("call", ["chat", "chat-stream", "completions"])
def test_a_generation_route_on_an_embedding_deployment_answers_400_naming_what_it_serves(
    call: str, secret: str
) -> None:
    error = refusal(secret, call)
    assert isinstance(error, openai.BadRequestError)
    assert error.body["param"] == "model"  # type: ignore[index]
    message = error.body["message"]  # type: ignore[index]
    assert "`embed` cannot answer /v1/" in message
    assert "it serves /v1/embeddings." in message


def test_embeddings_on_a_chat_deployment_answers_400_naming_the_routes_it_serves(secret: str) -> None:
    error = refusal(secret, "embeddings")
    assert isinstance(error, openai.BadRequestError)
    assert error.body["message"].startswith(  # type: ignore[index]
        "The deployment `chat` cannot answer /v1/embeddings: it serves /v1/chat/completions, "
        "/v1/responses, /v1/completions."
    )


def test_a_route_the_deployment_cannot_serve_never_reaches_the_engine_nor_is_metered(
    secret: str, usage_queue: redis.Redis
) -> None:
    refusal(secret, "chat")
    refusal(secret, "embeddings")
    assert ScriptedEngine.received == []
    assert usage_queue.llen(QUEUE_KEY) == 0


def test_the_routes_a_deployment_serves_still_answer(secret: str) -> None:
    async def run() -> tuple[str | None, int]:
        client = openai_client(secret)
        chat = await client.chat.completions.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
        vectors = await client.embeddings.create(model="embed", input="hi")
        return chat.choices[0].message.content, len(vectors.data)

    assert asyncio.run(run()) == ("Hello from the engine", 1)


def test_bedrock_converse_on_an_embedding_deployment_is_a_validation_exception(secret: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "Hello"}]}]}
    answer = post("/model/embed/converse", body, key_headers(secret))
    assert (answer.status, answer.headers["x-amzn-errortype"]) == (400, "ValidationException")
    assert answer.json()["message"].startswith(
        "The deployment `embed` cannot answer Bedrock's Converse: it serves /v1/embeddings."
    )


def test_models_lists_each_deployment_with_the_routes_it_serves(secret: str) -> None:
    async def run() -> dict[str, Any]:
        listed = await openai_client(secret).models.list()
        return {model.id: model.model_extra["routes"] for model in listed.data}  # type: ignore[index]

    assert asyncio.run(run()) == {
        "chat": ["chat.completions", "responses", "completions"],
        "embed": ["embeddings"],
    }


def test_a_key_limited_to_other_deployments_is_told_nothing_about_the_routes_of_this_one(
    acme: Organization, secret: str
) -> None:
    limited = key_for(acme, allowed_deployments=["chat"])
    error = refusal(limited, "chat")
    assert isinstance(error, openai.NotFoundError)
    assert "serves" not in error.body["message"]  # type: ignore[index]


def test_outsider_calling_a_deployment_on_a_route_it_cannot_serve_gets_the_unknown_name_answer(
    globex: Organization, secret: str
) -> None:
    theirs = create_api_key(organization=globex, name="k", created_by=None, expires_at=None)[1]
    error = refusal(theirs, "chat")  # acme's embedding deployment's name
    assert isinstance(error, openai.NotFoundError)
    assert error.body["message"] == (  # type: ignore[index]
        "The model `embed` does not exist or you do not have access to it."
    )


def test_outsider_models_list_shows_none_of_another_organisations_deployments(
    globex: Organization, secret: str
) -> None:
    theirs = create_api_key(organization=globex, name="k", created_by=None, expires_at=None)[1]

    async def run() -> list[str]:
        return [model.id for model in (await openai_client(theirs).models.list()).data]

    assert asyncio.run(run()) == []
