"""The tenant-scoped base viewset every organisation-owned resource builds on."""

from __future__ import annotations

from typing import Any

from django.db import models
from rest_framework import exceptions, status, viewsets
from rest_framework.request import Request

from marketplace.accounts import tenancy


class Conflict(exceptions.APIException):
    """The request is sound but the state of something else stands in its way; the sentence says what to
    change first."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "This conflicts with the current state; change that first."
    default_code = "conflict"


class TenantScopedViewSet(viewsets.GenericViewSet):
    """Scopes `queryset` to the organisations the caller may see (through `organization_lookup`),
    and narrows it to one with `?organization=<slug>`. Outsiders get 404, never 403, for objects of
    organisations they cannot see.

    A resource that belongs to a deployment declares `deployment_name_lookup` (the path from a row to
    its deployment's name): an API key limited to some deployments then sees only their rows, and
    others answer it 404 as to an outsider. Without it, such a key is refused (tenancy.WithinKeyScope).
    """

    organization_lookup = "organization"
    deployment_name_lookup: str | None = None

    def get_queryset(self) -> models.QuerySet[Any]:
        queryset = super().get_queryset()
        organizations = tenancy.visible_organizations(self.request)
        queryset = queryset.filter(**{f"{self.organization_lookup}__in": organizations})
        if self.deployment_name_lookup:
            queryset = tenancy.narrow_to_key_scope(self.request, queryset, self.deployment_name_lookup)
        slug = self.request.query_params.get("organization")
        if slug:
            queryset = queryset.filter(**{f"{self.organization_lookup}__slug": slug})
        return queryset

    def require_manager(self, request: Request, organization: Any) -> None:
        tenancy.require_manager(request, organization)
