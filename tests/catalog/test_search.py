"""Catalog search understands what people type (language names, sizes, typos) and puts the best match
first, on the real catalog."""

from __future__ import annotations

import pytest

from marketplace.catalog.models import ModelCard
from marketplace.catalog.search import language_label, parse, search

pytestmark = pytest.mark.django_db


def found(text: str) -> list[ModelCard]:
    return list(search(ModelCard.objects.all(), text).order_by("-search_rank", "name"))


def names(text: str) -> list[str]:
    return [card.name for card in found(text)]


def test_a_language_name_finds_the_cards_that_list_that_language() -> None:
    listed = set(ModelCard.objects.filter(languages__contains=["ja"]).values_list("name", flat=True))
    multilingual = set(ModelCard.objects.filter(languages__contains=["mul"]).values_list("name", flat=True))
    assert len(listed) > 10  # the check below could fail
    result = names("japanese")
    assert set(result) == listed | multilingual
    # Cards that list Japanese come before those that say only "multilingual".
    assert set(result[: len(listed)]) == listed


def test_a_language_name_is_understood_whatever_its_case_and_of_two_words() -> None:
    assert names("Japanese") == names("japanese")
    assert "paraphrase-multilingual-MiniLM-L12-v2" in names("norwegian bokmål")


def test_a_size_matches_the_size_a_name_states_not_a_longer_number() -> None:
    result = names("7b")
    assert "Mistral 7B Instruct v0.3" in result and "Qwen2.5 7B Instruct" in result
    assert not [name for name in result if "27B" in name or "1.7B" in name or "8x7B" in name]


def test_a_size_matches_the_parameter_count_of_a_card_whose_name_states_none() -> None:
    phi4 = ModelCard.objects.get(slug="phi-4")
    assert round(phi4.parameters / 1e9) == 15
    assert "Phi-4" in names("15b")


def test_a_decimal_or_million_size_matches_that_size_only() -> None:
    assert sorted(names("1.7b")) == ["EuroLLM 1.7B Instruct", "SmolLM2 1.7B Instruct"]
    assert names("smollm2 135m") == ["SmolLM2 135M Instruct"]


def test_every_word_must_match() -> None:
    result = names("mistral 7b")
    assert result[0] == "Mistral 7B Instruct v0.3"
    assert all("7B" in name for name in result)


def test_the_best_match_comes_first() -> None:
    assert set(names("qwen coder")[:2]) == {"Qwen2.5 Coder 32B Instruct", "Qwen2.5 Coder 7B Instruct"}
    assert names("llama")[0].startswith("Llama 3")
    assert names("embeddings")[0] == "Jina Embeddings v3"


def test_a_word_matches_as_a_prefix_and_by_its_english_stem() -> None:
    assert "Qwen2.5 7B Instruct" in names("qwen")
    assert "AdaptLLM Medicine Chat" in names("medical")


def test_a_typo_still_finds_the_model() -> None:
    assert "Mistral 7B Instruct v0.3" in names("mistrl")


def test_stop_words_are_not_required() -> None:
    assert set(names("models for japanese")) <= set(names("japanese"))
    assert names("the") == names("")


def test_characters_of_the_query_language_are_only_text() -> None:
    assert names("x:*|y & !z") == []
    assert names("'; drop table") == []


def test_language_labels_name_the_language_and_its_code() -> None:
    assert language_label("ja") == "Japanese (ja)"
    assert language_label("mul") == "Multiple languages (mul)"


def test_parse_separates_languages_sizes_and_words() -> None:
    parsed = parse("Japanese Qwen 7B")
    assert (parsed.languages, parsed.sizes, parsed.words) == (["ja"], ["7b"], ["qwen"])


def test_every_card_stores_the_search_document_it_is_matched_against() -> None:
    from marketplace.catalog.search import document

    rows = list(
        ModelCard.objects.annotate(computed=document()).values_list("slug", "search_vector", "computed")
    )
    assert len(rows) > 100
    assert [slug for slug, stored, computed in rows if stored is None or stored != computed] == []


def test_a_search_reads_the_stored_document_not_one_built_per_card() -> None:
    sql = str(search(ModelCard.objects.all(), "qwen instruct").query)
    assert '"catalog_modelcard"."search_vector" @@' in sql
    assert "to_tsvector" not in sql


def test_saving_a_card_its_provider_or_its_license_refreshes_what_search_finds() -> None:
    card = ModelCard.objects.select_related("provider", "license").get(slug="phi-4")
    card.family = "zanzibarian"
    card.save()
    assert names("zanzibarian") == ["Phi-4"]
    card.provider.name = "Quetzalcoatl Labs"
    card.provider.save()
    assert "Phi-4" in names("quetzalcoatl")
    card.license.identifier = "xylophone-license"
    card.license.save()
    assert "Phi-4" in names("xylophone")


def test_look_alikes_are_found_only_for_a_word_no_card_has() -> None:
    exact, look_alike = (
        ModelCard.objects.get(slug="phi-4"),
        ModelCard.objects.get(slug="phi-3.5-mini-instruct"),
    )
    exact.family, look_alike.family = "zanzibarian", "zanzibarish"
    exact.save()
    look_alike.save()
    assert names("zanzibarian") == ["Phi-4"]  # a card has the word: its look-alike is not added
    assert sorted(names("zanzibariam")) == sorted([exact.name, look_alike.name])  # a typo finds both
