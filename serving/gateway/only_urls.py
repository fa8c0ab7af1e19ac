"""URLconf of a gateway-only process: the invoke routes and a health check, nothing else."""

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from marketplace.web import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("", include("serving.gateway.urls")),
]


def not_found(request: HttpRequest, exception: Any = None) -> JsonResponse:
    """A gateway serves no pages: an unknown path is a plain 404 (the web's styled page links to pages
    this process does not have)."""
    return JsonResponse(
        {"error": {"message": f"No invoke route at {request.path}: see /api/docs/ on the web address."}},
        status=404,
    )


handler404 = not_found
