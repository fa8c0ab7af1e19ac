"""What a card's deployment can be called with: the invoke routes follow from its tasks by one rule, and a
card the pinned engine cannot serve has no routes and says why."""

import pytest

from marketplace.catalog.choices import ROUTES, ROUTES_BY_TASK, TASKS
from marketplace.catalog.models import ModelCard, card_routes

pytestmark = pytest.mark.django_db


def card(
    tasks: list[str], modalities_in: tuple[str, ...] = ("text",), modalities_out: tuple[str, ...] = ("text",)
) -> ModelCard:
    return ModelCard(
        name="Example",
        tasks=tasks,
        modalities_in=list(modalities_in),
        modalities_out=list(modalities_out),
    )


def test_a_chat_model_serves_chat_completions_responses_and_completions() -> None:
    assert card(["chat", "text-generation"]).routes == ("chat.completions", "responses", "completions")


def test_a_base_text_generator_serves_completions_only() -> None:
    assert card(["text-generation"]).routes == ("completions",)


def test_an_embedding_model_serves_embeddings_only() -> None:
    assert card(["embedding"], modalities_out=("embedding",)).routes == ("embeddings",)


def test_a_reranker_serves_rerank_and_score() -> None:
    assert card(["reranking"], modalities_out=("score",)).routes == ("rerank", "score")


def test_a_speech_model_that_translates_serves_transcriptions_and_translations() -> None:
    whisper = card(["speech-recognition", "translation"], modalities_in=("audio",))
    assert whisper.routes == ("audio.transcriptions", "audio.translations")


def test_a_speech_model_that_does_not_translate_only_transcribes() -> None:
    assert card(["speech-recognition"], modalities_in=("audio",)).routes == ("audio.transcriptions",)


def test_a_text_translation_model_completes_text() -> None:
    assert card(["translation"]).routes == ("completions",)


def test_a_vision_language_chat_model_serves_chat() -> None:
    assert card(["vision-language", "chat"], modalities_in=("text", "image")).routes == (
        "chat.completions",
        "responses",
        "completions",
    )


@pytest.mark.parametrize(("task", "output"), [("image-generation", "image"), ("text-to-speech", "audio")])
def test_a_card_whose_output_the_engine_cannot_produce_has_no_routes_and_says_why(
    task: str, output: str
) -> None:
    model = card([task], modalities_out=(output,))
    assert (model.servable, model.routes) == (False, ())
    assert model.not_servable_reason.startswith("Example is not yet servable here: the pinned engine")


def test_a_card_of_an_architecture_the_engine_lacks_says_so() -> None:
    model = card(["embedding"], modalities_out=("embedding",))
    model.engine_unsupported = "vLLM has no ESM architecture"
    assert (model.servable, model.routes) == (False, ())
    assert model.not_servable_reason == "Example is not yet servable here: vLLM has no ESM architecture."


def test_the_rule_names_only_known_routes_and_tasks() -> None:
    assert set(ROUTES_BY_TASK) <= set(TASKS)
    assert {route for routes in ROUTES_BY_TASK.values() for route in routes} <= set(ROUTES)
    assert set(card_routes(list(TASKS), ["text", "audio"])) <= set(ROUTES)


def test_every_servable_card_of_the_catalog_serves_at_least_one_route() -> None:
    assert [c.slug for c in ModelCard.objects.all() if c.servable and not c.routes] == []
