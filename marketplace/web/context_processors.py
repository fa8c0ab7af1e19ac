from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from marketplace.web import current


def navigation(request: HttpRequest) -> dict[str, Any]:
    """The header's organisation switcher. Lazy: pages that never show the header pay no query."""
    if not hasattr(request, "user") or not request.user.is_authenticated:
        return {}
    return {
        "current_organization": lambda: current.organization(request),
        "organization_choices": lambda: list(current.choices(request)),
    }
