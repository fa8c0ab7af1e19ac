"""/metrics names every tenant's deployments, ids and token totals: it is served to Prometheus only.
With METRICS_TOKEN set, a scrape needs it as a bearer token; without it, only loopback callers that no
proxy relays are answered. A signed-in person or an API key is no substitute."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from marketplace.accounts.models import Organization
from serving.gateway import metrics

TOKEN = "scrape-token-0123456789abcdef"


@pytest.fixture
def counted() -> None:
    """A request of some tenant's deployment, counted, so the metrics have something to leak."""
    metrics.observe(4242, "acme-secret-project", "chat", 200, 0.1, None, 10, 5)


@pytest.fixture
def token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def get(address: str = "127.0.0.1", **headers: str) -> Any:
    return Client().get("/metrics", REMOTE_ADDR=address, **headers)


# Without a token: loopback only.


@pytest.mark.usefixtures("counted")
def test_without_a_token_a_caller_on_this_machine_reads_the_metrics(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    for address in ("127.0.0.1", "::1"):
        answer = get(address)
        assert answer.status_code == 200, address
        assert b'deployment="acme-secret-project"' in answer.content


@pytest.mark.usefixtures("counted")
def test_without_a_token_anyone_else_is_refused_with_what_to_do(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    answer = get("203.0.113.9")
    assert answer.status_code == 403
    assert b"set METRICS_TOKEN" in answer.content
    assert b"acme-secret-project" not in answer.content


@pytest.mark.usefixtures("counted")
@pytest.mark.parametrize(
    "header",
    ["HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"],
    ids=["xff", "forwarded", "real-ip"],
)
def test_without_a_token_a_proxy_on_this_machine_relaying_someone_else_is_refused(
    settings: Any, header: str
) -> None:
    settings.METRICS_TOKEN = ""
    answer = get("127.0.0.1", **{header: "203.0.113.9"})
    assert answer.status_code == 403
    assert b"acme-secret-project" not in answer.content


# With a token: the token, from anywhere, and nothing else.


@pytest.mark.usefixtures("counted")
def test_with_a_token_prometheus_reads_the_metrics_from_anywhere(token: str) -> None:
    answer = get("10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 200
    assert b'deployment="acme-secret-project"' in answer.content


@pytest.mark.usefixtures("counted")
@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"],
)
def test_with_a_token_a_missing_or_wrong_one_is_refused_even_on_this_machine(
    token: str, authorization: str
) -> None:
    answer = get("127.0.0.1", HTTP_AUTHORIZATION=authorization) if authorization else get("127.0.0.1")
    assert answer.status_code == 401
    assert answer["WWW-Authenticate"].startswith("Bearer")
    assert b"acme-secret-project" not in answer.content


@pytest.mark.usefixtures("counted")
def test_an_outsider_signed_in_or_with_an_api_key_is_no_prometheus(
    token: str, outsider: AbstractUser, api_key_client: Any, globex: Organization
) -> None:
    browser = Client()
    browser.force_login(outsider)
    assert browser.get("/metrics", REMOTE_ADDR="198.51.100.4").status_code == 401
    _, key = api_key_client(globex)
    assert get("198.51.100.4", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


def test_a_short_metrics_token_stops_start_up() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "marketplace.settings", "METRICS_TOKEN": "short"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "METRICS_TOKEN must be at least 24 characters" in result.stderr
