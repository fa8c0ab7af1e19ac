from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from marketplace.web import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/auth/", include("rest_framework.urls")),  # sign in and out (session) for people
    path("api/", include("marketplace.api_urls")),
    path("", include("serving.gateway.urls")),  # the invoke API: /v1/…, /model/…, /metrics
    path("", include("marketplace.web.urls")),  # the web UI
]
