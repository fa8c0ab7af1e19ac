from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet
from rest_framework import permissions, viewsets

from marketplace.catalog.api.serializers import (
    InstanceTypeSerializer,
    ModelCardDetailSerializer,
    ModelCardListSerializer,
    ProviderSerializer,
)
from marketplace.catalog.filtersets import InstanceTypeFilterSet, ModelCardFilterSet
from marketplace.catalog.models import InstanceType, ModelCard, Provider


class CatalogViewSet(viewsets.ReadOnlyModelViewSet):
    """The catalog is public reading: anyone may browse before signing in."""

    permission_classes = [permissions.AllowAny]
    lookup_field = "slug"


class ModelCardViewSet(CatalogViewSet):
    """Model cards. Filter with `q` (free text), `task`, `provider`, `license`, `language`, `domain`,
    `modality`, `parameters_min`/`parameters_max` (billions), `context_length_min`/`_max`, `fits`
    (instance type slug), `cpu_capable`, `gated`; order with `ordering`."""

    queryset = ModelCard.objects.select_related("provider", "license").defer("search_text")
    lookup_value_regex = r"[a-z0-9.-]+"
    filterset_class = ModelCardFilterSet
    ordering_fields = ["name", "parameters", "context_length", "release_date", "provider__name"]
    ordering = ["name"]

    def get_serializer_class(self) -> Any:
        return ModelCardDetailSerializer if self.action == "retrieve" else ModelCardListSerializer


class InstanceTypeViewSet(CatalogViewSet):
    """GPU instance types. Filter with `fits` (model slug), `provider`, `gpu_model`, `gpu_count_min`."""

    queryset = InstanceType.objects.all()
    serializer_class = InstanceTypeSerializer
    filterset_class = InstanceTypeFilterSet
    ordering_fields = ["name", "gpu_count", "gpu_memory_gb", "hourly_price_usd"]
    ordering = ["provider", "gpu_count", "name"]


class ProviderViewSet(CatalogViewSet):
    serializer_class = ProviderSerializer
    ordering_fields = ["name", "model_count"]
    ordering = ["name"]

    def get_queryset(self) -> QuerySet[Provider]:
        return Provider.objects.annotate(model_count=Count("models"))
