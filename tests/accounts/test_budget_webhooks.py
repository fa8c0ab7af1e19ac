"""Budget webhooks: signed deliveries, retried with backoff by a real Celery worker against a real local
HTTP server that fails twice and then accepts, every attempt kept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection

from marketplace.accounts import budgets, tasks
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Budget, Organization, WebhookDelivery
from marketplace.celery import app
from tests.accounts.budget_helpers import NOW, spend
from tests.conftest import make_user
from tests.web.conftest import make_deployment


class Receiver:
    """A webhook endpoint on a free local port answering the statuses given, one per request (the last
    one for ever after), and keeping what it received."""

    def __init__(self, statuses: list[int], delay: float = 0) -> None:
        self.statuses = statuses
        self.delay = delay  # seconds before answering
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((dict(self.headers.items()), body))
                time.sleep(receiver.delay)
                status = receiver.statuses[min(len(receiver.received), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks/budget"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For tests that deliver by hand: the deliveries a new alert enqueues are noted, not queued."""
    queued: list[int] = []
    monkeypatch.setattr(tasks.deliver_budget_alert, "delay", queued.append)
    return queued


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver([500, 503, 200])
    yield found
    found.stop()


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def half_spent_budget(organization: Organization, webhook_url: str) -> tuple[Budget, str]:
    """A $10 budget of the organisation alerting at 50% to the webhook, and $6 spent on a deployment of
    it: checking the budget at NOW crosses the threshold. Returns the budget and its signing secret."""
    deployment = make_deployment(organization, name="chat", reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")
    budget, secret = budgets.create_budget(
        organization=organization, deployment=None, monthly_amount_usd=Decimal("10"), thresholds=[50],
        webhook_url=webhook_url, scale_down_at_limit=False, user=None,
    )  # fmt: skip
    spend(deployment, "6")
    return budget, secret


def test_a_failing_webhook_is_retried_with_backoff_until_it_accepts(
    transactional_catalog: None, settings: Any, receiver: Receiver
) -> None:
    settings.BUDGET_WEBHOOK_BACKOFF_SECONDS = 0.2
    settings.BUDGET_WEBHOOK_PRIVATE_ADDRESSES = True  # the receiver listens on this machine
    organization = account_services.create_organization(slug="hooked", name="Hooked", owner=make_user("h"))
    budget, secret = half_spent_budget(organization, receiver.url)
    app.control.purge()  # deliveries other tests queued for alerts of their own must not reach this worker
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, shutdown_timeout=10):
        [alert] = budgets.check_budget(budget, NOW)  # enqueues the delivery on commit (autocommit here)
        wait_for(lambda: WebhookDelivery.objects.filter(delivered=True).exists())

    attempts = list(WebhookDelivery.objects.order_by("attempt"))
    assert [(d.attempt, d.status_code, d.delivered) for d in attempts] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert "answered 500" in attempts[0].error and attempts[2].error == ""
    # The waits double: 0.2 s after the first failure, 0.4 s after the second.
    first, second, third = (d.created_at for d in attempts)
    assert (second - first).total_seconds() >= 0.2 and (third - second).total_seconds() >= 0.4
    assert len(receiver.received) == 3
    for headers, body in receiver.received:
        assert budgets.verify_signature(secret, headers[budgets.SIGNATURE_HEADER], body)
    sent = json.loads(receiver.received[-1][1])
    assert sent["type"] == "budget.threshold_crossed"
    assert (sent["alert_id"], sent["threshold_percent"], sent["spent_usd"]) == (alert.pk, 50, "6.00")


