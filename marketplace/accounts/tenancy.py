"""Tenant scoping: which organisations a request may see, and what it may do in each.

Every view asks here; nothing else decides who belongs where.
- A signed-in user sees the organisations they are a member of, with their membership's role.
- An API key sees only its own organisation, with a member's rights.
- An API key limited to some deployments (`ApiKey.allowed_deployments`) is, on every route, a credential
  for those deployments only: it lists, reads, scales, updates and deletes them (any other answers 404,
  as to an outsider), creates a deployment only under one of those names, and reads only their usage.
  Every other resource of its organisation (members, keys, subscriptions, quota, the organisation itself)
  answers it 403: a view opts in by declaring `deployment_name_lookup` and narrowing its rows with
  `narrow_to_key_scope`; `WithinKeyScope`, a default permission of the REST API, refuses every other view.
- A platform admin (staff) sees every organisation and may do everything.

The REST API passes DRF requests and the web UI Django's own; only `request.user` is read.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from django.http import HttpRequest
from rest_framework import exceptions, permissions
from rest_framework.request import Request

from marketplace.accounts import rights
from marketplace.accounts.authentication import ApiKeyPrincipal
from marketplace.accounts.choices import MANAGERS, Role
from marketplace.accounts.models import ApiKey, Membership, Organization

AnyRequest = Request | HttpRequest
M = TypeVar("M", bound=Model)


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


def can_create_keys(request: AnyRequest, organization: Organization) -> bool:
    """People create keys (rights.CREATE_KEYS), keys do not: a leaked key must not mint others that
    outlive its revocation."""
    if isinstance(request.user, ApiKeyPrincipal):
        return False
    return rights.CREATE_KEYS.allows(role_in(request, organization))


def can_change_key(request: AnyRequest, api_key: ApiKey) -> bool:
    """Managers change and revoke any key of their organisation (rights.MANAGE_KEYS); a person, the
    keys they created."""
    if isinstance(request.user, ApiKeyPrincipal):
        return can_manage(request, api_key.organization)
    role = role_in(request, api_key.organization)
    if rights.MANAGE_KEYS.allows(role):
        return True
    return role is not None and api_key.created_by_id == request.user.pk


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


def key_scope(request: AnyRequest) -> frozenset[str] | None:
    """The deployment names the calling API key is limited to; None when nothing limits the caller
    (a person, or a key of the whole organisation)."""
    user = request.user
    if isinstance(user, ApiKeyPrincipal) and user.api_key.allowed_deployments:
        return frozenset(user.api_key.allowed_deployments)
    return None


def _limited_message(scope: frozenset[str]) -> str:
    names = ", ".join(sorted(scope))
    return f"This API key is limited to the deployment{'s' if len(scope) > 1 else ''} {names}"


def narrow_to_key_scope(request: AnyRequest, queryset: QuerySet[M], lookup: str) -> QuerySet[M]:
    """`queryset` without the rows a limited key may not see; `lookup` leads from a row to its
    deployment's name. Unchanged for everyone else."""
    scope = key_scope(request)
    if scope is None:
        return queryset
    return queryset.filter(**{f"{lookup}__in": scope})


def require_in_key_scope(request: AnyRequest, name: str) -> None:
    """A limited key may create a deployment only under one of its names."""
    scope = key_scope(request)
    if scope is not None and name not in scope:
        raise exceptions.PermissionDenied(
            f"{_limited_message(scope)}; it may not create '{name}'. Use a key of the whole organisation, "
            "or sign in."
        )


class WithinKeyScope(permissions.BasePermission):
    """Refuses a limited key on every view that does not narrow its rows to the key's deployments
    (that is, declares no `deployment_name_lookup`). Other callers are not concerned."""

    def has_permission(self, request: Request, view: Any) -> bool:
        scope = key_scope(request)
        if scope is None or getattr(view, "deployment_name_lookup", None):
            return True
        self.message = (
            f"{_limited_message(scope)}: it reaches only them and their usage, not this. Use a key of the "
            "whole organisation, or sign in."
        )
        return False
