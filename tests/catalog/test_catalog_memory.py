"""A catalog page is freed when its request ends, by reference counting, not left to the cyclic garbage
collector (whose full passes set the API's tail latency: bench/catalog.py)."""

import gc
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from marketplace.catalog.models import ModelCard

pytestmark = pytest.mark.django_db


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def live_cards() -> int:
    # type(), not isinstance(): the heap may hold a dead weakref proxy, and isinstance() asks it for its
    # __class__, which raises ReferenceError.
    return sum(1 for obj in gc.get_objects() if type(obj) is ModelCard)


@pytest.mark.parametrize("query", [{"page_size": 100}, {"task": "chat", "q": "instruct", "page_size": 100}])
def test_a_page_of_cards_is_freed_as_the_request_ends(collector_off: None, query: dict[str, object]) -> None:
    client = APIClient()
    before = live_cards()
    response = client.get("/api/models/", query)
    assert response.status_code == 200 and len(response.json()["results"]) > 10
    del response
    assert live_cards() == before


def test_the_browsable_api_still_renders_the_page() -> None:
    response = APIClient().get("/api/models/", {"page_size": 5}, HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and b"Model Card" in response.content
