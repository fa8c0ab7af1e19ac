"""Every page's SQL query count, pinned: adding rows must not add queries (no N+1), and a change that
adds a query to a page has to say so here."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from marketplace.accounts.services import create_api_key
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving.models import UsageRecord
from tests.conftest import make_user
from tests.web.conftest import make_deployment

# page → queries (session and user included); each is measured with few rows and with many.
PINNED = {
    "/": 8,  # with the instance types (what is deployable here) and every facet's counts (one query)
    "/?q=instruct&task=chat&fits=aws-g5-xlarge&sort=-parameters": 11,  # + stop words, the search on its own
    "/models/llama-3.1-8b-instruct/": 8,  # with the live deployments that hold the subscription
    "/deployments/": 5,
    "/deployments/new/?model=llama-3.1-8b-instruct": 12,  # the quota's use: GPUs of training runs too
    "/deployments/{pk}/": 8,  # with the LoRA adapters served beside its model
    "/deployments/{pk}/usage/?range=24h": 5,  # with the latency of the window's calls, each weighing the same
    "/deployments/{pk}/playground/": 6,  # with whether the person is a member (may chat)
    "/api-keys/": 7,  # with the live deployment and router names a key may be limited to
    "/organization/": 11,  # the quota's use: GPUs of training runs too
    "/platform/": 9,  # with the latency of the window's calls, each weighing the same
    "/platform/organizations/acme/quota/": 12,  # the quota's use: GPUs of training runs too
}


def queries(browser, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = browser.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(captured)


def add_rows(acme, owner, count: int) -> None:
    """`count` more deployments, keys, members and usage records in acme."""
    for _ in range(count):
        tag = uuid.uuid4().hex[:8]
        deployment = make_deployment(acme, name=f"d-{tag}", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
        create_api_key(organization=acme, name=f"k-{tag}", created_by=owner, expires_at=None)
        acme.memberships.create(user=make_user(f"u-{tag}"), role="member")
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex, organization=acme, deployment=deployment, model="x", route="r",
            status_code=200, created_at=timezone.now(),
        )  # fmt: skip


@pytest.mark.parametrize("url", list(PINNED))
def test_query_count_is_pinned_and_flat(url, browser_for, platform_admin, owner, acme, subscribed) -> None:
    acme.memberships.create(user=platform_admin, role="owner")
    browser = browser_for(platform_admin)
    pk = make_deployment(acme, name="pinned", reserved_gpus=1).pk
    add_rows(acme, owner, 1)
    cache.clear()  # the catalog's facet options are cached; count the queries of a cold cache too
    browser.get(url.format(pk=pk))
    few = queries(browser, url.format(pk=pk))
    for card in ModelCard.objects.filter(cpu_capable=True):
        subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    add_rows(acme, owner, 6)
    many = queries(browser, url.format(pk=pk))
    assert (few, many) == (PINNED[url], PINNED[url])
