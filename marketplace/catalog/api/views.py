from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import filters, permissions, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.catalog.api.serializers import (
    InstanceTypeSerializer,
    ModelCardDetailSerializer,
    ModelCardListSerializer,
    ProviderSerializer,
)
from marketplace.catalog.custom_models import PROVIDER_SLUG as CUSTOM_PROVIDER
from marketplace.catalog.filtersets import InstanceTypeFilterSet, ModelCardFilterSet
from marketplace.catalog.models import InstanceType, ModelCard, Provider


class CatalogViewSet(viewsets.ReadOnlyModelViewSet):
    """The catalog is public reading: anyone may browse before signing in."""

    permission_classes = [permissions.AllowAny]
    lookup_field = "slug"

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        """Once the body is rendered, let go of what built it.

        DRF's view and response refer to each other (`view.response`, `response.renderer_context`), and
        the view and its request do too, so none of them is freed when the request ends: only the cyclic
        garbage collector frees them, with everything they hold (the page of cards, the rows). At 100
        cards a page that garbage was promoted to the oldest generation and freed in full collections
        every few dozen requests: p99 at about 10 × p50 (bench/catalog.py). Dropping these references
        after rendering leaves the page and the rows to reference counting, freed as the request ends.
        """
        response = super().finalize_response(request, response, *args, **kwargs)
        response.add_post_render_callback(self._release)
        return response

    def _release(self, response: Response) -> None:
        response.data = None
        response.__dict__.pop("renderer_context", None)  # set by finalize_response, read only to render
        self.__dict__.pop("response", None)
        paginator = self.__dict__.get("_paginator")
        if paginator is not None:
            paginator.page = None


class BestMatchOrdering(filters.OrderingFilter):
    """With `q` and no `ordering`, the best match comes first (ties by name), as on the catalog page."""

    def get_default_ordering(self, view: Any) -> Any:
        if view.request.query_params.get("q", "").strip():
            return ["-search_rank", "name"]
        return super().get_default_ordering(view)


class ModelCardViewSet(CatalogViewSet):
    """Model cards. Filter with `q` (free text, the catalog page's search: best match first unless
    `ordering` is given), `task`, `provider`, `license`, `language`, `domain`,
    `modality`, `parameters_min`/`parameters_max` (billions), `context_length_min`/`_max`, `fits`
    (instance type slug), `cpu_capable`, `gated`, `commercial_use`; order with `ordering`."""

    queryset = ModelCard.objects.select_related("provider", "license").defer("search_text", "search_vector")
    lookup_value_regex = r"[a-z0-9.-]+"
    filterset_class = ModelCardFilterSet
    filter_backends = [DjangoFilterBackend, BestMatchOrdering]
    ordering_fields = ["name", "parameters", "context_length", "release_date", "provider__name"]
    ordering = ["name"]

    def get_serializer_class(self) -> Any:
        return ModelCardDetailSerializer if self.action == "retrieve" else ModelCardListSerializer

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Rows built by one ModelCardListSerializer, without DRF's ListSerializer: its child and parent
        refer to each other and hold the page of cards, which would leave them to the cyclic garbage
        collector (see CatalogViewSet.finalize_response)."""
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        assert page is not None  # every list is paginated (DEFAULT_PAGINATION_CLASS)
        row = ModelCardListSerializer(context=self.get_serializer_context()).to_representation
        return self.get_paginated_response([row(card) for card in page])


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
        # The catalog's publishers: organisations' custom models are counted nowhere public.
        public = Q(models__organization__isnull=True)
        return Provider.objects.exclude(slug=CUSTOM_PROVIDER).annotate(
            model_count=Count("models", filter=public)
        )
