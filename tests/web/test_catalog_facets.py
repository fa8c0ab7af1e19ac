"""The catalog page finds what people type and narrows by facets that show counts: several values per
facet (any of them), every facet at once (all of them), no option that would show nothing, a "deployable
here" badge and facet by the platform's own rule, and "Newest" with undated cards last."""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup

from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.web.fitting import deployable_here

CATALOG = "/"


def page(client, status=200, **params) -> BeautifulSoup:  # type: ignore[no-untyped-def]
    response = client.get(CATALOG, params)
    assert response.status_code == status
    return BeautifulSoup(response.text, "html.parser")


def result_count(html: BeautifulSoup) -> int:
    return int(html.select_one("#result-count").text.split()[0])


def shown_names(html: BeautifulSoup) -> list[str]:
    return [link.text for link in html.select(".card h2 a")]


def options(html: BeautifulSoup, facet: str) -> dict[str, tuple[str, int, bool]]:
    """value → (label, count, ticked) of a facet's options."""
    found = {}
    for label in html.select(f"#facet-{facet} label.facet-option"):
        box = label.select_one("input")
        found[box["value"]] = (
            label.select_one(".facet-label").text,
            int(label.select_one(".facet-count").text),
            box.has_attr("checked"),
        )
    return found


def test_a_language_name_finds_every_card_in_that_language(client, db) -> None:
    expected = ModelCard.objects.filter(languages__overlap=["ja", "mul"]).count()
    assert expected > 10  # the issue counted 24; more cards may join
    assert result_count(page(client, q="japanese")) == expected


def test_language_options_show_the_name_and_the_code(client, db) -> None:
    label, count, _ = options(page(client), "language")["ja"]
    assert label == "Japanese (ja)"
    assert count == ModelCard.objects.filter(languages__contains=["ja"]).count()


def test_a_size_finds_that_size_not_a_longer_number(client, db) -> None:
    names = shown_names(page(client, q="7b"))
    assert "Mistral 7B Instruct v0.3" in names
    assert not [name for name in names if re.search(r"(27|1\.7)B", name)]


def test_a_search_lists_the_best_match_first(client, db) -> None:
    assert shown_names(page(client, q="mistral 7b"))[0] == "Mistral 7B Instruct v0.3"
    # The sort the form sends by default is no sort, so a search typed later still ranks.
    html = page(client)
    assert html.select_one("#f-sort option[selected]")["value"] == ""
    assert shown_names(page(client, q="mistral 7b", sort=""))[0] == "Mistral 7B Instruct v0.3"
    assert shown_names(page(client, sort=""))[:2] == ["ALMA-13B-R", "AdaptLLM Finance Chat"]


def test_no_option_would_show_nothing(client, db) -> None:
    html = page(client, task="embedding")
    for facet in ("task", "provider", "license", "language", "domain", "modality", "size", "deployable"):
        for value, (_, count, ticked) in options(html, facet).items():
            assert count > 0 or ticked, (facet, value)
    # The example was "Input: audio" offered with no card: an input is offered when cards take it.
    offered = {value: count for value, (_, count, _) in options(page(client), "modality").items()}
    taken = {value: ModelCard.objects.filter(modalities_in__contains=[value]).count() for value in offered}
    assert offered == taken and all(offered.values())
    assert set(offered) == {m for card in ModelCard.objects.all() for m in card.modalities_in}


def test_each_option_counts_the_models_it_would_show(client, db) -> None:
    html = page(client, q="instruct", domain="medical")
    checked = 0
    for facet in ("task", "provider", "size"):
        for value, (_, count, _) in options(html, facet).items():
            assert result_count(page(client, q="instruct", domain="medical", **{facet: value})) == count
            checked += 1
    assert checked > 5


def test_several_values_of_a_facet_show_models_with_any_of_them(client, db) -> None:
    html = page(client, task=["embedding", "reranking"])
    expected = ModelCard.objects.filter(tasks__overlap=["embedding", "reranking"]).count()
    assert result_count(html) == expected
    assert options(html, "task")["embedding"][2] and options(html, "task")["reranking"][2]
    # Other values of the ticked facet keep counting the models they would add.
    chat = ModelCard.objects.filter(tasks__overlap=["chat", "embedding", "reranking"]).count()
    assert result_count(page(client, task=["embedding", "reranking", "chat"])) == chat


