from __future__ import annotations

from typing import Any

import yaml
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.accounts import tenancy
from marketplace.api import Conflict, TenantScopedViewSet
from marketplace.subscriptions.models import Subscription
from serving import services
from serving.api.serializers import (
    DeploymentCreateSerializer,
    DeploymentDetailSerializer,
    DeploymentScaleSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    adapter_choices,
)
from serving.choices import Backend, DeploymentStatus
from serving.models import Deployment


class DeploymentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """Your organisations' deployments. Members create, scale, update and delete them; deleted ones are
    listed with `?status=deleted`. A key limited to some deployments sees and acts on those only."""

    deployment_name_lookup = "name"
    queryset = Deployment.objects.select_related(
        "organization", "model_card", "instance_type"
    ).prefetch_related("adapters__model_card")
    filterset_fields = ["status", "backend"]
    ordering_fields = ["created_at", "name", "status"]
    ordering = ["-created_at"]

    def get_queryset(self) -> QuerySet[Deployment]:
        in_force = Subscription.objects.in_force().filter(
            organization=OuterRef("organization"), model_card=OuterRef("model_card")
        )
        queryset = super().get_queryset().annotate(subscription_in_force=Exists(in_force))
        if self.action == "list" and "status" not in self.request.query_params:
            queryset = queryset.exclude(status=DeploymentStatus.DELETED)
        return queryset

    def get_serializer_class(self) -> Any:
        return DeploymentDetailSerializer if self.action == "retrieve" else DeploymentSerializer

    @extend_schema(request=DeploymentCreateSerializer, responses={201: DeploymentDetailSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = DeploymentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenancy.require_in_key_scope(request, serializer.validated_data["name"])
        organization = tenancy.resolve_organization(request, serializer.validated_data.get("organization"))
        deployment = serializer.create_deployment(organization, request.user)
        return Response(DeploymentDetailSerializer(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DeploymentScaleSerializer, responses={200: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def scale(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        serializer = DeploymentScaleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = services.scale_deployment(deployment, serializer.scaling(), actor=request.user)
        return Response(DeploymentSerializer(deployment).data)

    @extend_schema(request=DeploymentUpdateSerializer, responses={200: DeploymentSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        serializer = DeploymentUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        deployment = services.update_deployment(
            deployment,
            instance_type=data.get("instance_type"),
            engine_options=data.get("engine_options"),
            tensor_parallel_size=data.get("tensor_parallel_size"),
            adapters=None if "adapters" not in data else adapter_choices(data["adapters"]),
            actor=request.user,
        )
        return Response(DeploymentSerializer(deployment).data)

    @extend_schema(responses={202: OpenApiResponse(description="Deletion started; see its status")})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.delete_deployment(self.get_object(), actor=request.user)
        return Response(status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/yaml"): OpenApiResponse(description="Kubernetes objects")})
    @action(detail=True, methods=["get"])
    def manifests(self, request: Request, pk: str | None = None) -> HttpResponse:
        """Exactly the Kubernetes objects the kubernetes backend applies, as YAML, for review or GitOps."""
        deployment = self.get_object()
        if deployment.backend != Backend.KUBERNETES:
            raise exceptions.ValidationError(
                {
                    "backend": [
                        "This deployment runs on this machine (local backend); it has no Kubernetes objects."
                    ]
                }
            )
        try:
            shown = render_manifests(deployment)
        except ValueError as error:  # what the cluster would refuse too: a folder in no volume, …
            raise Conflict({"deployment": [f"Its Kubernetes objects cannot be built: {error}."]}) from None
        return HttpResponse(shown, content_type="application/yaml")


def render_manifests(deployment: Deployment) -> str:
    """The objects as YAML, a Secret's values replaced by what they are (an organisation's read key is
    applied to the cluster, never shown: not to its members, not in a GitOps repository)."""
    from serving import manifests
    from serving.backends.kubernetes import cluster_settings

    objects = manifests.build_objects(services.spec_for(deployment, sign=False), cluster_settings())
    shown = [manifests.redacted(obj) for obj in objects]
    return yaml.safe_dump_all(shown, sort_keys=False)
