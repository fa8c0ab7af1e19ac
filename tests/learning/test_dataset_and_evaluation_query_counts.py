"""The dataset and evaluation lists (REST and web) cost the same number of queries for one row as for
many: no N+1. A change that adds a query says so here."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import AbstractUser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from learning import datasets, evaluations
from learning.choices import DatasetSource
from learning.models import EvaluationItem
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

PINNED = {"/api/datasets/": 2, "/api/evaluations/": 2, "/datasets/": 6, "/evaluations/": 8}
RECORDS = [{"messages": [{"role": "user", "content": "Hi"}], "reference": "Hello"}]


def add(acme: Organization, owner: AbstractUser, store: FolderStore, count: int) -> None:
    for _ in range(count):
        dataset = datasets.save(
            store, organization_id=acme.pk, name="hi", records=RECORDS, source=DatasetSource.UPLOAD,
            heldout_fraction=0.0, seed=0,
        )  # fmt: skip
        evaluation = evaluations.create_evaluation(
            organization=acme, user=owner, dataset=dataset, deployments=["small"],
            scorer_specs=[{"kind": "exact_match"}], part="all",
        )  # fmt: skip
        EvaluationItem.objects.create(
            evaluation=evaluation, deployment="small", item_id="1", started_at=timezone.now(),
            latency_ms=10, status_code=200, answer="Hello", scores={"exact_match": 1.0},
        )  # fmt: skip


def count(client: APIClient | Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        answer = client.get(url)
    assert answer.status_code == 200, (url, answer.status_code)
    return len(captured)


@pytest.mark.parametrize("url", list(PINNED))
def test_a_list_costs_the_same_queries_for_one_row_as_for_many(
    url: str, acme: Organization, owner: AbstractUser, configured_store: FolderStore,
    client_for: Callable[[AbstractUser | None], APIClient],
) -> None:  # fmt: skip
    make_deployment(acme, "small")
    client: APIClient | Client
    if url.startswith("/api/"):
        client = client_for(owner)
    else:
        client = Client()
        client.force_login(owner)
    add(acme, owner, configured_store, 1)
    client.get(url)  # the first page of a session also fills the cached budget banner (one query, once)
    one = count(client, url)
    add(acme, owner, configured_store, 5)
    assert (one, count(client, url)) == (PINNED[url], PINNED[url])
