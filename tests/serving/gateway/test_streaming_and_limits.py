"""Properties of the gateway that need a controllable engine or many clients: streams pass through event
by event, limits are exact across two gateway processes, and usage reaches PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from marketplace.accounts.models import Quota
from serving.gateway.metering import flush_usage
from serving.models import Deployment, UsageRecord
from tests.serving.gateway.conftest import GATEWAY_REDIS_DB, Tenant

pytestmark = pytest.mark.slow

EVENTS = [
    f'data: {{"id": "x", "choices": [{{"index": 0, "delta": {{"content": "t{n}"}}}}]}}\n\n'.encode()
    for n in range(5)
]
USAGE = b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}\n\n'
GAP = 0.4


class SlowEngine(BaseHTTPRequestHandler):
    """A stand-in engine that streams five events GAP seconds apart, then usage and [DONE]."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for event in EVENTS:
            self.wfile.write(event)
            self.wfile.flush()
            time.sleep(GAP)
        self.wfile.write(USAGE + b"data: [DONE]\n\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_engine() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_events_arrive_as_the_engine_sends_them(gateway_url: str, tenant: Tenant, slow_engine: str) -> None:
    Deployment.objects.filter(pk=tenant.chat.pk).update(endpoints=[slow_engine])
    time.sleep(1.5)  # the gateway's cache
    arrivals: list[tuple[float, bytes]] = []
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway_url}/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {tenant.key}"},
    ) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            arrivals.append((time.monotonic(), piece))
    received = b"".join(piece for _, piece in arrivals)
    # Byte for byte what the engine sent, minus the usage chunk the client did not ask for.
    assert received == b"".join(EVENTS) + b"data: [DONE]\n\n"
    # Each content event arrived on its own, about GAP after the previous one: nothing was held back.
    content = [(t, piece) for t, piece in arrivals if b'"content"' in piece]
    assert [piece for _, piece in content] == EVENTS
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(content)]
    assert all(gap > GAP * 0.5 for gap in gaps), gaps


async def _hammer(url: str, key: str, clients: int, per_client: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:

        async def one_client() -> None:
            for _ in range(per_client):
                response = await client.post(
                    f"{url}/v1/embeddings",
                    json={"model": "minilm", "input": "hi"},
                    headers={"Authorization": f"Bearer {key}"},
                )
                statuses[response.status_code] += 1
                if response.status_code == 429:
                    assert response.headers["retry-after"]
                    assert response.headers["x-ratelimit-limit-requests"]
                    assert response.json()["error"]["code"] == "rate_limit_exceeded"

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return statuses


def test_requests_per_minute_are_exact_across_two_gateway_processes(gateway_url: str, tenant: Tenant) -> None:
    Quota.objects.filter(organization=tenant.organization).update(requests_per_minute=40)
    time.sleep(1.5)  # the gateway's cache of the key's limits
    statuses = asyncio.run(_hammer(gateway_url, tenant.key, clients=64, per_client=2))
    assert statuses == Counter({200: 40, 429: 88})


def test_usage_is_recorded_and_aggregated(gateway_url: str, tenant: Tenant, client_for) -> None:
    import redis
    from django.conf import settings

    headers = {"Authorization": f"Bearer {tenant.key}"}
    for _ in range(3):
        assert (
            httpx.post(
                f"{gateway_url}/v1/embeddings",
                json={"model": "minilm", "input": "hello"},
                headers=headers,
                timeout=30,
            ).status_code
            == 200
        )
    chat = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        headers=headers,
        timeout=60,
        json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    )
    assert chat.status_code == 200
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    deadline = time.monotonic() + 10
    while connection.llen("gw:usage") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flush_usage(connection) == 4
    records = UsageRecord.objects.filter(organization=tenant.organization)
    assert records.count() == 4
    chat_record = records.get(route="chat.completions")
    assert chat_record.completion_tokens == json.loads(chat.content)["usage"]["completion_tokens"]
    assert chat_record.deployment_id == tenant.chat.pk and chat_record.latency_ms > 0
    owner = tenant.organization.memberships.get().user
    usage = client_for(owner).get("/api/usage/", {"group_by": "deployment"}).json()["results"]
    assert {row["deployment"]: row["requests"] for row in usage} == {"minilm": 3, "tiny-chat": 1}