def test_values_of_different_facets_must_all_hold(client, db) -> None:
    expected = ModelCard.objects.filter(languages__contains=["ja"], tasks__contains=["embedding"]).count()
    assert expected > 0
    assert result_count(page(client, language="ja", task="embedding")) == expected


def test_newest_first_puts_undated_models_last(client, db) -> None:
    dated = ModelCard.objects.exclude(release_date=None).count()
    names = []
    for number in range(1, 6):
        names += shown_names(page(client, sort="-release_date", page=str(number)))
    cards = {card.name: card for card in ModelCard.objects.all()}
    dates = [cards[name].release_date for name in names]
    assert all(date is not None for date in dates[:dated]) and all(date is None for date in dates[dated:])
    assert dates[:dated] == sorted(dates[:dated], reverse=True)  # type: ignore[type-var]


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_the_deployable_badge_and_facet_follow_the_platforms_rule(client, db, settings, backend) -> None:
    settings.SERVING_BACKEND = backend
    if backend == "kubernetes":  # a cluster of small GPUs only, so that some models fit nowhere
        InstanceType.objects.filter(tensor_parallel_memory_gb__gt=48).delete()
    instance_types = list(InstanceType.objects.all())
    expected = {card.name for card in ModelCard.objects.all() if deployable_here(card, instance_types)}
    assert 0 < len(expected) < ModelCard.objects.count()
    html = page(client, deployable="yes", sort="name")
    assert result_count(html) == len(expected)
    assert set(shown_names(html)) <= expected
    for card in page(client).select(".card"):
        name = card.select_one("h2 a").text
        assert bool(card.select_one(".tag.deployable")) == (name in expected), name


def test_a_model_that_cannot_run_here_says_why_on_its_badge(client, db, settings) -> None:
    settings.SERVING_BACKEND = "local"
    card = page(client, q="llama 3.1 405b").select_one(".card")
    assert "has no GPU" in card.select_one(".tag.not-deployable")["title"]


def test_a_bad_facet_value_is_named_and_shows_nothing(client, db) -> None:
    html = page(client, task=["chat", "dancing"], deployable="maybe", status=400)
    alert = html.select_one('[role="alert"]').text
    assert "Task: “dancing” is not one of the choices" in alert and "This platform: “maybe”" in alert
    assert result_count(html) == 0


def test_an_overlong_search_is_refused_in_words(client, db) -> None:
    alert = page(client, q="x" * 201, status=400).select_one('[role="alert"]').text
    assert "Search: Search for at most 200 characters." in alert


def test_htmx_results_refresh_the_facet_counts(client, db) -> None:
    response = client.get(CATALOG, {"task": "reranking"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="results")
    html = BeautifulSoup(response.text, "html.parser")
    assert html.select_one("#facet-options")["hx-swap-oob"] == "true"
    assert html.select_one("#filters-active").text.strip() == "(1 active)"
    assert "<html" not in response.text


def test_the_filters_fold_says_how_many_are_active(client, db) -> None:
    html = page(client, task=["chat", "embedding"], language="ja", fits="aws-g5-xlarge")
    assert html.select_one("#filter-fold > summary").text.strip() == "Filters (4 active)"


def test_an_outsider_sees_the_same_catalog_as_a_member(browser_for, member, outsider) -> None:
    as_member = browser_for(member).get(CATALOG, {"q": "qwen", "deployable": "yes"}).text
    as_outsider = browser_for(outsider).get(CATALOG, {"q": "qwen", "deployable": "yes"}).text
    member_html = BeautifulSoup(as_member, "html.parser")
    outsider_html = BeautifulSoup(as_outsider, "html.parser")
    assert shown_names(member_html) == shown_names(outsider_html)
    assert options(member_html, "task") == options(outsider_html, "task")
