"""Periodic and background work about organisations' money: budget checks, budget webhooks, and the
weekly summary of idle deployments. Each task takes ids and re-reads rows, so running one twice is
harmless."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings

from marketplace.accounts import budgets

log = logging.getLogger(__name__)


@shared_task(acks_late=True, expires=120)
def check_budgets() -> dict[str, int]:
    """Alert every budget threshold crossed this month, once each (budgets.check_budget)."""
    counts = budgets.check_budgets()
    if counts["alerts"]:
        log.info("check_budgets: %d new budget alert(s)", counts["alerts"])
    return counts


@shared_task(bind=True, acks_late=True)
def deliver_budget_alert(self: Any, alert_id: int) -> str:
    """Send one alert to its budget's webhook; a failure is tried again after an exponentially growing
    wait (BUDGET_WEBHOOK_BACKOFF_SECONDS, doubled each time), BUDGET_WEBHOOK_ATTEMPTS attempts in all.
    Every attempt is kept as a WebhookDelivery."""
    outcome = budgets.deliver(alert_id)
    if outcome.final:
        return "delivered" if outcome.delivered else "given up"
    if outcome.attempt >= settings.BUDGET_WEBHOOK_ATTEMPTS:
        log.warning("budget alert %s: webhook not delivered after %d attempts", alert_id, outcome.attempt)
        return "given up"
    raise self.retry(countdown=budgets.backoff_seconds(outcome.attempt), max_retries=None)


@shared_task(acks_late=True, expires=3600)
def summarize_idle_deployments() -> int:
    """Write this week's summary of idle deployments for every organisation that has one not yet."""
    from serving import idle

    written = idle.summarize_week()
    if written:
        log.info("summarize_idle_deployments: %d organisation(s) summarized", written)
    return written
