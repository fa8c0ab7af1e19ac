"""Shared fixtures. The real catalog is loaded once per test session into the test database (real
PostgreSQL); every test then runs in a transaction that is rolled back.

Every test module has three standing people: `owner` and `member` of organisation `acme`, and
`outsider`, who owns organisation `globex` and must never see or touch acme's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from learning.storage import S3Store, get_store, s3_client
from marketplace.accounts import services as account_services
from marketplace.accounts.choices import Role
from marketplace.accounts.models import Membership, Organization
from marketplace.catalog.loader import Catalog, read_catalog, write_catalog
from tests.engines import VllmArgumentParser, running_engines

User = get_user_model()


@cache
def parsed_catalog() -> Catalog:
    """The catalog's YAML, read and validated once per test session (it is loaded many times)."""
    return read_catalog()


def load_catalog() -> None:
    write_catalog(parsed_catalog())


@pytest.fixture(scope="session")
def real_engines() -> Iterator[dict[str, str]]:
    """Real vLLM engines of the two small catalog models, started once for the whole run (tests/engines.py);
    their base URLs by catalog slug."""
    with running_engines() as urls:
        yield urls


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server in a thread of this process, on a free loopback port; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(s3_server: str, settings: Any) -> Iterator[S3Store]:
    """The platform's store (get_store) as a bucket of moto's S3 server: a store a pod can reach by URL."""
    bucket = f"platform-{uuid.uuid4().hex[:8]}"
    s3_client(s3_server, "us-east-1", "testing", "testing").create_bucket(Bucket=bucket)
    settings.OBJECT_STORE_BUCKET = bucket
    settings.OBJECT_STORE_ENDPOINT_URL = s3_server
    settings.OBJECT_STORE_ACCESS_KEY_ID = settings.OBJECT_STORE_SECRET_ACCESS_KEY = "testing"
    get_store.cache_clear()
    store = get_store()
    assert isinstance(store, S3Store)
    try:
        yield store
    finally:
        for key in store.list(""):
            store.delete(key)
        get_store.cache_clear()


@pytest.fixture(scope="session")
def vllm_parser() -> Iterator[VllmArgumentParser]:
    """vLLM's own argument parser, from the engine's environment, for the whole run."""
    parser = VllmArgumentParser()
    yield parser
    parser.close()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        load_catalog()


def database_url_for_processes() -> str:
    """DATABASE_URL of the test database, for processes a test starts (workers, servers)."""
    from django.db import connection

    database = connection.settings_dict
    if database["HOST"] and database["HOST"].startswith("/"):  # a socket folder (embedded PostgreSQL)
        return f"postgres://{database['USER']}@/{database['NAME']}?host={database['HOST']}"
    return (
        f"postgres://{database['USER']}:{database['PASSWORD']}@"
        f"{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}/{database['NAME']}"
    )


def make_user(username: str, **extra: Any) -> AbstractUser:
    return User.objects.create_user(username=username, password="correct horse battery", **extra)


@pytest.fixture
def owner(db: None) -> AbstractUser:
    return make_user("olivia")


@pytest.fixture
def member(db: None) -> AbstractUser:
    return make_user("mario")


@pytest.fixture
def outsider(db: None) -> AbstractUser:
    return make_user("oscar")


@pytest.fixture
def platform_admin(db: None) -> AbstractUser:
    return make_user("pat", is_staff=True)


@pytest.fixture
def acme(owner: AbstractUser, member: AbstractUser) -> Organization:
    organization = account_services.create_organization(slug="acme", name="Acme", owner=owner)
    Membership.objects.create(organization=organization, user=member, role=Role.MEMBER)
    return organization


@pytest.fixture
def globex(outsider: AbstractUser) -> Organization:
    return account_services.create_organization(slug="globex", name="Globex", owner=outsider)


@pytest.fixture
def client_for(acme: Organization, globex: Organization) -> Callable[[AbstractUser | None], APIClient]:
    """An API client signed in as the given user (or anonymous for None), with both orgs in place."""

    def make(user: AbstractUser | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def api_key_client(
    acme: Organization, globex: Organization
) -> Callable[[Organization], tuple[APIClient, str]]:
    """An API client that authenticates with a fresh API key of the given organisation."""

    def make(organization: Organization) -> tuple[APIClient, str]:
        _, secret = account_services.create_api_key(
            organization=organization, name="test", created_by=None, expires_at=None
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client, secret

    return make


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Real hashing is slow on purpose; tests create many users and need none of that strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _sign_in_throttle_out_of_the_way(settings: Any) -> None:
    """Failed sign-ins are counted in Redis, which outlives a test and a run: without this, the wrong
    passwords of earlier tests would lock later ones out. tests/web/test_sign_in_throttle.py sets its
    own limit and uses usernames and addresses of its own."""
    settings.SIGN_IN_MAX_FAILURES = 10**6


@pytest.fixture
def transactional_catalog(transactional_db: None) -> None:
    """The catalog for tests that commit for real (threads, worker processes). pytest-django runs these
    after all rollback-isolated tests and empties every table after each, so each loads it again."""
    load_catalog()
