"""A custom model end to end on this machine, for real: the SmolLM2 folder `make engine` prepares is
registered as an organisation's custom model through the REST API (its config.json and safetensors
header read), deployed on the local backend by a real Celery worker and engine supervisor without a
license to accept, and answers through the gateway's client; then a LoRA adapter registered on it is
deployed, and vLLM serves the base with the adapter under the deployment's name.

The adapter is written here in PEFT's format with lora_B at zero, so its answers are the base's: the test
shows the serving path (registration, --enable-lora/--lora-modules, the name reaching the adapter), not
what a trained adapter changes."""

from __future__ import annotations

import json
import math
import struct
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from marketplace.accounts import services as account_services
from serving.local import engine_env
from serving.local.engine_key import engine_key
from serving.models import Deployment
from tests.conftest import make_user
from tests.serving.test_local_backend import (  # noqa: F401 (local_platform is a fixture)
    local_platform,
    through_the_gateways_client,
    wait_for,
)

pytestmark = pytest.mark.slow
# An engine starts in about thirty seconds on an idle machine; a busy one of two cores has taken four minutes.
START_SECONDS = 900

CHAT = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
LAYERS, HIDDEN, KV_WIDTH, RANK = 30, 576, 192, 8  # SmolLM2 135M: 30 layers, hidden 576, 3 KV heads × 64


def zero_adapter(folder: Path, base: str) -> Path:
    """A PEFT LoRA adapter on q_proj and v_proj of every layer, its B matrices zero (a no-op update)."""
    folder.mkdir(parents=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": RANK,
        "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    shapes: dict[str, list[int]] = {}
    for layer in range(LAYERS):
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV_WIDTH)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            shapes[f"{prefix}.lora_A.weight"] = [RANK, HIDDEN]
            shapes[f"{prefix}.lora_B.weight"] = [out, RANK]
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    (folder / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(encoded)) + encoded + bytes(offset)
    )
    return folder


def test_a_custom_model_and_its_adapter_are_served_on_this_machine(
    local_platform: Path,  # noqa: F811
    client_for: Any,
    settings: Any,
) -> None:
    models = engine_env.engine_dir() / "models"
    settings.CUSTOM_MODEL_ROOTS = [str(models), str(local_platform)]
    owner = make_user("ada")
    account_services.create_organization(slug="lab", name="Lab", owner=owner)
    client = client_for(owner)

    registered = client.post(
        "/api/custom-models/", {"name": "smol", "source": "path", "path": str(models / CHAT)}, format="json"
    )
    assert registered.status_code == 201, registered.content
    assert (registered.json()["architecture"], registered.json()["context_length"]) == (
        "LlamaForCausalLM",
        8192,
    )

    def deploy(name: str, slug: str) -> int:
        body = {
            "name": name,
            "model": slug,
            "instance_type": "local-cpu",
            "engine_options": {"dtype": "float32"},
        }
        response = client.post("/api/deployments/", body, format="json")
        assert response.status_code == 201, response.content  # no subscription asked for
        return int(response.json()["id"])

    def ready(deployment_id: int) -> Callable[[], bool]:
        def check() -> bool:
            row = Deployment.objects.get(pk=deployment_id)
            assert row.status != "failed", row.status_message
            return row.status == "ready" and len(row.endpoints) == 1

        return check

    question = {"model": "smol-chat", "max_tokens": 20, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip
    chat_id = deploy("smol-chat", registered.json()["slug"])
    wait_for(ready(chat_id), "the custom model to be ready", START_SECONDS)
    endpoint = Deployment.objects.get(pk=chat_id).endpoints[0]
    assert "Paris" in through_the_gateways_client(endpoint, question)["choices"][0]["message"]["content"]
    assert client.delete(f"/api/deployments/{chat_id}/").status_code == 202
    wait_for(
        lambda: Deployment.objects.get(pk=chat_id).status == "deleted", "the custom model's deployment gone"
    )

    adapter = zero_adapter(local_platform / "smol-lora", str(models / CHAT))
    body = {"name": "smol-lora", "source": "adapter", "path": str(adapter), "base": registered.json()["slug"]}
    lora = client.post("/api/custom-models/", body, format="json")
    assert lora.status_code == 201, lora.content
    lora_id = deploy("support", lora.json()["slug"])
    wait_for(ready(lora_id), "the adapter's deployment to be ready", START_SECONDS)
    endpoint = Deployment.objects.get(pk=lora_id).endpoints[0]
    served = {model["id"]: model.get("parent") for model in engine_models(endpoint)}
    assert served == {"support-base": None, "support": "support-base"}
    answer = through_the_gateways_client(endpoint, {**question, "model": "support"})
    assert answer["model"] == "support" and "Paris" in answer["choices"][0]["message"]["content"]
    assert client.delete(f"/api/deployments/{lora_id}/").status_code == 202
    wait_for(lambda: Deployment.objects.get(pk=lora_id).status == "deleted", "the adapter's deployment gone")


def engine_models(endpoint: str) -> list[dict[str, Any]]:
    """What the engine itself serves (its /v1/models, with the key only the gateway derives)."""
    headers = {"Authorization": f"Bearer {engine_key(endpoint)}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{endpoint}/v1/models", headers=headers), timeout=30
    ) as answer:
        return list(json.load(answer)["data"])
