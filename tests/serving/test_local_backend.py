"""The local backend end to end, for real: a Celery worker (real Redis broker) provisions deployments,
the engine supervisor runs real vLLM engines (CPU) for the two small catalog models, the reconciler
moves them to READY; the engines answer a chat completion and embeddings; the chat model scales to two
replicas and back; deleting leaves no engine process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from marketplace.accounts import services as account_services
from marketplace.catalog.models import ModelCard
from marketplace.celery import app
from marketplace.subscriptions.services import subscribe
from serving import tasks
from serving.backends import get_backend
from serving.local import engine_env
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


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


@pytest.fixture
def local_platform(transactional_catalog: None, settings: Any, tmp_path: Path) -> Iterator[Path]:
    base_url = settings.REDIS_URL.rsplit("/", 1)[0]
    settings.SERVING_BACKEND = "local"
    settings.REDIS_URL = f"{base_url}/{REDIS_DB}"
    settings.DATA_DIR = str(tmp_path)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    get_backend.cache_clear()
    environment = {**os.environ, "REDIS_URL": settings.REDIS_URL, "DATA_DIR": str(tmp_path)}
    supervisor = subprocess.Popen([sys.executable, "-m", "django", "run_engines"], env=environment)
    # A real Celery worker in this process, on the real Redis broker, using the test database.
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30):
        try:
            yield tmp_path
        finally:
            supervisor.terminate()
            supervisor.wait(timeout=30)
            get_backend.cache_clear()


def test_deploy_serve_scale_and_delete_on_this_machine(local_platform: Path, client_for: Any) -> None:
    owner = make_user("ada")
    organization = account_services.create_organization(slug="lab", name="Lab", owner=owner)
    for slug in (CHAT, EMBED):
        subscribe(
            organization=organization, card=ModelCard.objects.get(slug=slug), license_sha256=None, user=owner
        )
    client = client_for(owner)

    chat = client.post(
        "/api/deployments/", {"name": "tiny-chat", "model": CHAT, "instance_type": "local-cpu"}, format="json"
    )
    assert chat.status_code == 201, chat.content
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
    statuses = [e["status"] for e in reversed(client.get(f"/api/deployments/{chat_id}/").json()["events"])]
    assert statuses[0] == "pending" and "provisioning" in statuses and statuses[-1] == "ready"

    endpoint = Deployment.objects.get(pk=chat_id).endpoints[0]
    answer = post(
        f"{endpoint}/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "What is the capital of France?"}],
         "max_tokens": 20, "temperature": 0},
    )  # fmt: skip
    assert "Paris" in answer["choices"][0]["message"]["content"]
    vectors = post(
        f"{Deployment.objects.get(pk=embed_id).endpoints[0]}/v1/embeddings",
        {"model": "minilm", "input": ["hi", "yo"]},
    )
    assert [len(item["embedding"]) for item in vectors["data"]] == [384, 384]

    scaled = client.post(
        f"/api/deployments/{chat_id}/scale/", {"min_replicas": 2, "max_replicas": 2}, format="json"
    )
    assert scaled.status_code == 200, scaled.content
    wait_for(ready(chat_id, replicas=2), "two chat replicas")
    client.post(f"/api/deployments/{chat_id}/scale/", {"min_replicas": 1, "max_replicas": 1}, format="json")
    wait_for(ready(chat_id, replicas=1), "one chat replica again")

    for deployment_id in (chat_id, embed_id):
        assert client.delete(f"/api/deployments/{deployment_id}/").status_code == 202
    wait_for(
        lambda: set(Deployment.objects.values_list("status", flat=True)) == {"deleted"},
        "both deployments deleted",
    )
    deadline = time.monotonic() + 30
    while engine_processes(local_platform) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_processes(local_platform) == []
