"""The local backend end to end, for real: a Celery worker (real Redis broker) provisions deployments,
the engine supervisor runs real vLLM engines (CPU), each on a core of its own, and the reconciler moves
them to READY. One is a catalog model the organisation subscribed to (MiniLM embeddings); the other is
the organisation's own custom model: the SmolLM2 weights `make engine` prepares, uploaded to an
S3-compatible store (moto's server, over HTTP), registered through the REST API from its config.json and
safetensors header read there, copied to this machine by the worker while the page shows how far it got,
and deployed without a license to accept. The
engines answer a chat completion and embeddings to the gateway's key, and 401 without it; on a machine
of two cores a third engine waits for a core, and starts once one is freed; the chat model scales to two
replicas and back; deleting leaves no engine process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from learning.storage import s3_client
from marketplace.accounts import services as account_services
from marketplace.catalog.models import ModelCard
from marketplace.celery import app
from marketplace.subscriptions.services import subscribe
from serving import tasks
from serving.backends import get_backend
from serving.gateway import upstream
from serving.local import engine_env
from serving.local.engine_key import engine_key
from serving.local.supervisor import OWNER_VARIABLE
from serving.models import Deployment
from tests.conftest import make_user

pytestmark = pytest.mark.slow

CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
REDIS_DB = 7  # the supervisor's state, apart from anything else using the server


def engine_prepared() -> bool:
    directory = engine_env.engine_dir()
    return engine_env.engine_python(directory).exists() and all(
        engine_env.model_path(directory, slug) for slug in (CHAT, EMBED)
    )


if not engine_prepared():
    if os.environ.get("CI"):
        raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
    pytest.skip("the local engine is not prepared: python3 run.py engine", allow_module_level=True)


def engine_processes(data_dir: Path) -> list[int]:
    """Engine processes this test's supervisor started (it marks them with its folder)."""
    marker = f"{OWNER_VARIABLE}={data_dir / 'engines'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks.reconcile.delay()  # what beat does every few seconds
        if condition():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def post(endpoint: str, path: str, body: dict[str, Any], *, key: str | None = None) -> Any:
    """POST to an engine directly, with the key only the gateway derives unless another is given."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key or engine_key(endpoint)}"}
    request = urllib.request.Request(f"{endpoint}{path}", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def refused_without_the_key(endpoint: str) -> list[int]:
    """The status an engine answers to a call around the gateway: no key, then a made-up one."""
    statuses = []
    for headers in ({}, {"Authorization": "Bearer not-the-engine-key"}):
        request = urllib.request.Request(f"{endpoint}/v1/models", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                statuses.append(answer.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
    return statuses


def through_the_gateways_client(endpoint: str, body: dict[str, Any]) -> Any:
    async def call() -> upstream.Exchange:
        try:
            return await upstream.call("/v1/chat/completions", body, (endpoint,))
        finally:
            await upstream.close_clients()

    exchange = asyncio.run(call())
    assert exchange.status == 200, exchange.body
    return json.loads(exchange.body)


@pytest.fixture
def local_platform(transactional_catalog: None, settings: Any, tmp_path: Path) -> Iterator[Path]:
    base_url = settings.REDIS_URL.rsplit("/", 1)[0]
    settings.SERVING_BACKEND = "local"
    settings.REDIS_URL = f"{base_url}/{REDIS_DB}"
    settings.DATA_DIR = str(tmp_path)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    get_backend.cache_clear()
    environment = {**os.environ, "REDIS_URL": settings.REDIS_URL, "DATA_DIR": str(tmp_path)}
    # The supervisor sees two cores, as on the smallest machine this runs on, so a third engine must wait.
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "django", "run_engines"],
        env=environment,
        preexec_fn=lambda: os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2]),
    )
    # A real Celery worker in this process, on the real Redis broker, using the test database.
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30):
        try:
            yield tmp_path
        finally:
            supervisor.terminate()
            supervisor.wait(timeout=30)
            get_backend.cache_clear()


def test_deploy_serve_scale_and_delete_on_this_machine(
    local_platform: Path, client_for: Any, settings: Any, s3_server: str
) -> None:
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = [s3_server]
    store = s3_client(s3_server, "us-east-1", "AKIDSMOL", "smol-secret")
    store.create_bucket(Bucket="weights")
    for path in sorted((engine_env.engine_dir() / "models" / CHAT).iterdir()):
        store.upload_file(str(path), "weights", f"smollm2/{path.name}")
    owner = make_user("ada")
    organization = account_services.create_organization(slug="lab", name="Lab", owner=owner)
    subscribe(
        organization=organization, card=ModelCard.objects.get(slug=EMBED), license_sha256=None, user=owner
    )
    client = client_for(owner)

    registered = client.post(
        "/api/custom-models/",
        {"name": "smol", "source": "store", "uri": "s3://weights/smollm2", "endpoint_url": s3_server,
         "access_key_id": "AKIDSMOL", "secret_access_key": "smol-secret"},
        format="json",
    )  # fmt: skip
    assert registered.status_code == 201, registered.content
    assert (registered.json()["architecture"], registered.json()["context_length"]) == (
        "LlamaForCausalLM",
        8192,
    )
    chat = client.post(
        "/api/deployments/",
        {
            "name": "tiny-chat",
            "model": registered.json()["slug"],
            "instance_type": "local-cpu",
            "engine_options": {"dtype": "float32"},
        },
        format="json",
    )
    assert chat.status_code == 201, chat.content  # no subscription asked for one's own model
    embed = client.post(
        "/api/deployments/", {"name": "minilm", "model": EMBED, "instance_type": "local-cpu"}, format="json"
    )
    assert embed.status_code == 201, embed.content
    chat_id, embed_id = chat.json()["id"], embed.json()["id"]

    def ready(deployment_id: int, replicas: int = 1) -> Callable[[], bool]:
        def check() -> bool:
            row = Deployment.objects.get(pk=deployment_id)
            assert row.status != "failed", row.status_message
            return row.status == "ready" and row.ready_replicas == replicas and len(row.endpoints) == replicas

        return check

    wait_for(ready(chat_id), "the chat model to be ready")
    wait_for(ready(embed_id), "the embedding model to be ready")
    events = list(reversed(client.get(f"/api/deployments/{chat_id}/").json()["events"]))
    statuses = [event["status"] for event in events]
    assert statuses[0] == "pending" and "provisioning" in statuses and statuses[-1] == "ready"
    assert "Copying smol's weights from s3://weights/smollm2/." in [event["message"] for event in events]
    copy = local_platform / "store-copies" / registered.json()["slug"]
    assert (copy / "model.safetensors").stat().st_size == (
        engine_env.engine_dir() / "models" / CHAT / "model.safetensors"
    ).stat().st_size

    chat_row, embed_row = Deployment.objects.get(pk=chat_id), Deployment.objects.get(pk=embed_id)
    cores = [
        re.search(r"CPU cores: replica 0 on (\d+)\.$", row.status_message) for row in (chat_row, embed_row)
    ]
    assert {match.group(1) for match in cores if match} == {"0", "1"}, cores  # one core each

    endpoint = chat_row.endpoints[0]
    question = {"model": "tiny-chat", "max_tokens": 20, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}  # fmt: skip
    answer = post(endpoint, "/v1/chat/completions", question)
    assert "Paris" in answer["choices"][0]["message"]["content"]
    assert "Paris" in through_the_gateways_client(endpoint, question)["choices"][0]["message"]["content"]
    assert refused_without_the_key(endpoint) == [401, 401]
    vectors = post(embed_row.endpoints[0], "/v1/embeddings", {"model": "minilm", "input": ["hi", "yo"]})
    assert [len(item["embedding"]) for item in vectors["data"]] == [384, 384]
    assert refused_without_the_key(embed_row.endpoints[0]) == [401, 401]

    # Both cores are held: a second chat replica waits, saying why, until the embedding model goes.
    scaled = client.post(
        f"/api/deployments/{chat_id}/scale/", {"min_replicas": 2, "max_replicas": 2}, format="json"
    )
    assert scaled.status_code == 200, scaled.content
    wait_for(
        lambda: "This machine has no free CPU core" in Deployment.objects.get(pk=chat_id).status_message,
        "the second chat replica to wait for a core",
    )
    assert Deployment.objects.get(pk=chat_id).ready_replicas == 1
    assert client.delete(f"/api/deployments/{embed_id}/").status_code == 202
    wait_for(ready(chat_id, replicas=2), "two chat replicas")
    client.post(f"/api/deployments/{chat_id}/scale/", {"min_replicas": 1, "max_replicas": 1}, format="json")
    wait_for(ready(chat_id, replicas=1), "one chat replica again")

    assert client.delete(f"/api/deployments/{chat_id}/").status_code == 202
    wait_for(
        lambda: set(Deployment.objects.values_list("status", flat=True)) == {"deleted"},
        "both deployments deleted",
    )
    deadline = time.monotonic() + 30
    while engine_processes(local_platform) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_processes(local_platform) == []
