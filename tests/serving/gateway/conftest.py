"""Fixtures of the gateway tests: real vLLM engines (CPU), a real gateway under gunicorn with two
uvicorn workers, and a tenant whose deployments point at the engines."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from marketplace.accounts import services as account_services
from marketplace.accounts.models import ApiKey, Organization, Quota
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving.choices import Backend, DeploymentStatus
from serving.models import Deployment
from tests.conftest import database_url_for_processes, make_user
from tests.engines import (  # re-exported: the package's tests import them from here
    CHAT,
    EMBED,
    free_port,
    stop_group,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[3]
GATEWAY_REDIS_DB = 8


class SlowStreamingEngine(BaseHTTPRequestHandler):
    """A stand-in engine that streams an event of one token every 0.1 s for ten seconds (a chat delta,
    or a completion's text on /v1/completions) and never its usage chunk, and notes when the caller's
    side went away (the gateway closed the engine request)."""

    aborted_at: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
        if self.path == "/v1/completions":
            event = b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n'
        try:
            for _ in range(100):
                self.wfile.write(event)
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            SlowStreamingEngine.aborted_at.append(time.monotonic())

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def slow_streaming_engine() -> Iterator[str]:
    """The stand-in's URL while it serves; `SlowStreamingEngine.aborted_at` starts empty."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowStreamingEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    SlowStreamingEngine.aborted_at.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def wait_until_aborted(timeout: float = 10) -> float | None:
    deadline = time.monotonic() + timeout
    while not SlowStreamingEngine.aborted_at and time.monotonic() < deadline:
        time.sleep(0.1)
    return SlowStreamingEngine.aborted_at[0] if SlowStreamingEngine.aborted_at else None


@pytest.fixture(scope="package")
def engines(real_engines: dict[str, str]) -> dict[str, str]:
    """The two small catalog models served by real vLLM engines, shared with the whole run's other tests."""
    return real_engines


@pytest.fixture(scope="package")
def tls_certificate(tmp_path_factory: Any) -> Iterator[Path]:
    """A self-signed certificate for 127.0.0.1. boto3 sends a bearer token only over HTTPS, so the
    gateway under test serves HTTPS; clients trust this certificate through the usual variables."""
    folder = tmp_path_factory.mktemp("tls")
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        check=True,
        capture_output=True,
    )
    saved = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "AWS_CA_BUNDLE")}
    os.environ["SSL_CERT_FILE"] = os.environ["AWS_CA_BUNDLE"] = str(certificate)  # httpx/openai, boto3
    try:
        yield certificate
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="package")
def gateway_data_dir(tmp_path_factory: Any) -> Path:
    """The gateway processes' DATA_DIR: their object store (a router's trained predictor) is its
    `objects` folder, which a test writes through learning.storage with DATA_DIR set to it."""
    return Path(tmp_path_factory.mktemp("gateway-data"))


@pytest.fixture(scope="package")
def gateway_url(
    django_db_setup: Any,
    django_db_blocker: Any,
    tmp_path_factory: Any,
    tls_certificate: Path,
    gateway_data_dir: Path,
) -> Iterator[str]:
    """The platform under gunicorn with two uvicorn workers, on the test database: two processes, so
    limits and caches are shared only through Redis, as in production."""
    port = free_port()
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    base_redis = settings.REDIS_URL.rsplit("/", 1)[0]
    environment = {
        **os.environ,
        "DATABASE_URL": database_url_for_processes(),
        "REDIS_URL": f"{base_redis}/{GATEWAY_REDIS_DB}",
        "GATEWAY_CACHE_SECONDS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "DATA_DIR": str(gateway_data_dir),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "marketplace.asgi:application",
            "--worker-class",
            "marketplace.server.UvicornWorker",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--certfile",
            str(tls_certificate),
            "--keyfile",
            str(tls_certificate.parent / "key.pem"),
            # Clients in the tests keep connections alive; don't wait out the default 30 s for them.
            "--graceful-timeout",
            "5",
        ],
        cwd=ROOT,
        env=environment,
        start_new_session=True,
    )
    try:
        context = ssl.create_default_context(cafile=str(tls_certificate))
        wait_healthy(f"https://127.0.0.1:{port}/healthz", process, timeout=60, context=context)
        yield f"https://127.0.0.1:{port}"
    finally:
        stop_group(process)


@dataclass
class Tenant:
    organization: Organization
    key: str
    chat: Deployment
    embed: Deployment


def deploy(organization: Organization, name: str, slug: str, endpoint: str) -> Deployment:
    """A ready deployment row whose replica is the given engine (what the reconciler would record), of a
    model the organisation is subscribed to (the gateway serves no other)."""
    card = ModelCard.objects.get(slug=slug)
    subscribe(organization=organization, card=card, license_sha256=None, user=None)
    return Deployment.objects.create(
        organization=organization,
        name=name,
        model_card=card,
        instance_type=InstanceType.objects.get(slug="local-cpu"),
        backend=Backend.LOCAL,
        status=DeploymentStatus.READY,
        status_message="Ready.",
        ready_replicas=1,
        desired_replicas=1,
        endpoints=[endpoint],
    )


@pytest.fixture
def tenant(transactional_catalog: None, engines: dict[str, str]) -> Tenant:
    redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}").flushdb()
    owner = make_user("gina")
    organization = account_services.create_organization(slug="gw", name="Gateway Org", owner=owner)
    Quota.objects.filter(organization=organization).update(
        requests_per_minute=10_000, tokens_per_minute=10**7
    )
    _, key = account_services.create_api_key(
        organization=organization, name="tests", created_by=owner, expires_at=None
    )
    return Tenant(
        organization,
        key,
        deploy(organization, "tiny-chat", CHAT, engines[CHAT]),
        deploy(organization, "minilm", EMBED, engines[EMBED]),
    )


def organization_served_by(engine: str, name: str, **deployments: str) -> tuple[Organization, str]:
    """A new organisation (slug `name-…`) whose deployments (name=card slug) the one `engine` serves, and
    an API key of it."""
    organization = account_services.create_organization(
        slug=f"{name.lower()}-{uuid.uuid4().hex[:6]}", name=name, owner=None
    )
    for deployment, slug in deployments.items():
        deploy(organization, deployment, slug, engine)
    return organization, key_for(organization)


def key_for(organization: Organization, **fields: Any) -> str:
    key, secret = account_services.create_api_key(
        organization=organization, name="more", created_by=None, expires_at=None
    )
    if fields:
        ApiKey.objects.filter(pk=key.pk).update(**fields)
    return secret
