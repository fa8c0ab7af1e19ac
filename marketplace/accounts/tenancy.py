"""Tenant scoping: which organisations a request may see, and what it may do in each.

Every view asks here; nothing else decides who belongs where.
- A signed-in user sees the organisations they are a member of, with their membership's role.
- An API key sees only its own organisation, with a member's rights.
- A platform admin (staff) sees every organisation and may do everything.

The REST API passes DRF requests and the web UI Django's own; only `request.user` is read.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.request import Request

from marketplace.accounts.authentication import ApiKeyPrincipal
from marketplace.accounts.choices import MANAGERS, Role
from marketplace.accounts.models import Membership, Organization

AnyRequest = Request | HttpRequest


def is_platform_admin(request: AnyRequest) -> bool:
    user = request.user
    return bool(user and user.is_authenticated and user.is_staff)


def visible_organizations(request: AnyRequest) -> QuerySet[Organization]:
    user = request.user
    if isinstance(user, ApiKeyPrincipal):
        return Organization.objects.filter(pk=user.api_key.organization_id)
    if not user or not user.is_authenticated:
        return Organization.objects.none()
    if user.is_staff:
        return Organization.objects.all()
    return Organization.objects.filter(memberships__user=user)


def role_in(request: AnyRequest, organization: Organization) -> str | None:
    user = request.user
    if isinstance(user, ApiKeyPrincipal):
        return Role.MEMBER if user.api_key.organization_id == organization.pk else None
    if not user or not user.is_authenticated:
        return None
    if user.is_staff:
        return Role.OWNER
    return (
        Membership.objects.filter(organization=organization, user=user).values_list("role", flat=True).first()
    )


def can_manage(request: AnyRequest, organization: Organization) -> bool:
    return role_in(request, organization) in MANAGERS


def require_manager(request: AnyRequest, organization: Organization) -> None:
    if not can_manage(request, organization):
        raise exceptions.PermissionDenied(
            f"Only an owner or admin of '{organization.slug}' may do this; ask one of them."
        )


def resolve_organization(
    request: AnyRequest, slug: str | None, *, field: str = "organization"
) -> Organization:
    """The organisation a write is for: the one named, or the caller's only one when none is named.

    An organisation the caller does not belong to gets the same answer as one that does not exist.
    """
    organizations = visible_organizations(request)
    if slug:
        organization = organizations.filter(slug=slug).first()
        if organization is None:
            raise exceptions.ValidationError({field: [f"No organisation '{slug}' that you belong to."]})
        return organization
    mine = list(organizations[:2])
    if len(mine) == 1:
        return mine[0]
    if not mine:
        raise exceptions.ValidationError({field: ["You do not belong to any organisation."]})
    raise exceptions.ValidationError({field: ["You belong to several organisations: name one."]})
