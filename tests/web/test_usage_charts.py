"""A deployment's usage charts say the same thing whatever window shows the same calls: the mean latency
weighs every call alike (not every bucket), the median and 95th percentile stand beside it, the axes
carry their units and dated times, and every bar has its own tooltip."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from serving.models import UsageRecord


def record(organization, deployment, *, minutes_ago: float, latency_ms: int) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, organization=organization, deployment=deployment, model="chat",
        route="chat.completions", prompt_tokens=5, completion_tokens=5, latency_ms=latency_ms,
        status_code=200, created_at=timezone.now() - timedelta(minutes=minutes_ago),
    )  # fmt: skip


@pytest.fixture
def calls(acme, acme_deployment) -> None:
    """Nine fast calls a few minutes ago and one slow call some forty minutes ago: a mean of bucket
    means would say 550 ms over the hour; the calls' own mean is 190 ms."""
    for _ in range(9):
        record(acme, acme_deployment, minutes_ago=2, latency_ms=100)
    record(acme, acme_deployment, minutes_ago=40, latency_ms=1000)


def latency_caption(page: str) -> str:
    figure = page.split('data-chart="latency"', 1)[1].split("</figure>", 1)[0]
    return re.search(r'class="chart-total">([^<]*)<', figure).group(1)


@pytest.mark.parametrize("window", ["1h", "24h", "30d"])
def test_the_mean_latency_weighs_calls_not_buckets_in_every_window(
    window, browser_for, member, acme_deployment, calls
) -> None:
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": window}).text
    assert latency_caption(page) == "mean 190 ms · p50 100 ms · p95 595 ms"


def test_each_bar_has_a_tooltip_with_its_dated_span_and_figures(
    browser_for, member, acme_deployment, calls
) -> None:
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": "1h"}).text
    latency = page.split('data-chart="latency"', 1)[1].split("</figure>", 1)[0]
    tooltips = re.findall(r"<title>([^<]*)</title>", latency)
    assert len(tooltips) == 60  # one per minute, empty minutes included
    busy = [t for t in tooltips if "9 calls" in t]
    assert len(busy) == 1 and "mean 100 ms, p50 100 ms, p95 100 ms" in busy[0]
    when = timezone.localtime(timezone.now() - timedelta(minutes=2))
    assert busy[0].startswith(f"{when.day} {when:%b} ")  # the date, then the minute's span
    assert sum("no calls" in t for t in tooltips) == 58


def test_axes_carry_units_and_dated_times(browser_for, member, acme_deployment, calls) -> None:
    # By minute, the slow call has a bar of its own: the tallest, which the vertical axis names.
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": "1h"}).text
    latency = page.split('data-chart="latency"', 1)[1].split("</figure>", 1)[0]
    assert "(ms)" in latency and 'class="tick peak">1,000 ms<' in latency
    today = timezone.localtime()
    last = re.search(r'class="tick end">([^<]*)<', latency).group(1)
    assert re.fullmatch(rf"{today.day} {today:%b} \d\d:\d\d", last), last  # the date, then the minute


def test_a_window_without_calls_says_so(browser_for, member, acme_deployment) -> None:
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": "24h"}).text
    assert latency_caption(page) == "no calls"


def test_outsider_sees_no_usage_chart(browser_for, outsider, acme_deployment, calls) -> None:
    response = browser_for(outsider).get(f"/deployments/{acme_deployment.pk}/usage/", {"range": "1h"})
    assert response.status_code == 404 and "190" not in response.text
