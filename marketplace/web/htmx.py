"""The one htmx convention of the web UI: a page answers an htmx request that targets one of its parts
with just that part's template, so every part also has a full-page URL that works without JavaScript."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def render_page(
    request: HttpRequest, page: str, context: dict[str, Any], *, parts: dict[str, str] | None = None
) -> HttpResponse:
    """`page`, or the template of the part (by element id, from `parts`) that an htmx request targets."""
    if request.headers.get("HX-Request"):
        part = (parts or {}).get(request.headers.get("HX-Target", ""))
        if part is not None:
            return render(request, part, context)
    return render(request, page, context)
