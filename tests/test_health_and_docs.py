"""The process's own pages: health (real PostgreSQL and Redis), OpenAPI schema and docs, the admin."""

import pytest
from django.apps import apps
from django.contrib import admin
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from marketplace.catalog.models import ModelCard

pytestmark = pytest.mark.django_db


def test_health_reaches_database_and_redis() -> None:
    cache.delete("healthz")
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert cache.get("healthz") == "ok"  # really written to Redis


def test_health_names_redis_when_it_is_down(settings) -> None:
    # Nothing listens on port 1; changing CACHES makes Django rebuild its cache handlers.
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert "redis" in response.json()["problems"]


def test_openapi_schema_lists_every_endpoint() -> None:
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in ("/api/models/", "/api/instance-types/", "/api/providers/", "/api/subscriptions/",
                 "/api/organizations/", "/api/organizations/{slug}/members/",
                 "/api/organizations/{slug}/quota/", "/api/api-keys/"):  # fmt: skip
        assert path in schema["paths"], path
    assert "ApiKey" in schema["components"]["securitySchemes"]


def test_interactive_docs_are_served_without_a_cdn() -> None:
    page = Client().get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn" not in page.lower()
    asset = Client().get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200


@pytest.mark.parametrize("model", [m for m in apps.get_models() if m in admin.site._registry], ids=str)
def test_admin_changelist_and_add_pages_work_for_every_model(model, platform_admin) -> None:
    platform_admin.is_superuser = True
    platform_admin.save()
    client = Client()
    client.force_login(platform_admin)
    info = (model._meta.app_label, model._meta.model_name)
    assert client.get(reverse("admin:{}_{}_changelist".format(*info))).status_code == 200
    add = client.get(reverse("admin:{}_{}_add".format(*info)))
    assert add.status_code in (200, 403)  # 403: API keys are created through the API only
    instance = model.objects.first()
    if instance is not None:
        assert client.get(reverse("admin:{}_{}_change".format(*info), args=[instance.pk])).status_code == 200


def test_admin_search_on_cards(platform_admin) -> None:
    platform_admin.is_superuser = True
    platform_admin.save()
    client = Client()
    client.force_login(platform_admin)
    response = client.get(reverse("admin:catalog_modelcard_changelist"), {"q": "llama"})
    assert response.status_code == 200
    assert ModelCard.objects.filter(name__icontains="llama").first().name in response.content.decode()
