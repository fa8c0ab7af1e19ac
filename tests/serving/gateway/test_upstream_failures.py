"""What a caller sees when a replica hangs, and what the engine sees when a caller goes away."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from marketplace.accounts import services as account_services
from serving.models import Deployment
from tests.conftest import make_user
from tests.serving.gateway.conftest import CHAT, Tenant, deploy, slow_streaming_engine, wait_until_aborted
from tests.serving.gateway.in_process import key_headers, post

pytestmark = pytest.mark.slow


@pytest.fixture
def hung_replica() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_hung_replica_gives_a_504_in_time_not_a_hang(
    transactional_catalog: None, settings: Any, hung_replica: str
) -> None:
    settings.GATEWAY_READ_TIMEOUT = 1
    settings.GATEWAY_CACHE_SECONDS = 0
    organization = account_services.create_organization(slug="hang", name="Hang", owner=make_user("hal"))
    deploy(organization, "stuck", CHAT, hung_replica)
    _, key = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )

    async def ask() -> Any:
        try:
            return await AsyncClient().post(
                "/v1/chat/completions",
                {"model": "stuck", "messages": [{"role": "user", "content": "hi"}]},
                content_type="application/json",
                headers={"Authorization": f"Bearer {key}"},
            )
        finally:
            # The views' database work ran in asgiref's worker thread; close its connection there.
            await sync_to_async(connections.close_all)()

    started = time.monotonic()
    response = asyncio.run(ask())
    assert response.status_code == 504
    assert "did not answer in time" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10


def test_a_caller_that_disconnects_cancels_the_engine_request(gateway_url: str, tenant: Tenant) -> None:
    with slow_streaming_engine() as engine:
        Deployment.objects.filter(pk=tenant.chat.pk).update(endpoints=[engine])
        time.sleep(1.5)  # the gateway's cache
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream(
            "POST",
            f"{gateway_url}/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {tenant.key}"},
        ) as response:
            assert response.status_code == 200
            next(response.iter_raw())  # the first event arrived; now the caller goes away
        left = time.monotonic()
        aborted = wait_until_aborted()
        assert aborted is not None, "the engine kept streaming to nobody"
        assert aborted - left < 5


def test_a_gateway_only_process_serves_only_the_invoke_routes() -> None:
    import subprocess
    import sys

    script = (
        "import django; django.setup(); from django.urls import resolve, Resolver404\n"
        "resolve('/v1/chat/completions'); resolve('/model/x/converse'); resolve('/healthz')\n"
        "try:\n    resolve('/api/models/')\nexcept Resolver404:\n    print('no api')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **__import__("os").environ,
            "GATEWAY_ONLY": "True",
            "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no api"


def test_when_redis_is_down_callers_get_a_503_in_json_not_a_crash(
    transactional_catalog: None, settings: Any
) -> None:
    settings.GATEWAY_CACHE_SECONDS = 0
    organization = account_services.create_organization(
        slug="nored", name="No Redis", owner=make_user("nora")
    )
    deploy(organization, "chat", CHAT, "http://127.0.0.1:9")
    _, key = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    async def ask() -> Any:
        try:
            return await AsyncClient().post(
                "/v1/chat/completions",
                {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                content_type="application/json",
                headers={"Authorization": f"Bearer {key}"},
            )
        finally:
            await sync_to_async(connections.close_all)()

    response = asyncio.run(ask())
    assert response.status_code == 503
    assert "cannot check rate limits" in response.json()["error"]["message"]


class GarbledEngine(BaseHTTPRequestHandler):
    """Answers every request 200 with a body that is not JSON."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "9")
        self.end_headers()
        self.wfile.write(b"not json!")

    def log_message(self, *args: object) -> None:
        pass


def test_an_engine_answer_that_is_not_json_is_a_model_error_not_a_crash(transactional_catalog: None) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), GarbledEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        organization = account_services.create_organization(slug="garble", name="Garble", owner=None)
        deploy(organization, "garbled", CHAT, f"http://127.0.0.1:{server.server_address[1]}")
        _, secret = account_services.create_api_key(
            organization=organization, name="k", created_by=None, expires_at=None
        )
        body = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
        answer = post("/model/garbled/converse", body, key_headers(secret))
    finally:
        server.shutdown()
        server.server_close()
    assert (answer.status, answer.headers["x-amzn-errortype"]) == (424, "ModelErrorException")
    assert answer.json()["message"] == "The model's answer could not be read."
