"""Every card says when its model was first published, so "Newest" means something; the few whose date
could not be established are listed here, and they sort last."""

from __future__ import annotations

import datetime

import pytest

from marketplace.catalog.loader import read_catalog
from marketplace.catalog.models import ModelCard

pytestmark = pytest.mark.django_db

# Release not established to the month from the model's card, repository or its publisher's announcement.
UNDATED = {
    "all-minilm-l12-v2",
    "all-minilm-l6-v2",
    "bielik-11b-v2.3-instruct",
    "distiluse-base-multilingual-cased-v2",
    "eurollm-1.7b-instruct",
    "gemma2-9b-cpt-sea-lionv3-instruct",
    "llama3-med42-70b",
    "llama3-med42-8b",
    "mistral-nemo-minitron-8b-instruct",
    "multilingual-e5-large",
    "paraphrase-multilingual-minilm-l12-v2",
    "paraphrase-multilingual-mpnet-base-v2",
    "salamandra-2b-instruct",
    "salamandra-7b",
    "salamandra-7b-instruct",
    "stablelm-2-1-6b-chat",
}


def test_every_card_has_a_release_date_but_the_listed_few() -> None:
    cards = [card for provider in read_catalog().providers for card in provider.models]
    assert {card.slug for card in cards if card.release_date is None} == UNDATED
    assert len(UNDATED) < len(cards) / 5


def test_release_dates_are_of_the_era_of_these_models() -> None:
    dated = ModelCard.objects.exclude(release_date=None)
    assert not dated.filter(release_date__lt=datetime.date(2019, 1, 1))
    assert not dated.filter(release_date__gt=datetime.date.today())


def test_a_model_is_not_released_before_the_model_it_is_built_on() -> None:
    by_repo = {card.huggingface_repo.lower(): card for card in ModelCard.objects.exclude(release_date=None)}
    pairs = [
        (card, by_repo[card.base_model.lower()])
        for card in by_repo.values()
        if card.base_model.lower() in by_repo
    ]
    assert pairs  # the check below could fail
    for card, base in pairs:
        assert card.release_date >= base.release_date, (card.slug, base.slug)  # type: ignore[operator]
