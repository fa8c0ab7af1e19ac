"""The tenant-scoped base viewset every organisation-owned resource builds on."""

from __future__ import annotations

from typing import Any

from django.db import models
from rest_framework import viewsets
from rest_framework.request import Request

from marketplace.accounts import tenancy


class TenantScopedViewSet(viewsets.GenericViewSet):
    """Scopes `queryset` to the organisations the caller may see (through `organization_lookup`),
    and narrows it to one with `?organization=<slug>`. Outsiders get 404, never 403, for objects of
    organisations they cannot see."""

    organization_lookup = "organization"

    def get_queryset(self) -> models.QuerySet[Any]:
        queryset = super().get_queryset()
        organizations = tenancy.visible_organizations(self.request)
        queryset = queryset.filter(**{f"{self.organization_lookup}__in": organizations})
        slug = self.request.query_params.get("organization")
        if slug:
            queryset = queryset.filter(**{f"{self.organization_lookup}__slug": slug})
        return queryset

    def require_manager(self, request: Request, organization: Any) -> None:
        tenancy.require_manager(request, organization)
