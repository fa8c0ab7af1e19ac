from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.accounts import tenancy
from marketplace.accounts.authentication import ApiKeyPrincipal
from marketplace.api import TenantScopedViewSet
from marketplace.subscriptions import services
from marketplace.subscriptions.api.serializers import (
    SubscribeSerializer,
    SubscriptionDetailSerializer,
    SubscriptionSerializer,
)
from marketplace.subscriptions.models import Subscription


class SubscriptionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """Your organisations' model subscriptions. Owners and admins subscribe by accepting the model's
    license (POST again to re-accept a changed license) and unsubscribe with DELETE."""

    queryset = Subscription.objects.select_related("organization", "model_card__license", "accepted_by")
    filterset_fields = ["status"]
    ordering_fields = ["accepted_at", "created_at"]
    ordering = ["-accepted_at"]

    def get_serializer_class(self) -> Any:
        return SubscriptionDetailSerializer if self.action == "retrieve" else SubscriptionSerializer

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("acceptances__accepted_by")
        return queryset

    @extend_schema(
        request=SubscribeSerializer, responses={201: SubscriptionSerializer, 200: SubscriptionSerializer}
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = SubscribeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = tenancy.resolve_organization(request, serializer.validated_data.get("organization"))
        if isinstance(request.user, ApiKeyPrincipal):
            raise exceptions.PermissionDenied("A license is accepted by a person: subscribe while signed in.")
        tenancy.require_manager(request, organization)
        subscription, created = services.subscribe(
            organization=organization,
            card=serializer.validated_data["model"],
            license_sha256=serializer.validated_data.get("license_sha256"),
            user=request.user,  # type: ignore[arg-type]
        )
        return Response(
            SubscriptionSerializer(subscription).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        subscription = self.get_object()
        tenancy.require_manager(request, subscription.organization)
        services.unsubscribe(subscription)
        return Response(status=status.HTTP_204_NO_CONTENT)
