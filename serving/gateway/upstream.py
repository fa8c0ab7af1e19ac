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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from django.conf import settings

from serving.local.engine_key import engine_key


class UpstreamError(Exception):
    """No replica could answer. `status` is what the gateway answers: 502, 503 or 504."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)
_outstanding: defaultdict[str, int] = defaultdict(int)


def client() -> aiohttp.ClientSession:
    """The process's client (one per event loop, which in a server is one per process): its connection
    pool is what makes proxying cheap. aiohttp rather than httpx: at concurrency 64 on two cores the
    gateway proxied 4× the requests per second with it (bench/gateway.py)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None or found.closed:
        found = _clients[loop] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                # No limit on waiting for a pooled connection: that is the gateway's own load, not a
                # replica that cannot be reached (which must not send the request to another replica).
                total=None,
                connect=None,
                sock_connect=settings.GATEWAY_CONNECT_TIMEOUT,
                sock_read=settings.GATEWAY_READ_TIMEOUT,  # silence between two reads
            ),
            # Idle connections are dropped before the engines drop them (vLLM's uvicorn keeps 5 s), so a
            # request never goes out on a connection the engine is closing.
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=4),
            auto_decompress=False,  # bytes pass through as the engine sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
    return found


def outstanding(endpoint: str) -> int:
    """Requests this process has sent to `endpoint` and not yet seen answered (streams until closed)."""
    return _outstanding.get(endpoint, 0)


def order_replicas(endpoints: tuple[str, ...]) -> list[str]:
    """Least outstanding requests first; random among equals so processes spread their load."""
    shuffled = list(endpoints)
    random.shuffle(shuffled)
    return sorted(shuffled, key=lambda endpoint: _outstanding[endpoint])


def _headers(endpoint: str, *, json_body: bool = True) -> dict[str, str]:
    """Local engines answer only the gateway (serving/local/engine_key.py); an engine started without a
    key (on Kubernetes, walled off by a NetworkPolicy instead) ignores the header. A form's content type
    (with its boundary) is aiohttp's to write."""
    typed = {"content-type": "application/json"} if json_body else {}
    return {**typed, "authorization": f"Bearer {engine_key(endpoint)}"}


@dataclass
class Exchange:
    """One proxied request: the replica that answered, its status and (for plain requests) its body."""

    endpoint: str
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    response: aiohttp.ClientResponse | None = None


async def _send(
    path: str,
    payload: dict[str, object],
    endpoints: tuple[str, ...],
    *,
    stream: bool,
    form: Callable[[], aiohttp.FormData] | None = None,
) -> Exchange:
    if not endpoints:
        raise UpstreamError(503, "The deployment has no ready replica right now; try again shortly.")
    body = json.dumps(payload).encode()
    last_error = ""
    for endpoint in order_replicas(endpoints):
        _outstanding[endpoint] += 1
        handed_over = False  # a stream's replica is released by `close`, everything else here
        try:
            data, headers = (
                (form(), _headers(endpoint, json_body=False)) if form else (body, _headers(endpoint))
            )
            response = await client().post(f"{endpoint}{path}", data=data, headers=headers)
            if stream:
                handed_over = True
                return Exchange(endpoint, response.status, response=response)
            try:
                content = await response.read()
            finally:
                response.release()
            return Exchange(endpoint, response.status, content, dict(response.headers))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            # Nothing reached the engine: another replica may take it.
            last_error = f"{type(error).__name__}: {error}"
            continue
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(504, "The model did not answer in time; try a shorter request.") from None
        except aiohttp.ClientError as error:
            raise UpstreamError(
                502, f"The model server failed mid-request ({type(error).__name__})."
            ) from None
        finally:
            if not handed_over:  # also when the caller went away (cancelled) mid-request
                _outstanding[endpoint] -= 1
    raise UpstreamError(502, f"No replica of the deployment could be reached ({last_error}).")


async def call(path: str, payload: dict[str, object], endpoints: tuple[str, ...]) -> Exchange:
    """POST and read the whole answer."""
    return await _send(path, payload, endpoints, stream=False)


async def call_form(
    path: str, fields: dict[str, str], file: tuple[str, bytes, str], endpoints: tuple[str, ...]
) -> Exchange:
    """POST a multipart form (`fields`, and `file` as (name, content, content type)) and read the whole
    answer: the audio routes."""

    def form() -> aiohttp.FormData:  # one per attempt: a form is consumed as it is sent
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, value)
        data.add_field("file", file[1], filename=file[0], content_type=file[2])
        return data

    return await _send(path, {}, endpoints, stream=False, form=form)


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
        async for piece in exchange.response.content.iter_any():
            pending += piece
            while (end := pending.find(b"\n\n")) != -1:
                yield pending[: end + 2]
                pending = pending[end + 2 :]
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamError(504, "The model stopped sending mid-answer.") from None
    except aiohttp.ClientError:
        raise UpstreamError(502, "The model server closed the stream mid-answer.") from None
    if pending.strip():
        yield pending


async def read_rest(exchange: Exchange) -> bytes:
    """The rest of a stream's answer (an engine's error body), then `close`; errors as UpstreamError."""
    assert exchange.response is not None
    try:
        return await exchange.response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamError(504, "The model did not answer in time; try a shorter request.") from None
    except aiohttp.ClientError as error:
        raise UpstreamError(502, f"The model server failed mid-answer ({type(error).__name__}).") from None
    finally:
        await close(exchange)


async def read_metrics(endpoint: str, timeout: float) -> str:
    """The engine's Prometheus text (`GET /metrics`), within `timeout` seconds; UpstreamError otherwise.
    Never on a request's path: serving/gateway/capacity.py reads it in the background."""
    try:
        async with client().get(
            f"{endpoint}/metrics", headers=_headers(endpoint), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            if response.status != 200:
                raise UpstreamError(502, f"The engine's metrics answered {response.status}.")
            return await response.text()
    except (TimeoutError, aiohttp.ClientError) as error:
        raise UpstreamError(
            502, f"The engine's metrics could not be read ({type(error).__name__})."
        ) from None


async def close_clients() -> None:
    """Close this event loop's client (at shutdown), so no connection is left half-open."""
    found = _clients.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


async def close(exchange: Exchange) -> None:
    """Release the replica and the connection; closing early cancels the request at the engine."""
    if exchange.response is not None:
        _outstanding[exchange.endpoint] -= 1
        response, exchange.response = exchange.response, None
        if response.content.at_eof():
            response.release()  # read to the end: the connection goes back to the pool
        else:
            response.close()  # mid-answer: dropping the connection stops the engine's work
