"""The invoke API's own way into the process: an ASGI front that hands `/v1/…` and `/model/…` requests
straight to their async views, and everything else (the UI, the REST API, `/metrics`) to Django.

Why: Django's ASGI handler costs the gateway more than its whole job. Per request it spools the body to
a temporary file, sends the request signals (whose receivers are synchronous, so each send hops to a
thread, and the first hop of a request starts a thread of its own), runs the middleware chain and closes
the response in a thread again. The invoke views need none of that: they authenticate by API key (no
session, no CSRF), reach the database only through the directory's cached loads, which close their own
connections, and build no URLs from the Host header.

The front keeps what the views rely on: the routes are resolved by Django's own resolver from
`serving.gateway.urls` (one table for both ways in), a body over GATEWAY_MAX_BODY_BYTES is refused as
Django would (`RequestDataTooBig`, which the views answer with a 413 in their API's format; the rest of
such a body is not read), a client that goes away cancels the view and a stream's clean-up runs (the
engine request closed, the call metered), and an unexpected error is logged as Django logs one and
answered with a 500 in the API's format. The front also tells the directory the client's address (for
its failed-authentication budget) and answers an address over that budget with a 429 in the API's
format (503 when Redis cannot count the attempt); at start-up it pushes the usage records a stopped
process left in the spool (serving/gateway/metering.py).

What these routes do without, by design: Django's middleware (ALLOWED_HOSTS, SECURE_SSL_REDIRECT and
the security headers of SecurityMiddleware). API clients follow no redirects and render no pages; put
TLS in front of the gateway (the chart's Ingress) and have it check host names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, QueryDict, StreamingHttpResponse
from django.urls import Resolver404, URLResolver, get_resolver

from serving.gateway import directory, upstream

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PREFIXES = ("/v1/", "/model/", "/guardrail/")  # the invoke API and ApplyGuardrail
log = logging.getLogger("django.request")  # where Django logs a view's unexpected error


class _Disconnected(Exception):
    pass


class GatewayRequest(HttpRequest):
    """An HttpRequest made from the ASGI scope and the body already read; `body` raises
    RequestDataTooBig, as Django's does, when the client sent more than the limit."""

    def __init__(self, scope: Scope, body: bytes | None) -> None:
        super().__init__()
        self.method = scope["method"]
        self.path = self.path_info = scope["path"]
        query = scope.get("query_string", b"").decode("latin1")
        self.META = {"REQUEST_METHOD": self.method, "QUERY_STRING": query}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin1").upper().replace("-", "_")
            key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else f"HTTP_{name}"
            value = raw_value.decode("latin1")
            self.META[key] = f"{self.META[key]},{value}" if key in self.META else value
        self.GET = QueryDict(self.META["QUERY_STRING"])
        self._too_big = body is None
        if body is not None:
            self._body = body

    @property
    def body(self) -> bytes:
        if self._too_big:
            raise RequestDataTooBig("Request body exceeded GATEWAY_MAX_BODY_BYTES.")
        return self._body


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to be over `limit`: by its declared length before
    reading anything, else once what arrived passes the limit (the rest is never read)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_response(response: HttpResponseBase, send: Send) -> None:
    headers = [
        (name.encode("latin1"), str(value).encode("latin1", "replace")) for name, value in response.items()
    ]
    streaming = isinstance(response, StreamingHttpResponse)
    if not streaming and not response.has_header("Content-Length"):
        headers.append((b"content-length", str(len(response.content)).encode()))  # type: ignore[attr-defined]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if streaming:
        async for chunk in response:  # type: ignore[attr-defined]
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.body", "body": response.content, "more_body": False})  # type: ignore[attr-defined]


def _server_error(path: str) -> HttpResponseBase:
    from serving.gateway.errors import bedrock_error, openai_error

    message = "The gateway failed to handle this request; it has been logged. Retry shortly."
    return openai_error(500, message) if path.startswith("/v1/") else bedrock_error(500, message)


def _throttled(path: str, refusal: directory.AuthenticationThrottled) -> HttpResponseBase:
    from serving.gateway.errors import bedrock_error, openai_error

    headers = {"Retry-After": str(refusal.retry_after_seconds)}
    if path.startswith("/v1/"):
        return openai_error(429, str(refusal), code="too_many_failed_authentications", headers=headers)
    return bedrock_error(429, str(refusal), headers=headers)


def _unavailable(path: str, message: str) -> HttpResponseBase:
    from serving.gateway.errors import bedrock_error, openai_error

    return openai_error(503, message) if path.startswith("/v1/") else bedrock_error(503, message)


async def _replay_spooled_usage() -> None:
    """Push what stopped processes left in the usage spool (nothing to do, and no Redis touched, when
    the spool folder holds no file); retried in the background while Redis is away."""
    from serving.gateway import metering, pipeline

    try:
        left = metering.process_spool().has_orphans()
    except OSError as error:  # an unreadable spool folder must not stop the process from serving
        log.error("cannot look for spooled usage records: %s", error)
        return
    if left:
        pipeline.services().queue.resume()


def _client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class GatewayFront:
    """Serves the invoke routes itself; passes every other request to `django`."""

    def __init__(self, django: Any, urlconf: str = "serving.gateway.urls") -> None:
        self.django = django
        self.resolver: URLResolver = get_resolver(urlconf)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """At start-up, usage records spooled by stopped processes start on their way to Redis; at
        shutdown the metering still in flight is written first."""
        from serving.gateway import pipeline

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _replay_spooled_usage()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await pipeline.drain()
                await upstream.close_clients()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _route(self, scope: Scope) -> tuple[Callable[..., Any], dict[str, Any]] | None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIXES):
            return None
        try:
            match = self.resolver.resolve(scope["path"])
        except Resolver404:
            return None
        if not asyncio.iscoroutinefunction(match.func):
            return None
        return match.func, match.kwargs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        route = self._route(scope)
        if route is None:
            await self.django(scope, receive, send)
            return
        view, kwargs = route
        try:
            body = await _read_body(scope, receive, settings.GATEWAY_MAX_BODY_BYTES)
        except _Disconnected:
            return
        request = GatewayRequest(scope, body)
        directory.client_address.set(_client_address(scope))
        started = False

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        async def respond() -> None:
            response = None
            try:
                response = await view(request, **kwargs)
                await _send_response(response, tracked_send)
            except directory.AuthenticationThrottled as refusal:
                await _send_response(_throttled(scope["path"], refusal), tracked_send)
            except directory.AuthenticationUnavailable:
                message = "The gateway cannot check rate limits right now; retry shortly."
                await _send_response(_unavailable(scope["path"], message), tracked_send)
            except directory.GuardrailsUnavailable:
                message = (
                    "The gateway cannot read your organisation's guardrails right now, so nothing was sent "
                    "to the model; retry shortly."
                )
                await _send_response(_unavailable(scope["path"], message), tracked_send)
            except Exception:
                log.exception("Internal Server Error: %s", scope["path"])
                if not started:
                    await _send_response(_server_error(scope["path"]), send)
            finally:
                close_relay = getattr(response, "close_relay", None)
                if close_relay is not None:  # a stream: close the engine request and meter it, once
                    await close_relay()

        # As Django's handler does: a client that leaves cancels the view (and with it the engine call).
        answer = asyncio.ensure_future(respond())
        watch = asyncio.ensure_future(_until_disconnect(receive))
        await asyncio.wait((answer, watch), return_when=asyncio.FIRST_COMPLETED)
        for task in (watch, answer):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