def test_a_redelivered_task_running_beside_the_first_does_not_call_the_webhook_again(
    transactional_catalog: None, settings: Any, no_worker: list[int]
) -> None:
    """The broker hands the delivery task to a second worker while the first is still waiting for the
    webhook's answer (acks_late, the first worker thought lost): the second waits for the first's
    outcome, finds the alert delivered, and calls nothing."""
    settings.BUDGET_WEBHOOK_PRIVATE_ADDRESSES = True
    slow = Receiver([204], delay=1.0)
    try:
        organization = account_services.create_organization(slug="twice", name="Twice", owner=make_user("t"))
        budget, _ = half_spent_budget(organization, slow.url)
        [alert] = budgets.check_budget(budget, NOW)
        start = threading.Barrier(2)
        outcomes: list[Any] = []
        failures: list[BaseException] = []

        def run_task() -> None:
            try:
                start.wait()
                outcomes.append(tasks.deliver_budget_alert.apply(args=[alert.pk]).get())
            except BaseException as error:
                failures.append(error)
            finally:
                connection.close()

        threads = [threading.Thread(target=run_task) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        slow.stop()
    assert failures == []
    assert outcomes == ["delivered", "delivered"]
    assert len(slow.received) == 1
    assert list(WebhookDelivery.objects.values_list("attempt", "delivered")) == [(1, True)]


def test_a_delivered_alert_is_not_sent_again(
    transactional_catalog: None, receiver: Receiver, settings: Any, no_worker: list[int]
) -> None:
    settings.BUDGET_WEBHOOK_PRIVATE_ADDRESSES = True
    receiver.statuses = [204]
    organization = account_services.create_organization(slug="once", name="Once", owner=make_user("o"))
    budget, _ = half_spent_budget(organization, receiver.url)
    [alert] = budgets.check_budget(budget, NOW)  # no worker: delivered by hand below, twice
    assert no_worker == [alert.pk]
    assert budgets.deliver(alert.pk).delivered
    assert budgets.deliver(alert.pk).delivered
    assert len(receiver.received) == 1 and WebhookDelivery.objects.count() == 1


def test_an_internal_address_is_not_called_unless_allowed(
    transactional_catalog: None, receiver: Receiver, no_worker: list[int]
) -> None:
    organization = account_services.create_organization(slug="inside", name="Inside", owner=make_user("i"))
    budget, _ = half_spent_budget(organization, receiver.url)
    [alert] = budgets.check_budget(budget, NOW)
    outcome = budgets.deliver(alert.pk)
    assert (outcome.delivered, outcome.final) == (False, True)  # no retry: it will not change
    assert receiver.received == []
    [attempt] = WebhookDelivery.objects.all()
    assert (
        "internal address (127.0.0.1)" in attempt.error
        and "BUDGET_WEBHOOK_PRIVATE_ADDRESSES" in attempt.error
    )


@pytest.mark.django_db
def test_a_host_that_resolves_to_an_internal_address_only_when_called_is_not_called(
    acme: Any, receiver: Receiver, no_worker: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers a public address to the check and an internal one to the
    connection. The address connected to is what counts."""
    budget, _ = half_spent_budget(acme, receiver.url)
    [alert] = budgets.check_budget(budget, NOW)
    monkeypatch.setattr(budgets, "private_address_refusal", lambda url: "")  # the check saw a public one
    outcome = budgets.deliver(alert.pk)
    assert (outcome.delivered, outcome.final) == (False, True)
    assert receiver.received == []
    [attempt] = WebhookDelivery.objects.all()
    assert "led to an internal address (127.0.0.1)" in attempt.error


# Signatures, as a receiver checks them.

SECRET = "whsec_test-secret"
BODY = b'{"type": "budget.threshold_crossed"}'


def test_a_signature_verifies_over_the_exact_body_and_time() -> None:
    header = budgets.sign(SECRET, 1_700_000_000, BODY)
    assert budgets.verify_signature(SECRET, header, BODY, now=1_700_000_010)


def test_a_tampered_body_or_another_secret_fails_verification() -> None:
    header = budgets.sign(SECRET, 1_700_000_000, BODY)
    assert not budgets.verify_signature(SECRET, header, BODY + b" ", now=1_700_000_010)
    assert not budgets.verify_signature("whsec_other", header, BODY, now=1_700_000_010)


def test_a_replayed_old_delivery_fails_verification() -> None:
    header = budgets.sign(SECRET, 1_700_000_000, BODY)
    assert not budgets.verify_signature(SECRET, header, BODY, now=1_700_000_000 + 301)


def test_a_malformed_signature_header_fails_verification() -> None:
    assert not budgets.verify_signature(SECRET, "v1=abc", BODY)
    assert not budgets.verify_signature(SECRET, "t=soon,v1=abc", BODY)
