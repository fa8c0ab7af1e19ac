"""Unknown API keys cost nothing: the gateway remembers them briefly, and a client address that keeps
failing to authenticate is answered 429 (in the route's API format) before any database work, while
valid keys, from other addresses or already known, keep working."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.db import connections
from django.db.backends.signals import connection_created

from marketplace.accounts import services as account_services
from marketplace.accounts.models import API_KEY_PREFIX
from serving.gateway import directory
from serving.gateway.asgi import GatewayFront
from tests.conftest import make_user

UNKNOWN_KEYS_REDIS_DB = 13
BUDGET = 10


class NoDjango:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError(f"{scope['path']} should not reach Django")


async def ask(
    front: GatewayFront, path: str, *, key: str | None, address: str, method: str = "POST"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request through the front from `address`: (status, headers, JSON body)."""
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "http.request", "body": b'{"model": "chat", "messages": []}', "more_body": False}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers,
             "client": (address, 40000)}  # fmt: skip
    await front(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    answer_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], answer_headers, json.loads(body)


def made_up_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


@pytest.fixture
def gateway_redis(settings: Any) -> Iterator[None]:
    """The budgets in a Redis database of these tests' own, emptied before and after each test."""
    url = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{UNKNOWN_KEYS_REDIS_DB}"
    settings.REDIS_URL = url
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = BUDGET
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    yield
    connection.flushdb()
    connection.close()


@pytest.fixture
def database_sessions() -> Iterator[dict[str, int]]:
    """How many database sessions are opened, and queries run in them, from any thread."""
    seen = {"sessions": 0, "queries": 0}

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen["queries"] += 1
        return execute(sql, params, many, context)

    def opened(sender: Any, connection: Any, **kwargs: Any) -> None:
        seen["sessions"] += 1
        if count not in connection.execute_wrappers:  # a thread's connection object opens many sessions
            connection.execute_wrappers.append(count)

    connection_created.connect(opened)
    yield seen
    connection_created.disconnect(opened)
    for connection in connections.all(initialized_only=True):
        if count in connection.execute_wrappers:
            connection.execute_wrappers.remove(count)


def test_two_hundred_made_up_keys_cost_at_most_the_address_budget_in_database_work(
    transactional_db: None, gateway_redis: None, database_sessions: dict[str, int]
) -> None:
    async def scenario() -> list[int]:
        front = GatewayFront(NoDjango())
        answers = [await ask(front, "/v1/chat/completions", key=made_up_key(), address="203.0.113.7")]
        answers += await asyncio.gather(
            *(
                ask(front, "/v1/chat/completions", key=made_up_key(), address="203.0.113.7")
                for _ in range(199)
            )
        )
        return [status for status, _, _ in answers]

    statuses = asyncio.run(scenario())
    assert statuses.count(401) == BUDGET and statuses.count(429) == 200 - BUDGET
    assert database_sessions["sessions"] <= BUDGET
    assert database_sessions["queries"] <= BUDGET


def test_the_same_unknown_key_from_many_addresses_is_looked_up_once(
    transactional_db: None, gateway_redis: None, database_sessions: dict[str, int]
) -> None:
    key = made_up_key()

    async def scenario() -> list[int]:
        front = GatewayFront(NoDjango())
        return [
            (await ask(front, "/v1/chat/completions", key=key, address=f"198.51.100.{n}"))[0]
            for n in range(50)
        ]

    assert asyncio.run(scenario()) == [401] * 50
    assert database_sessions["sessions"] == 1


def test_an_address_over_its_budget_gets_429_in_each_apis_format_while_a_valid_key_elsewhere_works(
    transactional_db: None, gateway_redis: None
) -> None:
    organization = account_services.create_organization(slug="keys", name="Keys", owner=make_user("kim"))
    _, valid = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )

    async def scenario() -> list[tuple[int, dict[str, str], dict[str, Any]]]:
        front = GatewayFront(NoDjango())
        for _ in range(BUDGET):
            assert (await ask(front, "/v1/chat/completions", key=made_up_key(), address="192.0.2.1"))[
                0
            ] == 401
        return [
            await ask(front, "/v1/chat/completions", key=made_up_key(), address="192.0.2.1"),
            await ask(front, "/model/chat/converse", key=made_up_key(), address="192.0.2.1"),
            await ask(front, "/v1/chat/completions", key=None, address="192.0.2.1"),
            await ask(front, "/v1/models", key=valid, address="192.0.2.2", method="GET"),
        ]

    openai, bedrock, no_key, elsewhere = asyncio.run(scenario())
    status, headers, body = openai
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert body["error"]["type"] == "rate_limit_exceeded"
    assert body["error"]["code"] == "too_many_failed_authentications"
    assert "Too many failed authentications from your address" in body["error"]["message"]
    status, headers, body = bedrock
    assert status == 429 and headers["x-amzn-errortype"] == "ThrottlingException"
    assert "valid API key" in body["message"]
    assert no_key[0] == 429
    assert elsewhere[0] == 200 and elsewhere[2]["object"] == "list"


