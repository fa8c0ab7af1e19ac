"""Deployments get the engine flags their card's kind needs, from one builder (serving.spec.card_engine_args)
on both backends: the pooling runner for embeddings, rerank and score; a per-prompt media limit for
vision-language chat; nothing extra for chat, completion or speech recognition."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving import manifests
from serving.backends import local as local_backend
from serving.models import Deployment
from serving.services import spec_for
from serving.spec import AdapterSpec, ModelSpec, card_engine_args, lora_args
from tests.engines import VllmArgumentParser

from .test_manifests import QWEN_7B, flag_value, make_spec


def model(routes: tuple[str, ...], modalities_in: tuple[str, ...] = ("text",)) -> ModelSpec:
    return dataclasses.replace(QWEN_7B, routes=routes, modalities_in=modalities_in)


CHAT = model(("chat.completions", "responses", "completions"))
EMBEDDER = model(("embeddings",))
RERANKER = model(("rerank", "score"))
WHISPER = model(("audio.transcriptions", "audio.translations"), ("audio",))
VISION = model(("chat.completions", "responses", "completions"), ("text", "image"))
VIDEO = model(("chat.completions", "responses", "completions"), ("text", "image", "video"))


@pytest.mark.parametrize("kind", [EMBEDDER, RERANKER], ids=["embeddings", "rerank"])
def test_pooling_cards_run_on_the_pooling_runner(kind: ModelSpec) -> None:
    args = manifests.engine_args(make_spec(model=kind))
    assert flag_value(args, "--runner") == "pooling"
    assert args.count("--runner") == 1
    assert "--convert" not in args  # vLLM resolves cross-encoders to classification by itself


def test_a_runner_the_deployment_chose_is_not_said_twice() -> None:
    args = manifests.engine_args(make_spec(model=EMBEDDER, options={"runner": "pooling"}))
    assert args.count("--runner") == 1


@pytest.mark.parametrize(
    ("kind", "limit"), [(VISION, {"image": 4}), (VIDEO, {"image": 4, "video": 1})], ids=["image", "video"]
)
def test_vision_language_chat_limits_the_media_of_one_prompt(kind: ModelSpec, limit: dict[str, int]) -> None:
    args = manifests.engine_args(make_spec(model=kind))
    assert json.loads(flag_value(args, "--limit-mm-per-prompt")) == limit
    assert "--runner" not in args


@pytest.mark.parametrize("kind", [CHAT, WHISPER, QWEN_7B], ids=["chat", "speech", "no-routes-known"])
def test_generating_cards_get_no_extra_flags(kind: ModelSpec) -> None:
    assert card_engine_args(kind, {}) == []
    args = manifests.engine_args(make_spec(model=kind))
    assert "--runner" not in args and "--limit-mm-per-prompt" not in args


def test_the_kubernetes_container_carries_the_card_flags() -> None:
    spec = make_spec(model=RERANKER)
    (container,) = manifests.build_deployment(spec, manifests.ClusterSettings())["spec"]["template"]["spec"][
        "containers"
    ]
    assert flag_value(container["args"], "--runner") == "pooling"


def test_the_local_engine_gets_the_same_card_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from serving.local import engine_env

    monkeypatch.setattr(engine_env, "model_path", lambda directory, slug: tmp_path)
    engine = local_backend.engine_arguments(make_spec(model=VISION))
    assert engine["extra_args"] == card_engine_args(VISION, {})
    command = engine_env.engine_command(
        engine["model_path"],
        port=8001,
        served_model_name="chat",
        extra_args=engine["extra_args"],
        python=Path("py"),
    )
    assert json.loads(flag_value(command, "--limit-mm-per-prompt")) == {"image": 4}


@pytest.mark.django_db
def test_every_catalog_card_gets_the_flags_of_its_routes() -> None:
    """Through spec_for, from the card's own routes and inputs, on an unsaved deployment of each card."""
    instance = InstanceType.objects.get(slug="aws-p4d-24xlarge")
    checked = 0
    for card in ModelCard.objects.filter(tasks__overlap=["embedding", "reranking", "vision-language"]):
        if not card.servable:
            continue
        deployment = Deployment(
            pk=1, name="x", organization=Organization(slug="acme"), model_card=card, instance_type=instance
        )
        args = manifests.engine_args(spec_for(deployment))
        if card.uses_pooling:
            assert flag_value(args, "--runner") == "pooling", card.slug
        if "image" in card.modalities_in:
            assert "image" in json.loads(flag_value(args, "--limit-mm-per-prompt")), card.slug
        checked += 1
    assert checked > 20


@pytest.mark.slow
def test_vllm_itself_reads_the_card_flags_as_the_platform_means_them(vllm_parser: VllmArgumentParser) -> None:
    """The runner and the media limit through vLLM's own argument parser (the local engine's vLLM 0.32)."""
    flags = [*card_engine_args(EMBEDDER, {}), *card_engine_args(VIDEO, {})]
    parsed = vllm_parser.parse(["--model", "m", *flags])
    assert [parsed["runner"], parsed["limit_mm_per_prompt"]] == ["pooling", {"image": 4, "video": 1}]


@pytest.mark.slow
def test_vllm_itself_reads_several_adapters_beside_an_adapters_own(vllm_parser: VllmArgumentParser) -> None:
    """An adapter's deployment with two more adapters: every module, the slot rank and the batch width
    through vLLM's own parser."""
    own = dataclasses.replace(CHAT, base_slug="base", adapter_path="/lora/own", adapter_rank=8)
    spec = dataclasses.replace(
        make_spec(),
        name="mine",
        model=own,
        adapters=(AdapterSpec("mine:legal", "/lora/legal", 16), AdapterSpec("mine:hr", "/lora/hr", 4)),
    )
    parsed = vllm_parser.parse(["--model", "m", *lora_args(spec)])
    modules = dict(re.findall(r"name='([^']+)', path='([^']+)'", " ".join(parsed["lora_modules"])))
    assert modules == {"mine": "/lora/own", "mine:legal": "/lora/legal", "mine:hr": "/lora/hr"}
    assert (parsed["enable_lora"], parsed["max_lora_rank"], parsed["max_loras"]) == (True, 16, 3)
