"""What a custom model's engine is told, from the pure builders both backends use: a folder model loads
its folder, a hub model its repository at the pinned commit, and an adapter's deployment serves the base
with the adapter under the deployment's name (`--enable-lora --lora-modules name=path --max-lora-rank`).
The architecture list the registration checks sits beside the pinned engine image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from marketplace.catalog import custom_models
from marketplace.catalog.models import ModelCard
from serving import manifests, services
from serving.backends import local
from serving.spec import (
    ENGINE_ARCHITECTURES,
    ENGINE_IMAGE,
    ClusterSettings,
    ModelSpec,
    engine_architecture_kind,
    lora_args,
)
from serving.spec import model_location as location
from tests.catalog.custom_model_files import write_adapter, write_model
from tests.serving.test_manifests import flag_value, make_spec

FOLDER = ModelSpec(
    slug="custom-1-tiny", huggingface_repo="/models/tiny", revision="", gated=False, parameters=10**6,
    gpu_memory_gb=3, context_length=2048, routes=("chat.completions",), weights_path="/models/tiny",
)  # fmt: skip
HUB = ModelSpec(
    slug="custom-1-hub", huggingface_repo="acme/tiny", revision="a" * 40, gated=None, parameters=10**6,
    gpu_memory_gb=3, context_length=2048, routes=("chat.completions",),
)  # fmt: skip
ADAPTER = ModelSpec(
    slug="custom-1-lora", huggingface_repo="HuggingFaceTB/SmolLM2-135M-Instruct", revision="", gated=False,
    parameters=10**6, gpu_memory_gb=3, context_length=2048, routes=("chat.completions",),
    base_slug="smollm2-135m-instruct", adapter_path="/models/lora", adapter_rank=12,
)  # fmt: skip


def test_a_folder_model_is_loaded_from_its_folder() -> None:
    assert location(FOLDER) == ["/models/tiny"]
    assert manifests.engine_args(make_spec(model=FOLDER))[0] == "/models/tiny"


def test_a_hub_model_is_loaded_at_its_pinned_commit() -> None:
    args = manifests.engine_args(make_spec(model=HUB))
    assert args[:3] == ["acme/tiny", "--revision", "a" * 40]


def test_an_adapter_is_served_under_the_deployments_name_on_its_base() -> None:
    args = manifests.engine_args(make_spec(model=ADAPTER, name="support-bot"))
    assert args[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert flag_value(args, "--served-model-name") == "support-bot-base"
    assert flag_value(args, "--lora-modules") == "support-bot=/models/lora"
    assert flag_value(args, "--max-lora-rank") == "16"  # the smallest value vLLM accepts at or above 12
    assert "--enable-lora" in args


def test_a_model_that_is_no_adapter_gets_no_lora_flags() -> None:
    assert lora_args(make_spec(model=FOLDER)) == []
    assert "--enable-lora" not in manifests.engine_args(make_spec(model=HUB))


def test_the_local_backend_serves_an_adapter_on_its_prepared_base(monkeypatch: Any, tmp_path: Path) -> None:
    base = write_model(tmp_path / "models" / "smollm2-135m-instruct")
    monkeypatch.setenv("ENGINE_DIR", str(tmp_path))
    arguments = local.engine_arguments(make_spec(model=ADAPTER, name="support-bot"))
    assert arguments["model_path"] == str(base)
    assert arguments["served_model_name"] == "support-bot-base"
    assert arguments["dtype"] == "float32"  # the base's own CPU setting applies to its adapters
    assert "--lora-modules" in arguments["extra_args"]


def test_the_image_the_architectures_were_listed_for_is_the_pinned_one(settings: Any) -> None:
    listed = json.loads(ENGINE_ARCHITECTURES.read_text())
    assert listed["image"] == ENGINE_IMAGE == ClusterSettings().image
    assert settings.VLLM_IMAGE == ENGINE_IMAGE


@pytest.mark.parametrize(
    ("architecture", "kind"),
    [
        ("LlamaForCausalLM", "generate"),
        ("Qwen2ForCausalLM", "generate"),  # also an embedding architecture: generation comes first
        ("MistralForCausalLM", "generate"),
        ("BertModel", "embedding"),
        ("Qwen2VLForConditionalGeneration", "multimodal"),
        ("DiffusionTransformerModel", None),
        ("", None),
    ],
)
def test_architectures_are_classified_by_the_engines_list(architecture: str, kind: str | None) -> None:
    assert engine_architecture_kind(architecture) == kind


def test_a_deployment_spec_of_a_folder_model_names_its_folder(acme, owner, settings, tmp_path) -> None:
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path)]
    folder = write_model(tmp_path / "tiny")
    custom = custom_models.register_from_path(organization=acme, user=owner, name="tiny", path=str(folder))
    assert services.weights_path(custom.card) == str(folder)
    lora = write_adapter(tmp_path / "lora", str(folder))
    adapter = custom_models.register_adapter(
        organization=acme, user=owner, name="tiny-lora", path=str(lora), base=custom.card
    )
    assert services.weights_path(adapter.card) == str(folder)  # an adapter runs on its base's weights
    fields = services._adapter_fields(adapter.card)
    assert fields == {
        "base_slug": custom.card.slug,
        "adapter_path": str(tmp_path / "lora"),
        "adapter_rank": 8,
    }
    assert services._adapter_fields(ModelCard.objects.get(slug="smollm2-135m-instruct")) == {}
