"""Budgets and idle deployments on every page: the banner of the current organisation's crossed budgets,
the idle flags of a list of deployments, and the latest weekly idle summary.

The banner and the summary are read from the cache their periodic tasks keep (no query; one, once, to
rebuild them from the database when the cache lost them); the idle flags
ride on the list's own query (one Subquery column) plus one cost query for the idle ones."""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import QuerySet

from marketplace.accounts import budgets
from serving import idle

register = template.Library()


@register.inclusion_tag("web/_budget_banner.html", takes_context=True)
def budget_banner(context: Any) -> dict[str, Any]:
    organization = context.get("current_organization")
    if callable(organization):
        organization = organization()
    lines = budgets.banner(organization.pk) if organization is not None else []
    return {"lines": lines, "organization": organization}


@register.simple_tag
def idle_rows(deployments: QuerySet[Any]) -> list[Any]:
    """The deployments (still one query), each with `.idle`: an idle.Idle, or None when it is not idle."""
    rows = list(idle.with_last_request(deployments))
    flags = idle.flag(rows)
    for row in rows:
        row.idle = flags.get(row.pk)  # type: ignore[attr-defined]
    return rows


@register.simple_tag
def idle_summary(organization: Any) -> dict[str, Any] | None:
    return idle.latest_summary(organization.pk) if organization is not None else None
