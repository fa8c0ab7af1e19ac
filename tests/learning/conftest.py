"""Fixtures of the learning tests: a bucket on the real S3-compatible server (moto's, over HTTP on a
loopback port; tests/conftest.py), a folder store, Redis, and invocation records as the gateway builds
them."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from learning.storage import FolderStore, S3Store, get_store, s3_client
from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving.choices import DeploymentStatus
from serving.models import Deployment
from tests.web.conftest import browser_for  # noqa: F401 (the learning pages are browsed as the web UI's are)

BUCKET = "marketplace-test"


@pytest.fixture
def s3_store(s3_server: str) -> Iterator[S3Store]:
    """A fresh bucket on the S3 server, emptied and removed after the test."""
    client = s3_client(s3_server, "us-east-1", "testing", "testing")
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket)
    try:
        yield store
    finally:
        for key in store.list(""):
            store.delete(key)
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def folder_store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "objects")


@pytest.fixture
def configured_store(settings: Any, tmp_path: Path) -> Iterator[FolderStore]:
    """The store the tasks and views use (`get_store()`), as a folder of this test."""
    settings.OBJECT_STORE_BUCKET = ""
    settings.DATA_DIR = str(tmp_path)
    get_store.cache_clear()
    store = get_store()
    assert isinstance(store, FolderStore)
    try:
        yield store
    finally:
        get_store.cache_clear()


@pytest.fixture
def redis_connection() -> Iterator[redis.Redis]:
    """The test Redis, with the invocation log's keys removed before and after."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    keys = ("gw:logs", "gw:logs:overflow", "gw:logs:dead")
    connection.delete(*keys)
    try:
        yield connection
    finally:
        connection.delete(*keys)
        connection.close()


@pytest.fixture
def make_record() -> Callable[..., dict[str, Any]]:
    """An invocation record as the gateway hands it to `capture` (see learning.models for the fields)."""

    def make(organization_id: int, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "organization_id": organization_id,
            "key_prefix": "mk-abcdefgh",
            "deployment_id": None,
            "deployment": "chat",
            "route": "openai.chat",
            "request": {
                "model": "chat",
                "messages": [{"role": "user", "content": "Reach me at ann@example.com about my order"}],
            },
            "answer": {"choices": [{"message": {"role": "assistant", "content": "Done."}}]},
            "tokens": {"prompt": 12, "completion": 3},
            "latency_ms": 140,
            "time_to_first_token_ms": None,
            "status": 200,
        }
        record.update(fields)
        return record

    return make


def make_deployment(organization: Organization, name: str = "chat") -> Deployment:
    """A ready deployment of any catalog model (the log cares about its name and id only)."""
    return Deployment.objects.create(
        organization=organization,
        name=name,
        model_card=ModelCard.objects.order_by("pk").first(),
        instance_type=InstanceType.objects.order_by("pk").first(),
        backend="kubernetes",
        status=DeploymentStatus.READY,
        status_message="1 of 1 replicas ready.",
    )
