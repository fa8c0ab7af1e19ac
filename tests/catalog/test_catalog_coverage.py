"""The catalog covers what the marketplace promises: every task, domain, language and input facet has at
least three cards; speech recognition, protein models, rerankers, image generation and text to speech are
there, each servable or saying why not; and the vocabularies stay closed."""

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from marketplace.catalog.loader import DATA_DIR
from marketplace.catalog.models import ModelCard

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("facet", ["tasks", "domains", "languages", "modalities_in"])
def test_every_facet_option_of_the_catalog_has_at_least_three_cards(facet: str) -> None:
    counts: Counter[str] = Counter()
    for values in ModelCard.objects.values_list(facet, flat=True):
        counts.update(values)
    assert counts
    assert {value: count for value, count in counts.items() if count < 3} == {}


@pytest.mark.parametrize(
    ("task", "route"),
    [
        ("speech-recognition", "audio.transcriptions"),
        ("reranking", "rerank"),
        ("embedding", "embeddings"),
    ],
)
def test_at_least_three_servable_cards_serve_each_new_kind_of_route(task: str, route: str) -> None:
    cards = [card for card in ModelCard.objects.filter(tasks__contains=[task]) if route in card.routes]
    assert len(cards) >= 3, [card.slug for card in cards]


def test_whisper_large_v3_transcribes_and_translates_speech() -> None:
    whisper = ModelCard.objects.get(slug="whisper-large-v3")
    assert whisper.routes == ("audio.transcriptions", "audio.translations")
    assert (whisper.huggingface_repo, whisper.context_length, whisper.license.identifier) == (
        "openai/whisper-large-v3",
        448,
        "apache-2.0",
    )
    assert {"ko", "ja", "th", "id", "vi", "ar", "hi"} <= set(whisper.languages)


def test_whisper_turbo_transcribes_only_as_its_card_says() -> None:
    assert ModelCard.objects.get(slug="whisper-large-v3-turbo").routes == ("audio.transcriptions",)


def test_protgpt2_completes_protein_sequences() -> None:
    card = ModelCard.objects.get(slug="protgpt2")
    assert (card.routes, card.parameters, card.num_hidden_layers) == (("completions",), 738_000_000, 36)
    assert "biology" in card.domains


def test_esm2_is_listed_but_says_the_engine_lacks_its_architecture() -> None:
    card = ModelCard.objects.get(slug="esm2-t33-650m-ur50d")
    assert (card.servable, card.routes, card.embedding_dimensions) == (False, (), 1280)
    assert "no ESM architecture" in card.not_servable_reason


@pytest.mark.parametrize(
    ("task", "words"), [("image-generation", "not images"), ("text-to-speech", "synthesise")]
)
def test_image_and_speech_generators_are_not_servable_and_say_why(task: str, words: str) -> None:
    cards = list(ModelCard.objects.filter(tasks__contains=[task]))
    assert len(cards) >= 3
    for card in cards:
        assert (card.slug, card.servable, card.routes) == (card.slug, False, ())
        assert words in card.not_servable_reason, card.slug


def test_servable_cards_are_every_card_but_those_that_say_why() -> None:
    unservable = {card.slug for card in ModelCard.objects.all() if not card.servable}
    assert unservable == {
        card.slug
        for card in ModelCard.objects.all()
        if {"image", "audio"} & set(card.modalities_out) or card.engine_unsupported
    }
    assert 0 < len(unservable) < ModelCard.objects.count() / 5


# The vocabularies stay closed


@pytest.fixture
def data(tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(DATA_DIR, copy)
    return copy


def edit(path: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.mark.parametrize(
    ("field", "value"),
    [("tasks", ["music-generation"]), ("modalities_out", ["video"]), ("domains", ["astrology"])],
)
def test_the_loader_refuses_a_value_outside_the_vocabulary(data: Path, field: str, value: list[str]) -> None:
    edit(data / "models/openai.yaml", lambda d: d["models"][0].update({field: value}))
    with pytest.raises(CommandError) as error:
        call_command("load_catalog", path=data)
    assert f"card 'whisper-large-v3': field '{field}.0'" in str(error.value)
