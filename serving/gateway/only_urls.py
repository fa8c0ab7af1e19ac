"""URLconf of a gateway-only process: the invoke routes and a health check, nothing else."""

from django.urls import include, path

from marketplace.web import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("", include("serving.gateway.urls")),
]
