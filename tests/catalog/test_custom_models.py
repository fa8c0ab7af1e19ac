"""Custom models through /api/custom-models/: registering weights from a folder (real config.json and
safetensors files), the facts the card gets, the refusals, deleting, deploying, and that no other
organisation ever sees them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from marketplace.catalog import fits
from marketplace.catalog.models import CustomModel, ModelCard
from serving.models import Deployment
from tests.catalog.custom_model_files import (
    TINY_LLAMA_CONFIG,
    TINY_LLAMA_TENSORS,
    parameter_count,
    write_adapter,
    write_model,
)

CUSTOM = "/api/custom-models/"


@pytest.fixture
def root(settings: Any, tmp_path: Path) -> Path:
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path / "models")]
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


@pytest.fixture
def folder(root: Path) -> Path:
    return write_model(root / "tiny-llama")


def register(client: Any, **body: Any) -> Any:
    return client.post(CUSTOM, {"name": "tiny", "source": "path", **body}, format="json")


@pytest.fixture
def registered(client_for, owner, folder) -> dict[str, Any]:
    response = register(client_for(owner), path=str(folder))
    assert response.status_code == 201, response.content
    return response.json()


def test_owner_registers_a_folder_and_the_card_says_what_the_files_say(registered, folder) -> None:
    assert registered["architecture"] == "LlamaForCausalLM"
    assert registered["parameters"] == parameter_count(TINY_LLAMA_TENSORS)
    assert registered["context_length"] == TINY_LLAMA_CONFIG["max_position_embeddings"]
    assert registered["dtype"] == "bfloat16"
    assert registered["tasks"] == ["chat"]
    assert registered["path"] == str(folder.resolve())
    assert registered["facts"]["num_key_value_heads"] == 2 and registered["facts"]["head_dim"] == 16


def test_the_memory_needed_is_the_catalogs_formula(registered) -> None:
    parameters = parameter_count(TINY_LLAMA_TENSORS)
    facts = fits.ModelFacts(
        parameters=parameters, context_length=2048, layers=2, kv_heads=2, head_dim=16, cpu_capable=True
    )
    assert registered["gpu_memory_gb"] == fits.estimate(facts).needed_gb
    assert registered["min_gpu_memory_gb"] == fits.estimate(facts, facts.min_context).needed_gb
    card = ModelCard.every_card.get(slug=registered["slug"])
    assert card.facts == facts


def test_a_member_sees_but_cannot_register(client_for, member, registered, folder) -> None:
    assert [row["name"] for row in client_for(member).get(CUSTOM).json()["results"]] == ["tiny"]
    assert register(client_for(member), name="other", path=str(folder)).status_code == 403


def test_outsider_cannot_list_retrieve_or_delete(client_for, outsider, registered) -> None:
    client = client_for(outsider)
    assert client.get(CUSTOM).json()["results"] == []
    assert client.get(f"{CUSTOM}{registered['id']}/").status_code == 404
    assert client.delete(f"{CUSTOM}{registered['id']}/").status_code == 404
    assert CustomModel.objects.filter(pk=registered["id"]).exists()


def test_outsider_cannot_see_the_card_in_the_catalog_api(client_for, outsider, registered) -> None:
    for client in (client_for(outsider), client_for(None)):
        assert client.get(f"/api/models/{registered['slug']}/").status_code == 404
        slugs = [
            row["slug"]
            for row in client.get("/api/models/", {"q": "tiny", "page_size": 500}).json()["results"]
        ]
        assert registered["slug"] not in slugs


def test_outsider_cannot_deploy_it(client_for, outsider, registered, settings) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    response = client_for(outsider).post(
        "/api/deployments/",
        {"name": "theirs", "model": registered["slug"], "instance_type": "aws-g5-xlarge"},
        format="json",
    )
    assert response.status_code == 400
    # The answer to a slug that does not exist at all.
    assert response.json()["model"] == [f"There is no slug “{registered['slug']}”: check the spelling."]
    assert not Deployment.objects.exists()


def test_outsider_cannot_subscribe_to_it(client_for, outsider, registered) -> None:
    response = client_for(outsider).post("/api/subscriptions/", {"model": registered["slug"]}, format="json")
    assert response.status_code == 400
    assert "model" in response.json()


def test_the_providers_list_counts_no_custom_model(client_for, outsider, registered) -> None:
    providers = client_for(outsider).get("/api/providers/", {"page_size": 500}).json()["results"]
    assert "custom" not in [provider["slug"] for provider in providers]


def test_an_api_key_of_the_organisation_lists_it_and_of_another_does_not(
    api_key_client, acme, globex, registered
):
    assert [row["name"] for row in api_key_client(acme)[0].get(CUSTOM).json()["results"]] == ["tiny"]
    assert api_key_client(globex)[0].get(CUSTOM).json()["results"] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["NoSuchModelForCausalLM"]}, "architecture NoSuchModelForCausalLM is not one"),
        ({"architectures": []}, "config.json has no `architectures`"),
        ({"max_position_embeddings": None}, "states no context length"),
        ({"num_hidden_layers": "two"}, "`num_hidden_layers` must be a positive whole number"),
    ],
)
def test_a_config_the_engine_cannot_use_is_refused(client_for, owner, root, change, message) -> None:
    config = {key: value for key, value in {**TINY_LLAMA_CONFIG, **change}.items() if value is not None}
    response = register(client_for(owner), path=str(write_model(root / "bad", config)))
    assert response.status_code == 400
    assert message in response.json()["path"][0]
    assert not CustomModel.objects.exists() and not ModelCard.every_card.filter(organization__isnull=False)


def test_a_missing_config_is_refused(client_for, owner, folder) -> None:
    (folder / "config.json").unlink()
    response = register(client_for(owner), path=str(folder))
    assert response.status_code == 400
    assert response.json()["path"] == [f"config.json is missing from {folder.resolve()}."]


def test_a_malformed_config_is_refused(client_for, owner, folder) -> None:
    (folder / "config.json").write_text("{not json")
    response = register(client_for(owner), path=str(folder))
    assert response.status_code == 400
    assert response.json()["path"][0].startswith("config.json is not valid JSON")


def test_a_malformed_safetensors_header_is_refused(client_for, owner, folder) -> None:
    (folder / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    response = register(client_for(owner), path=str(folder))
    assert response.status_code == 400
    assert "malformed" in response.json()["path"][0]


def test_weights_that_are_not_safetensors_are_refused(client_for, owner, folder) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    response = register(client_for(owner), path=str(folder))
    assert response.status_code == 400
    assert "neither model.safetensors nor model.safetensors.index.json" in response.json()["path"][0]


def test_a_folder_outside_the_allowed_roots_is_refused(client_for, owner, tmp_path) -> None:
    outside = write_model(tmp_path / "elsewhere")
    response = register(client_for(owner), path=str(outside))
    assert response.status_code == 400
    assert "outside the folders custom models are registered from" in response.json()["path"][0]


def test_a_link_out_of_the_allowed_roots_is_refused(client_for, owner, root, tmp_path) -> None:
    (root / "link").symlink_to(write_model(tmp_path / "elsewhere"))
    response = register(client_for(owner), path=str(root / "link"))
    assert response.status_code == 400
    assert "outside the folders" in response.json()["path"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": "hub"}, "huggingface_repo"),
        ({"source": "hub", "huggingface_repo": "a/b", "revision": "main"}, "revision"),
        ({"source": "hub", "huggingface_repo": "a/b", "revision": "A" * 40}, "revision"),
        ({"source": "hub", "huggingface_repo": "not a repo", "revision": "a" * 40}, "huggingface_repo"),
        ({"source": "path"}, "path"),
        ({"source": "path", "path": "relative/folder"}, "path"),
        ({"source": "adapter", "path": "/x"}, "base"),
        ({"source": "weights"}, "source"),
        ({"name": "Not_A_Name", "path": "/x"}, "name"),
        ({"name": ["tiny"], "path": "/x"}, "name"),
    ],
)
def test_malformed_requests_name_the_field(client_for, owner, root, body, field) -> None:
    response = register(client_for(owner), **body)
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_a_name_is_used_once_per_organisation(client_for, owner, registered, folder) -> None:
    response = register(client_for(owner), path=str(folder))
    assert response.status_code == 400
    assert response.json()["name"] == ["acme already has a custom model named 'tiny'."]


def test_another_organisation_may_use_the_same_name(client_for, outsider, registered, settings, tmp_path):
    settings.CUSTOM_MODEL_ROOTS = [*settings.CUSTOM_MODEL_ROOTS, str(tmp_path / "globex")]
    response = register(client_for(outsider), path=str(write_model(tmp_path / "globex" / "m")))
    assert response.status_code == 201
    assert response.json()["slug"] != registered["slug"]


def test_delete_removes_the_model_and_its_card(registered, client_for, owner) -> None:
    assert client_for(owner).delete(f"{CUSTOM}{registered['id']}/").status_code == 204
    assert not CustomModel.objects.exists()
    assert not ModelCard.every_card.filter(slug=registered["slug"]).exists()


def test_a_member_cannot_delete(registered, client_for, member) -> None:
    assert client_for(member).delete(f"{CUSTOM}{registered['id']}/").status_code == 403
    assert CustomModel.objects.filter(pk=registered["id"]).exists()


def adapter_body(path: Path, base: str) -> dict[str, Any]:
    return {"name": "tiny-lora", "source": "adapter", "path": str(path), "base": base}


def test_an_adapter_registers_on_its_base(client_for, owner, registered, folder, root) -> None:
    adapter = write_adapter(root / "lora", str(folder))
    response = client_for(owner).post(CUSTOM, adapter_body(adapter, registered["slug"]), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["base"], body["lora_rank"], body["target_modules"]) == (
        registered["slug"],
        8,
        ["q_proj", "v_proj"],
    )
    assert body["context_length"] == registered["context_length"]
    assert body["parameters"] > registered["parameters"]


def test_an_adapter_on_a_catalog_card_names_its_repository(client_for, owner, root) -> None:
    card = ModelCard.objects.get(slug="smollm2-135m-instruct")
    adapter = write_adapter(root / "lora", card.huggingface_repo, width=576)
    response = client_for(owner).post(CUSTOM, adapter_body(adapter, card.slug), format="json")
    assert response.status_code == 201, response.content


def test_an_adapter_for_another_base_is_refused(client_for, owner, registered, root) -> None:
    adapter = write_adapter(root / "lora", "meta-llama/Llama-3.1-8B-Instruct")
    response = client_for(owner).post(CUSTOM, adapter_body(adapter, registered["slug"]), format="json")
    assert response.status_code == 400
    assert response.json()["base"][0].startswith(
        "The adapter was trained on meta-llama/Llama-3.1-8B-Instruct"
    )


def test_an_adapter_whose_layers_are_another_width_is_refused(client_for, owner, registered, folder, root):
    adapter = write_adapter(root / "lora", str(folder), width=128)
    response = client_for(owner).post(CUSTOM, adapter_body(adapter, registered["slug"]), format="json")
    assert response.status_code == 400
    assert "width 128" in response.json()["base"][0]


def test_an_adapter_whose_weights_contradict_its_rank_is_refused(client_for, owner, registered, folder, root):
    adapter = write_adapter(root / "lora", str(folder), rank=16, tensor_rank=8)
    response = client_for(owner).post(CUSTOM, adapter_body(adapter, registered["slug"]), format="json")
    assert response.status_code == 400
    assert "says r=16" in response.json()["path"][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 0}, "`r` (the rank) must be a positive whole number"),
        ({"r": 1024}, "rank 1024 is above 512"),
        ({"target_modules": []}, "`target_modules` must name the layers"),
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA adapters can be served"),
        ({"base_model_name_or_path": ""}, "names no `base_model_name_or_path`"),
    ],
)
def test_a_malformed_adapter_config_is_refused(client_for, owner, registered, folder, root, change, message):
    adapter = write_adapter(root / "lora", str(folder))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    response = client_for(owner).post(CUSTOM, adapter_body(adapter, registered["slug"]), format="json")
    assert response.status_code == 400
    assert message in response.json()["path"][0]


def test_an_adapter_on_another_organisations_model_is_refused(client_for, outsider, registered, folder, root):
    adapter = write_adapter(root / "lora", str(folder))
    response = client_for(outsider).post(CUSTOM, adapter_body(adapter, registered["slug"]), format="json")
    assert response.status_code == 400
    assert response.json()["base"] == [
        f"No model '{registered['slug']}' in the catalog or among your custom models."
    ]


def test_a_platform_admin_finds_custom_models_in_the_admin(admin_client, registered) -> None:
    card = ModelCard.every_card.get(slug=registered["slug"])
    listed = admin_client.get("/admin/catalog/modelcard/", {"q": "tiny"}).content.decode()
    assert f"/admin/catalog/modelcard/{card.pk}/change/" in listed
    assert admin_client.get(f"/admin/catalog/custommodel/{registered['id']}/change/").status_code == 200


def test_outsider_cannot_ask_which_instance_types_it_fits(client_for, outsider, registered) -> None:
    response = client_for(outsider).get("/api/instance-types/", {"fits": registered["slug"]})
    assert response.status_code == 400
    assert "fits" in response.json()


@pytest.mark.parametrize(
    "field", ["name", "source", "huggingface_repo", "revision", "hf_token", "path", "base"]
)
@pytest.mark.parametrize("value", [None, 7, ["x"], {"a": 1}, "x" * 5000, True])
def test_a_field_of_the_wrong_kind_is_refused_and_saves_nothing(
    client_for, owner, root, field, value
) -> None:
    body = {
        "name": "tiny",
        "source": "adapter",
        "path": str(root),
        "base": "smollm2-135m-instruct",
        field: value,
    }
    response = client_for(owner).post(CUSTOM, body, format="json")
    assert response.status_code == 400, response.content
    # A value of the wrong kind is refused by name; one the field can read (7 as "7") fails a later check.
    named = set(response.json())
    assert field in named or named <= {"path", "base"}
    assert not CustomModel.objects.exists()