def test_a_valid_key_looked_up_again_and_again_spends_no_budget(
    transactional_db: None, gateway_redis: None, settings: Any
) -> None:
    settings.GATEWAY_CACHE_SECONDS = 0  # every request reaches the database
    organization = account_services.create_organization(slug="keys", name="Keys", owner=make_user("kim"))
    _, valid = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )

    async def scenario() -> list[int]:
        front = GatewayFront(NoDjango())
        return [
            (await ask(front, "/v1/models", key=valid, address="192.0.2.3", method="GET"))[0]
            for _ in range(3 * BUDGET)
        ]

    assert asyncio.run(scenario()) == [200] * (3 * BUDGET)


def test_an_outsiders_failures_do_not_spend_another_address_budget(
    transactional_db: None, gateway_redis: None, settings: Any
) -> None:
    settings.GATEWAY_CACHE_SECONDS = 0
    organization = account_services.create_organization(slug="keys", name="Keys", owner=make_user("kim"))
    _, valid = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )

    async def scenario() -> tuple[list[int], int]:
        front = GatewayFront(NoDjango())
        outsider = [
            (await ask(front, "/v1/models", key=made_up_key(), address="192.0.2.66", method="GET"))[0]
            for _ in range(BUDGET + 5)
        ]
        tenant = await ask(front, "/v1/models", key=valid, address="192.0.2.4", method="GET")
        return outsider, tenant[0]

    outsider, tenant = asyncio.run(scenario())
    assert outsider == [401] * BUDGET + [429] * 5
    assert tenant == 200


def test_made_up_keys_evict_only_made_up_keys_from_the_cache(
    transactional_db: None, monkeypatch: Any
) -> None:
    organization = account_services.create_organization(slug="keys", name="Keys", owner=make_user("kim"))
    _, valid = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    monkeypatch.setattr(directory, "UNKNOWN_KEYS_REMEMBERED", 5)
    loads: list[str] = []
    real = directory._load_caller
    monkeypatch.setattr(directory, "_load_caller", lambda hashed: loads.append(hashed) or real(hashed))

    async def scenario() -> directory.Directory:
        found = directory.Directory(ttl=60)
        assert await found.caller(f"Bearer {valid}") is not None
        for _ in range(50):
            assert await found.caller(f"Bearer {made_up_key()}") is None
        assert await found.caller(f"Bearer {valid}") is not None
        return found

    found = asyncio.run(scenario())
    assert len(loads) == 51  # the valid key once, each made-up key once
    assert len(found.unknown_keys.entries) == 5


class FlakyBudget:
    """A limiter whose first budget check fails (Redis away for a moment), then counts attempts."""

    def __init__(self) -> None:
        self.taken = 0
        self.outstanding = 0
        self.most_outstanding = 0

    async def take_authentication_attempt(self, address: str, limit: int) -> tuple[str, int]:
        if self.taken == 0:
            self.taken += 1
            await asyncio.sleep(0.03)  # requests arrive and wait meanwhile
            raise redis.ConnectionError("Connection refused")
        self.taken += 1
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        return str(self.taken), 0

    async def give_back_authentication_attempt(self, address: str, entry: str) -> None:
        self.outstanding -= 1


def test_a_burst_for_a_valid_key_after_a_failed_look_up_makes_one_look_up(
    transactional_db: None, monkeypatch: Any
) -> None:
    organization = account_services.create_organization(slug="keys", name="Keys", owner=make_user("kim"))
    _, valid = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    loads: list[str] = []
    real = directory._load_caller

    def slow_load(hashed: str) -> Any:
        loads.append(hashed)
        time.sleep(0.05)
        return real(hashed)

    monkeypatch.setattr(directory, "_load_caller", slow_load)
    budget = FlakyBudget()

    async def one(found: directory.Directory, delay: float) -> str:
        await asyncio.sleep(delay)
        directory.client_address.set("192.0.2.9")
        try:
            return "ok" if await found.caller(f"Bearer {valid}") else "unknown"
        except directory.AuthenticationUnavailable:
            return "unavailable"

    async def scenario() -> list[str]:
        found = directory.Directory(ttl=60, limiter=budget)  # type: ignore[arg-type]
        return await asyncio.gather(*(one(found, 0.005 * n) for n in range(30)))

    answers = asyncio.run(scenario())
    assert answers == ["unavailable"] + ["ok"] * 29
    assert len(loads) == 1 and budget.most_outstanding == 1 and budget.outstanding == 0
