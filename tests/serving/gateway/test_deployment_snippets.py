"""The deployment page's code snippets run exactly as pasted, after the one key step the API keys page
shows (`export MARKETPLACE_API_KEY=…`): curl, the openai client and boto3, against a real deployment (the
package's real SmolLM2 and MiniLM engines behind the platform under gunicorn), over HTTPS and over plain
HTTP, where boto3 refuses to send a bearer token and the page says what works instead.

The pages are rendered as a signed-in owner sees them; each snippet is run by bash (and Python for the
client libraries) in a fresh environment that has no key until the export line sets it."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from tests.conftest import database_url_for_processes
from tests.serving.gateway.conftest import GATEWAY_REDIS_DB, ROOT, Tenant, free_port, stop_group, wait_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain_http_url(django_db_setup: Any, tls_certificate: Path) -> Iterator[str]:
    """The platform under gunicorn without TLS, as on a laptop: one uvicorn worker is enough here."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url_for_processes(),
        "REDIS_URL": settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}",
        "GATEWAY_CACHE_SECONDS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "marketplace.asgi:application", "--worker-class",
         "marketplace.server.UvicornWorker", "--workers", "1", "--bind", f"127.0.0.1:{port}",
         "--graceful-timeout", "5"],
        cwd=ROOT, env=environment, start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(process)


def export_line(owner: Client) -> str:
    """Create a key on the API keys page and read the export line it shows beside the secret."""
    page = owner.post("/api-keys/new/", {"name": "laptop"}, follow=True).text
    found = re.search(r'<code id="export-key">([^<]*)</code>', page)
    assert found, "the key page shows no export line"
    line = html.unescape(found.group(1))
    assert re.fullmatch(r"export MARKETPLACE_API_KEY=mk-[A-Za-z0-9_-]+", line), line
    return line


def snippets(owner: Client, deployment_id: int) -> dict[str, str]:
    page = owner.get(f"/deployments/{deployment_id}/").text
    found = re.findall(
        r'id="snippet-(\w+)"[^>]*>(?:<p\b[^>]*>.*?</p>)?<pre><code>(.*?)</code></pre>', page, re.S
    )
    return {name: html.unescape(code) for name, code in found}


def run(export: str, snippet: str, python: bool) -> str:
    """Bash runs the export line, then the snippet as pasted (into Python for the client libraries)."""
    script = (
        f"{export}\n{sys.executable} - <<'SNIPPET'\n{snippet}\nSNIPPET\n"
        if python
        else f"{export}\n{snippet}\n"
    )
    environment = {name: value for name, value in os.environ.items() if name != "MARKETPLACE_API_KEY"}
    environment["CURL_CA_BUNDLE"] = os.environ.get("SSL_CERT_FILE", "")  # the test certificate, as a CA
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, env=environment
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def owner(tenant: Tenant) -> Client:
    client = Client()
    client.force_login(User.objects.get(username="gina"))
    return client


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_chat_snippets_run_as_pasted(
    scheme: str, tenant: Tenant, owner: Client, gateway_url: str, plain_http_url: str, settings: Any
) -> None:
    settings.PUBLIC_URL = gateway_url if scheme == "https" else plain_http_url
    export = export_line(owner)
    shown = snippets(owner, tenant.chat.pk)
    assert set(shown) == {"curl", "openai", "boto3"}
    assert all(snippet.isascii() for snippet in shown.values())  # nothing a terminal mangles
    assert '"max_tokens": 100' in shown["curl"]
    assert '"content"' in run(export, shown["curl"], python=False)
    assert run(export, shown["openai"], python=True).strip()
    assert run(export, shown["boto3"], python=True).strip()


def test_embedding_snippets_run_as_pasted(
    tenant: Tenant, owner: Client, plain_http_url: str, settings: Any
) -> None:
    settings.PUBLIC_URL = plain_http_url
    export = export_line(owner)
    shown = snippets(owner, tenant.embed.pk)
    assert set(shown) == {"curl", "openai"}
    assert '"embedding"' in run(export, shown["curl"], python=False)
    assert run(export, shown["openai"], python=True).strip() == "384"


def test_a_snippet_run_without_the_key_step_is_told_no_key_was_given(
    tenant: Tenant, owner: Client, plain_http_url: str, settings: Any
) -> None:
    settings.PUBLIC_URL = plain_http_url
    curl = snippets(owner, tenant.chat.pk)["curl"]
    assert "No API key was given" in run("true", curl, python=False)
