"""The catalog tells the truth: gating is never unknown-as-no, every license says its own terms and
whether commercial use is allowed, language lists are the models' own, every card can be deployed, and
every price says where it comes from."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from marketplace.catalog.choices import CommercialUse
from marketplace.catalog.loader import DATA_DIR, GENERIC_LICENSE, read_catalog
from marketplace.catalog.models import InstanceType, License, ModelCard

pytestmark = pytest.mark.django_db


def raw_cards() -> list[dict]:  # type: ignore[type-arg]
    return [
        card
        for path in sorted((DATA_DIR / "models").glob("*.yaml"))
        for card in yaml.safe_load(path.read_text())["models"]
    ]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(DATA_DIR, copy)
    return copy


def edit(path: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def refusal(data: Path) -> str:
    with pytest.raises(CommandError) as error:
        call_command("load_catalog", path=data)
    return str(error.value)


# Gating


def test_every_card_states_whether_it_is_gated() -> None:
    assert [card["slug"] for card in raw_cards() if "gated" not in card] == []


def test_a_card_that_leaves_gating_out_is_refused(data: Path) -> None:
    edit(data / "models/epfl-llm.yaml", lambda d: d["models"][0].pop("gated"))
    assert "card 'meditron-7b': field 'gated': Field required" in refusal(data)


def test_models_gated_on_the_hub_are_gated_here() -> None:
    gated = dict(
        ModelCard.objects.filter(slug__in=["meditron-7b", "eurollm-9b-instruct"]).values_list("slug", "gated")
    )
    assert gated == {"meditron-7b": True, "eurollm-9b-instruct": True}


def test_unknown_gating_is_null_and_matches_neither_filter() -> None:
    unknown = ModelCard.objects.filter(gated__isnull=True)
    assert unknown.exists()
    client = APIClient()
    slug = unknown.first().slug  # type: ignore[union-attr]
    assert client.get(f"/api/models/{slug}/").json()["gated"] is None
    for value in ("true", "false"):
        listed = client.get("/api/models/", {"gated": value, "page_size": 200}).json()["results"]
        assert slug not in {row["slug"] for row in listed}


# Licenses


def test_no_card_hides_behind_the_generic_other_license() -> None:
    assert not ModelCard.objects.filter(license__identifier=GENERIC_LICENSE).exists()
    assert GENERIC_LICENSE not in read_catalog().licenses


def test_a_card_under_the_generic_other_license_is_refused(data: Path) -> None:
    def add_other(document: dict) -> None:  # type: ignore[type-arg]
        document["licenses"][GENERIC_LICENSE] = {
            "name": "Other",
            "commercial_use": "conditions",
            "text": "Terms set by the publisher.",
        }

    edit(data / "licenses.yaml", add_other)
    edit(data / "models/thudm.yaml", lambda d: d["models"][0].update(license=GENERIC_LICENSE))
    assert "card 'glm-4-9b-chat': field 'license': 'other' hides the publisher's terms" in refusal(data)


def test_every_license_has_its_own_terms() -> None:
    texts = list(License.objects.filter(cards__isnull=False).distinct().values_list("text", flat=True))
    assert len(texts) == len(set(texts))


@pytest.mark.parametrize(
    ("slug", "commercial_use"),
    [
        ("stablelm-2-1-6b-chat", CommercialUse.NOT_ALLOWED),
        ("exaone-3.5-7.8b-instruct", CommercialUse.NOT_ALLOWED),
        ("minicpm-v-2-6", CommercialUse.CONDITIONS),
        ("glm-4-9b-chat", CommercialUse.CONDITIONS),
        ("llama-3.1-8b-instruct", CommercialUse.CONDITIONS),
        ("qwen2.5-7b-instruct", CommercialUse.ALLOWED),
    ],
)
def test_each_card_says_whether_commercial_use_is_allowed(slug: str, commercial_use: str) -> None:
    card = ModelCard.objects.select_related("license").get(slug=slug)
    assert card.license.commercial_use == commercial_use
    assert APIClient().get(f"/api/models/{slug}/").json()["commercial_use"] == commercial_use


def test_a_license_without_commercial_use_is_refused(data: Path) -> None:
    edit(data / "licenses.yaml", lambda d: d["licenses"]["mit"].pop("commercial_use"))
    assert "license 'mit': field 'commercial_use': Field required" in refusal(data)


def test_the_commercial_use_filter() -> None:
    answer = APIClient().get("/api/models/", {"commercial_use": "not-allowed", "page_size": 200}).json()
    expected = ModelCard.objects.filter(license__commercial_use=CommercialUse.NOT_ALLOWED).count()
    assert 0 < answer["count"] == expected < ModelCard.objects.count()
    assert {row["commercial_use"] for row in answer["results"]} == {"not-allowed"}
    bad = APIClient().get("/api/models/", {"commercial_use": "maybe"})
    assert bad.status_code == 400 and "commercial_use" in bad.json()


# Languages


def test_language_lists_are_the_models_own() -> None:
    languages = dict(ModelCard.objects.values_list("slug", "languages"))
    assert len(languages["multilingual-e5-large-instruct"]) == 93
    assert languages["multilingual-e5-large"] == languages["multilingual-e5-large-instruct"]
    assert sorted(languages["biomistral-7b"]) == sorted(
        ["en", "fr", "de", "nl", "es", "pt", "pl", "ro", "it"]
    )
    # The BGE M3 cards name no list: "mul" (many languages), not a list copied from another card.
    assert languages["bge-m3"] == languages["bge-reranker-v2-m3"] == ["mul"]


# Deployability


def test_every_card_fits_at_least_one_instance_type() -> None:
    stranded = [
        card.slug for card in ModelCard.objects.all() if not InstanceType.objects.fitting(card).exists()
    ]
    assert stranded == []


def test_every_card_that_generates_text_has_its_kv_cache_facts() -> None:
    missing = [
        card.slug
        for card in ModelCard.objects.filter(modalities_out__contains=["text"])
        if not card.facts.kv_bytes_per_token
    ]
    assert missing == []


def test_a_text_model_without_layer_facts_is_refused(data: Path) -> None:
    edit(data / "models/meta.yaml", lambda d: d["models"][0].pop("num_hidden_layers"))
    assert "field 'num_hidden_layers': a model that generates text needs" in refusal(data)


# Prices


def test_every_price_says_where_it_comes_from_and_when() -> None:
    for instance_type in InstanceType.objects.all():
        assert instance_type.price_source and instance_type.price_as_of, instance_type.slug
    assert InstanceType.objects.filter(price_is_estimate=True).exists()
    rows = APIClient().get("/api/instance-types/", {"page_size": 100}).json()["results"]
    assert all(isinstance(row["price_is_estimate"], bool) for row in rows)


def test_an_instance_type_that_does_not_say_whether_its_price_is_an_estimate_is_refused(data: Path) -> None:
    edit(data / "instance_types.yaml", lambda d: d["instance_types"][0].pop("price_is_estimate"))
    assert "field 'price_is_estimate': Field required" in refusal(data)
