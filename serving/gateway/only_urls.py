"""URLconf of a gateway-only process: the invoke routes and a health check, nothing else."""

from django.urls import include, path

from marketplace.web import views as web_views

urlpatterns = [
    path("healthz", web_views.healthz, name="healthz"),
    path("", include("serving.gateway.urls")),
]
