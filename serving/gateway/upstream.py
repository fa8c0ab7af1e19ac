"""The one module that speaks HTTP to engines.

One pooled async client per process, with explicit timeouts. A replica is picked by least outstanding
requests (ties broken at random); a request is retried on another replica only when the connection
failed before anything was sent, so a request is never executed twice. Streams are passed through
event by event, as the engine sends them.
"""

from __future__ import annotations

import asyncio
import json
import random
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from django.conf import settings


class UpstreamError(Exception):
    """No replica could answer. `status` is what the gateway answers: 502, 503 or 504."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_outstanding: defaultdict[str, int] = defaultdict(int)


def client() -> httpx.AsyncClient:
    """The process's client (one per event loop, which in a server is one per process): its connection
    pool is what makes proxying cheap."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = _clients[loop] = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.GATEWAY_CONNECT_TIMEOUT,
                read=settings.GATEWAY_READ_TIMEOUT,
                write=settings.GATEWAY_READ_TIMEOUT,
                pool=settings.GATEWAY_CONNECT_TIMEOUT,
            ),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
    return found


def order_replicas(endpoints: tuple[str, ...]) -> list[str]:
    """Least outstanding requests first; random among equals so processes spread their load."""
    shuffled = list(endpoints)
    random.shuffle(shuffled)
    return sorted(shuffled, key=lambda endpoint: _outstanding[endpoint])


@dataclass
class Exchange:
    """One proxied request: the replica that answered, its status and (for plain requests) its body."""

    endpoint: str
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    response: httpx.Response | None = None


async def _send(
    path: str, payload: dict[str, object], endpoints: tuple[str, ...], *, stream: bool
) -> Exchange:
    if not endpoints:
        raise UpstreamError(503, "The deployment has no ready replica right now; try again shortly.")
    body = json.dumps(payload).encode()
    last_error = ""
    for endpoint in order_replicas(endpoints):
        request = client().build_request(
            "POST", f"{endpoint}{path}", content=body, headers={"content-type": "application/json"}
        )
        _outstanding[endpoint] += 1
        try:
            response = await client().send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # Nothing reached the engine: another replica may take it.
            _outstanding[endpoint] -= 1
            last_error = f"{type(error).__name__}: {error}"
            continue
        except httpx.TimeoutException:
            _outstanding[endpoint] -= 1
            raise UpstreamError(504, "The model did not answer in time; try a shorter request.") from None
        except httpx.HTTPError as error:
            _outstanding[endpoint] -= 1
            raise UpstreamError(
                502, f"The model server failed mid-request ({type(error).__name__})."
            ) from None
        if not stream:
            _outstanding[endpoint] -= 1
            return Exchange(endpoint, response.status_code, response.content, dict(response.headers))
        return Exchange(endpoint, response.status_code, response=response)
    raise UpstreamError(502, f"No replica of the deployment could be reached ({last_error}).")


async def call(path: str, payload: dict[str, object], endpoints: tuple[str, ...]) -> Exchange:
    """POST and read the whole answer."""
    return await _send(path, payload, endpoints, stream=False)


async def open_stream(path: str, payload: dict[str, object], endpoints: tuple[str, ...]) -> Exchange:
    """POST and return with the answer's headers; read it with `events`, then `close`."""
    return await _send(path, payload, endpoints, stream=True)


async def events(exchange: Exchange) -> AsyncIterator[bytes]:
    """Server-sent events of the answer, each whole (`data: …\\n\\n`), as soon as each has arrived.

    Network reads may split or join events; each event is yielded the moment its blank line arrives,
    so nothing waits for more than the event itself."""
    assert exchange.response is not None
    pending = b""
    try:
        async for piece in exchange.response.aiter_raw():
            pending += piece
            while (end := pending.find(b"\n\n")) != -1:
                yield pending[: end + 2]
                pending = pending[end + 2 :]
    except httpx.TimeoutException:
        raise UpstreamError(504, "The model stopped sending mid-answer.") from None
    except httpx.HTTPError:
        raise UpstreamError(502, "The model server closed the stream mid-answer.") from None
    if pending.strip():
        yield pending


async def close(exchange: Exchange) -> None:
    """Release the replica and the connection; closing early cancels the request at the engine."""
    if exchange.response is not None:
        _outstanding[exchange.endpoint] -= 1
        await exchange.response.aclose()
        exchange.response = None
