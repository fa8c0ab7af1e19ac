"""Who may read /metrics: it names every tenant's deployments, their ids and their token totals, so it
is served to Prometheus only, never to the public.

- With METRICS_TOKEN set (or METRICS_TOKEN_FILE, a mounted Secret), a scrape must send
  `Authorization: Bearer <METRICS_TOKEN>`; anything else is answered 401, from any address.
- Without it, only loopback callers are answered (a Prometheus, or a person with curl, on the same
  machine as `run.py`), and only when the request carries no forwarding header: a reverse proxy on the
  same machine connects from loopback on behalf of someone else. Everyone else gets 403 with a sentence
  saying to set METRICS_TOKEN. The chart always sets a token when its ServiceMonitors are on.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse

FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # empty, a Unix socket path, garbage
        return False


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may read the metrics; otherwise the answer that says why not."""
    expected: str = settings.METRICS_TOKEN
    if expected:
        given = bearer_token(request.headers.get("Authorization", ""))
        if given is not None and hmac.compare_digest(given.encode(), expected.encode()):
            return None
        answer = HttpResponse(
            "Metrics need the bearer token set in METRICS_TOKEN: send Authorization: Bearer <token>.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        answer["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return answer
    forwarded = any(request.META.get(header) for header in FORWARDING_HEADERS)
    if is_loopback(request.META.get("REMOTE_ADDR", "")) and not forwarded:
        return None
    return HttpResponse(
        "Metrics are served only to callers on this machine while METRICS_TOKEN is not set: set "
        "METRICS_TOKEN and give Prometheus the token as a bearer token.\n",
        status=403,
        content_type="text/plain; charset=utf-8",
    )
