from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, generics, mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.accounts import services, tenancy
from marketplace.accounts.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    ApiKeySettingsSerializer,
    MembershipCreateSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    OrganizationCreateSerializer,
    OrganizationSerializer,
    QuotaSerializer,
)
from marketplace.accounts.choices import Role
from marketplace.accounts.models import ApiKey, Membership, Organization, Quota
from marketplace.api import TenantScopedViewSet


class IsPlatformAdmin(permissions.BasePermission):
    message = "Only a platform admin may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return tenancy.is_platform_admin(request)


def _organization(request: Request, slug: str) -> Organization:
    """The organisation named in the URL, or 404 when the caller cannot see it."""
    return get_object_or_404(tenancy.visible_organizations(request), slug=slug)


class OrganizationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Organisations you belong to (platform admins: all). Platform admins create and delete them;
    owners and admins rename them."""

    lookup_field = "slug"
    ordering_fields = ["name", "slug", "created_at"]
    ordering = ["name"]

    def get_queryset(self) -> QuerySet[Organization]:
        return tenancy.visible_organizations(self.request).order_by("name")

    def get_serializer_class(self) -> Any:
        return OrganizationCreateSerializer if self.action == "create" else OrganizationSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        user = self.request.user
        if user.is_authenticated and user.pk is not None:
            context["roles"] = dict(
                Membership.objects.filter(user=user).values_list("organization_id", "role")
            )
        return context

    def get_permissions(self) -> Sequence[Any]:
        if self.action in ("create", "destroy"):
            return [permissions.IsAuthenticated(), IsPlatformAdmin()]
        return super().get_permissions()

    @extend_schema(request=OrganizationCreateSerializer, responses={201: OrganizationSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = OrganizationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = services.create_organization(
            slug=serializer.validated_data["slug"],
            name=serializer.validated_data["name"],
            owner=serializer.validated_data.get("owner"),
        )
        return Response(OrganizationSerializer(organization).data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: Any) -> None:
        tenancy.require_manager(self.request, serializer.instance)  # the slug is read-only: it names URLs
        serializer.save()


class MemberListView(generics.ListCreateAPIView):
    """Members of an organisation. Owners and admins add people; only owners make owners."""

    serializer_class = MembershipSerializer

    def get_queryset(self) -> QuerySet[Membership]:
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        organization = _organization(self.request, self.kwargs["slug"])
        return organization.memberships.select_related("user").order_by("user__username")

    @extend_schema(request=MembershipCreateSerializer, responses={201: MembershipSerializer})
    def post(self, request: Request, slug: str) -> Response:
        organization = _organization(request, slug)
        tenancy.require_manager(request, organization)
        serializer = MembershipCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.add_member(
            organization,
            serializer.validated_data["username"],
            serializer.validated_data["role"],
            by_owner=tenancy.role_in(request, organization) == Role.OWNER,
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(generics.GenericAPIView):
    serializer_class = MembershipSerializer

    def _membership(self, request: Request, slug: str, username: str) -> Membership:
        organization = _organization(request, slug)
        return get_object_or_404(
            organization.memberships.select_related("user", "organization"), user__username=username
        )

    def get(self, request: Request, slug: str, username: str) -> Response:
        return Response(MembershipSerializer(self._membership(request, slug, username)).data)

    @extend_schema(request=MembershipUpdateSerializer, responses={200: MembershipSerializer})
    def patch(self, request: Request, slug: str, username: str) -> Response:
        membership = self._membership(request, slug, username)
        tenancy.require_manager(request, membership.organization)
        serializer = MembershipUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        by_owner = tenancy.role_in(request, membership.organization) == Role.OWNER
        services.change_role(membership, serializer.validated_data["role"], by_owner=by_owner)
        return Response(MembershipSerializer(membership).data)

    @extend_schema(
        responses={
            200: inline_serializer(
                "MemberRemoved",
                {
                    "username": serializers.CharField(),
                    "revoked_api_keys": serializers.IntegerField(
                        help_text="The organisation's keys this person had created, revoked with them"
                    ),
                    "detail": serializers.CharField(),
                },
            )
        }
    )
    def delete(self, request: Request, slug: str, username: str) -> Response:
        """Remove a member (or leave). The keys of this organisation they created are revoked too."""
        membership = self._membership(request, slug, username)
        leaving_self = membership.user_id == request.user.pk
        if not leaving_self:
            tenancy.require_manager(request, membership.organization)
        by_owner = tenancy.role_in(request, membership.organization) == Role.OWNER
        revoked = services.remove_member(membership, by_owner=by_owner)
        return Response(
            {
                "username": username,
                "revoked_api_keys": revoked,
                "detail": services.removal_message(username, revoked),
            }
        )


class QuotaView(generics.GenericAPIView):
    """An organisation's quota. Members read it; only platform admins change it."""

    serializer_class = QuotaSerializer

    def _quota(self, request: Request, slug: str) -> Quota:
        organization = _organization(request, slug)
        quota, _ = Quota.objects.get_or_create(organization=organization)
        return quota

    def get_object(self) -> Quota:
        """The quota in the URL: what DRF's answer to OPTIONS reads before it describes PUT."""
        return self._quota(self.request, self.kwargs["slug"])

    def get(self, request: Request, slug: str) -> Response:
        return Response(QuotaSerializer(self._quota(request, slug)).data)

    def put(self, request: Request, slug: str) -> Response:
        return self._update(request, slug, partial=False)

    def patch(self, request: Request, slug: str) -> Response:
        return self._update(request, slug, partial=True)

    def _update(self, request: Request, slug: str, *, partial: bool) -> Response:
        quota = self._quota(request, slug)
        if not tenancy.is_platform_admin(request):
            raise exceptions.PermissionDenied("Only a platform admin may change quotas.")
        serializer = QuotaSerializer(quota, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data)


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """API keys of your organisations. Every member creates keys; owners and admins change (PATCH: name,
    the deployments it may call, its own per-minute limits) and revoke any key, a member the keys they
    created. The secret is shown once, in the answer to create. Deleting a key revokes it (the row stays
    for the audit trail)."""

    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    queryset = ApiKey.objects.select_related("organization", "created_by")
    serializer_class = ApiKeySerializer
    ordering_fields = ["created_at", "name", "last_used_at"]
    ordering = ["-created_at"]

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = tenancy.resolve_organization(request, serializer.validated_data.get("organization"))
        if not tenancy.can_create_keys(request, organization):
            raise exceptions.PermissionDenied("API keys are created by people signed in, not by other keys.")
        creator = request.user if request.user.pk is not None else None
        api_key, secret = services.create_api_key(
            organization=organization,
            name=serializer.validated_data["name"],
            created_by=creator,
            expires_at=serializer.validated_data.get("expires_at"),
            allowed_deployments=serializer.validated_data.get("allowed_deployments"),
            requests_per_minute=serializer.validated_data.get("requests_per_minute"),
            tokens_per_minute=serializer.validated_data.get("tokens_per_minute"),
        )
        data = ApiKeyCreatedSerializer(api_key).data
        data["key"] = secret
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ApiKeySettingsSerializer, responses={200: ApiKeySerializer})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a key; the gateway applies it within GATEWAY_CACHE_SECONDS."""
        api_key = self.get_object()
        _require_key_changer(request, api_key)
        serializer = ApiKeySettingsSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return Response(ApiKeySerializer(services.update_api_key(api_key, serializer.validated_data)).data)

    @extend_schema(request=None, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        api_key = self.get_object()
        _require_key_changer(request, api_key)
        return Response(ApiKeySerializer(services.revoke_api_key(api_key)).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        api_key = self.get_object()
        _require_key_changer(request, api_key)
        services.revoke_api_key(api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _require_key_changer(request: Request, api_key: ApiKey) -> None:
    if not tenancy.can_change_key(request, api_key):
        raise exceptions.PermissionDenied(
            f"Only an owner or admin of '{api_key.organization.slug}', or the person who created this key, "
            "may change or revoke it; ask one of them."
        )
