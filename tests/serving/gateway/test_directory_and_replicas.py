"""The gateway's directory answers from its cache in steady state (no database work per request), and
the upstream client moves to another replica when one refuses connections (nothing was sent to it)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from marketplace.accounts import services as account_services
from serving.gateway import directory, upstream
from tests.conftest import make_user
from tests.serving.gateway.conftest import CHAT, deploy


class Answers(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def live_replica() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def refusing_replica() -> str:
    """A port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_a_replica_that_refuses_connections_is_passed_over(
    live_replica: str, refusing_replica: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(upstream.random, "shuffle", lambda endpoints: None)  # the refusing one first

    async def ask() -> upstream.Exchange:
        return await upstream.call("/v1/chat/completions", {"messages": []}, (refusing_replica, live_replica))

    exchange = asyncio.run(ask())
    assert (exchange.endpoint, exchange.status) == (live_replica, 200)
    assert json.loads(exchange.body)["choices"][0]["message"]["content"] == "hi"
    assert upstream._outstanding[refusing_replica] == 0 and upstream._outstanding[live_replica] == 0


def test_no_replica_reachable_is_a_502_that_says_so(refusing_replica: str) -> None:
    with pytest.raises(upstream.UpstreamError) as error:
        asyncio.run(upstream.call("/v1/chat/completions", {}, (refusing_replica,)))
    assert (
        error.value.status == 502 and "No replica of the deployment could be reached" in error.value.message
    )


def test_steady_state_costs_no_database_work(transactional_catalog: None, monkeypatch: Any) -> None:
    organization = account_services.create_organization(slug="cache", name="Cache", owner=make_user("cy"))
    deploy(organization, "tiny-chat", CHAT, "http://127.0.0.1:9")
    _, key = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    loads: list[str] = []
    for name in ("_load_caller", "_load_targets"):
        real = getattr(directory, name)
        monkeypatch.setattr(
            directory, name, lambda argument, real=real, name=name: loads.append(name) or real(argument)
        )

    async def many() -> list[Any]:
        found = directory.Directory(ttl=60)
        answers = []
        for _ in range(200):
            caller = await found.caller(f"Bearer {key}")
            answers.append(await found.target(caller, "tiny-chat"))
        return answers

    answers = asyncio.run(many())
    assert all(target is not None and target.name == "tiny-chat" for target in answers)
    assert loads == ["_load_caller", "_load_targets"]  # once each for 200 requests
