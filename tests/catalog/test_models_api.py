"""GET /api/models/ and friends: search, every filter, ordering, pagination, bad filters, query counts."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from marketplace.catalog.models import ModelCard

pytestmark = pytest.mark.django_db


def get(path: str, **params: Any) -> Any:
    response = APIClient().get(path, params)
    assert response.status_code == 200, response.content
    return response.json()


def slugs(**params: Any) -> set[str]:
    return {row["slug"] for row in get("/api/models/", page_size=100, **params)["results"]}


def test_list_is_paginated_with_a_count() -> None:
    page = get("/api/models/", page_size=10)
    assert page["count"] == ModelCard.objects.count()
    assert len(page["results"]) == 10
    assert page["next"]


def test_free_text_search_matches_every_word() -> None:
    found = slugs(q="llama 70b")
    assert "llama-3.1-70b-instruct" in found
    assert all("70b" in s or "70" in s for s in found)


def test_search_finds_by_repo_and_provider_name() -> None:
    assert "all-minilm-l6-v2" in slugs(q="sentence-transformers/all-MiniLM")
    assert slugs(q="Mistral AI")


def test_search_is_the_catalog_pages_search_language_names_included() -> None:
    listed = set(ModelCard.objects.filter(languages__contains=["ja"]).values_list("slug", flat=True))
    assert len(listed) > 10
    assert listed <= slugs(q="japanese")


def test_search_lists_the_best_match_first_unless_an_ordering_is_asked() -> None:
    assert get("/api/models/", q="mistral 7b")["results"][0]["name"] == "Mistral 7B Instruct v0.3"
    by_name = [row["name"] for row in get("/api/models/", q="mistral 7b", ordering="name")["results"]]
    assert by_name == sorted(by_name)


def test_search_with_no_match_is_empty() -> None:
    assert get("/api/models/", q="zzzz-no-such-model")["count"] == 0


@pytest.mark.parametrize(
    ("param", "value", "column"),
    [("task", "embedding", "tasks"), ("domain", "medical", "domains"), ("language", "fr", "languages")],
)
def test_array_filters(param: str, value: str, column: str) -> None:
    found = slugs(**{param: value})
    expected = set(
        ModelCard.objects.filter(**{f"{column}__contains": [value]}).values_list("slug", flat=True)
    )
    assert found == expected and found


def test_modality_filter_finds_vision_models() -> None:
    found = slugs(modality="image")
    assert found and all("image" in ModelCard.objects.get(slug=s).modalities_in for s in found)


def test_provider_and_license_filters() -> None:
    assert {ModelCard.objects.get(slug=s).provider.slug for s in slugs(provider="qwen")} == {"qwen"}
    assert {ModelCard.objects.get(slug=s).license.identifier for s in slugs(license="mit")} == {"mit"}


def test_parameter_range_in_billions() -> None:
    found = slugs(parameters_min=7, parameters_max=9)
    assert found
    for slug in found:
        assert 7e9 <= ModelCard.objects.get(slug=slug).parameters <= 9e9


def test_context_length_range() -> None:
    found = slugs(context_length_min=100_000)
    assert found and all(ModelCard.objects.get(slug=s).context_length >= 100_000 for s in found)
    assert not slugs(context_length_min=100_000) & slugs(context_length_max=99_999)


def test_cpu_capable_filter() -> None:
    assert slugs(cpu_capable="true") == {"smollm2-135m-instruct", "all-minilm-l6-v2"}


def test_filters_combine() -> None:
    found = slugs(task="chat", fits="aws-g5-xlarge", language="en")
    assert "llama-3.1-8b-instruct" in found
    assert "llama-3.1-70b-instruct" not in found


def test_ordering_by_parameters_both_ways() -> None:
    ascending = [
        r["parameters"] for r in get("/api/models/", ordering="parameters", page_size=100)["results"]
    ]
    assert ascending == sorted(ascending)
    descending = [
        r["parameters"] for r in get("/api/models/", ordering="-parameters", page_size=5)["results"]
    ]
    assert descending == sorted(descending, reverse=True)
    assert descending[0] == max(ModelCard.objects.values_list("parameters", flat=True))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"task": "telepathy"}, "task"),
        ({"parameters_min": "lots"}, "parameters_min"),
        ({"context_length_min": "long"}, "context_length_min"),
        ({"fits": "no-such-instance"}, "fits"),
        ({"cpu_capable": "maybe"}, "cpu_capable"),
        ({"domain": "astrology"}, "domain"),
    ],
)
def test_a_bad_filter_is_a_400_naming_the_field(params: dict[str, str], field: str) -> None:
    response = APIClient().get("/api/models/", params)
    assert response.status_code == 400
    assert field in response.json()


def test_unknown_model_is_404() -> None:
    assert APIClient().get("/api/models/no-such-model/").status_code == 404


def test_detail_shows_license_terms_and_their_hash() -> None:
    detail = get("/api/models/llama-3.1-8b-instruct/")
    assert detail["license"]["identifier"] == "llama3.1"
    assert "by subscribing you accept them" in detail["license_terms"]
    assert len(detail["license_sha256"]) == 64


def test_instance_types_and_providers_list() -> None:
    assert get("/api/instance-types/")["count"] >= 15
    providers = get("/api/providers/", page_size=100)["results"]
    assert all(p["model_count"] >= 1 for p in providers)
    assert get("/api/instance-types/", provider="gcp")["count"] >= 1


@pytest.mark.parametrize("query", [{}, {"q": "instruct"}, {"task": "chat", "fits": "aws-p5-48xlarge"}])
def test_query_count_does_not_grow_with_page_size(query: dict[str, str]) -> None:
    client = APIClient()
    counts = []
    for page_size in (5, 100):
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/models/", {**query, "page_size": page_size}).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 3


def test_detail_query_count_is_pinned() -> None:
    with CaptureQueriesContext(connection) as queries:
        assert APIClient().get("/api/models/llama-3.1-8b-instruct/").status_code == 200
    assert len(queries) == 2  # the card with provider and license; its fitting instance types


def test_the_fast_list_rows_equal_the_generic_serializer_on_every_card() -> None:
    from marketplace.catalog.api.serializers import ModelCardListSerializer, ModelCardSerializer

    cards = list(ModelCard.objects.select_related("provider", "license"))
    fast = ModelCardListSerializer(cards, many=True).data
    generic = ModelCardSerializer(cards, many=True).data
    assert [dict(row) for row in fast] == [dict(row) for row in generic]
