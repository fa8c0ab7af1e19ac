"""Domain rules for organisations, memberships and API keys. Views validate shape and call these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions

from marketplace.accounts.choices import Role
from marketplace.accounts.models import ApiKey, Membership, Organization, Quota


@transaction.atomic
def create_organization(*, slug: str, name: str, owner: User | None) -> Organization:
    organization = Organization.objects.create(slug=slug, name=name)
    Quota.objects.create(organization=organization)
    if owner is not None:
        Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
    return organization


def add_member(organization: Organization, user: User, role: str, *, by_owner: bool) -> Membership:
    """Only owners make owners; a person is a member once."""
    if role == Role.OWNER and not by_owner:
        raise exceptions.PermissionDenied("Only an owner may make someone an owner.")
    if organization.memberships.filter(user=user).exists():
        raise exceptions.ValidationError({"username": [f"{user.username} is already a member."]})
    return Membership.objects.create(organization=organization, user=user, role=role)


def _owners_left_after(membership: Membership) -> int:
    """Owners other than this member. Locks the organisation's row first, so two owners stepping down
    at the same moment decide one after the other (a locked COUNT would lock nothing)."""
    Organization.objects.select_for_update().filter(pk=membership.organization_id).first()
    return (
        Membership.objects.filter(organization=membership.organization_id, role=Role.OWNER)
        .exclude(pk=membership.pk)
        .count()
    )


@transaction.atomic
def change_role(membership: Membership, role: str, *, by_owner: bool) -> Membership:
    """Only owners grant or take away ownership; an organisation always keeps one owner."""
    if role == membership.role:
        return membership
    if Role.OWNER in (role, membership.role) and not by_owner:
        raise exceptions.PermissionDenied("Only an owner may grant or remove the owner role.")
    if membership.role == Role.OWNER and _owners_left_after(membership) == 0:
        raise exceptions.ValidationError(
            {"role": ["An organisation needs an owner: make someone else owner first."]}
        )
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def remove_member(membership: Membership, *, by_owner: bool) -> int:
    """Remove a person from an organisation, and revoke the organisation's keys they created; return how
    many were revoked.

    A key outlives nobody's say-so: whoever leaves (or is removed) takes the keys they made with them, as
    a cloud provider disables a departing user's access keys. Apps that must keep running use keys made
    by someone who stays. Keys the person made in other organisations are untouched.
    """
    if membership.role == Role.OWNER:
        if not by_owner:
            raise exceptions.PermissionDenied("Only an owner may remove an owner.")
        if _owners_left_after(membership) == 0:
            raise exceptions.ValidationError(
                {"username": ["The last owner cannot leave: make someone else owner first."]}
            )
    revoked = (
        ApiKey.objects.usable()
        .filter(organization=membership.organization_id, created_by=membership.user_id)
        .update(revoked_at=timezone.now())
    )
    membership.delete()
    return revoked


def removal_message(username: str, revoked: int) -> str:
    """What removing someone did, in a sentence for the person who did it."""
    if revoked == 0:
        return f"{username} was removed; they had created no active API keys here."
    keys = "API key" if revoked == 1 else "API keys"
    return (
        f"{username} was removed, and the {revoked} {keys} they created {'was' if revoked == 1 else 'were'} "
        "revoked: apps using them must switch to a key made by someone who stays."
    )


def check_key_scope(organization: Organization, names: list[str]) -> list[str]:
    """The deployment names a key is limited to, each once in the order given; refused, naming
    `allowed_deployments` and every unknown name, unless each names a live deployment or a prompt router
    of `organization` (an empty list means all of them, and is always valid). A key allowed a router
    reaches its candidates through it (serving/gateway/directory.py)."""
    from learning.models import Router  # learning and serving build on accounts, not the other way round
    from serving.models import Deployment

    wanted = list(dict.fromkeys(names))
    live = set(
        Deployment.objects.live()
        .filter(organization=organization, name__in=wanted)
        .values_list("name", flat=True)
    )
    live |= set(
        Router.objects.filter(organization=organization, name__in=wanted).values_list("name", flat=True)
    )
    unknown = [name for name in wanted if name not in live]
    if unknown:
        several = len(unknown) > 1
        those = "those names" if several else "that name"
        raise exceptions.ValidationError(
            {
                "allowed_deployments": [
                    f"{organization.name} has no live deployment{'s' if several else ''} named "
                    f"{', '.join(repr(name) for name in unknown)}, nor a router by {those}: "
                    "name deployments listed on the deployments page or routers on the routers page, or "
                    "leave the list empty to allow them all."
                ]
            }
        )
    return wanted


def create_api_key(
    *,
    organization: Organization,
    name: str,
    created_by: User | None,
    expires_at: datetime | None,
    allowed_deployments: list[str] | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key; the secret is returned here and never again. A key may be limited to some live
    deployments of its organisation and get per-minute limits of its own (None: only the organisation's
    apply)."""
    allowed = check_key_scope(organization, allowed_deployments or [])
    secret, prefix, hashed = ApiKey.generate()
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=prefix,
        hashed_key=hashed,
        created_by=created_by,
        expires_at=expires_at,
        allowed_deployments=allowed,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )
    return api_key, secret


KEY_SETTINGS = ("name", "allowed_deployments", "requests_per_minute", "tokens_per_minute")


def update_api_key(api_key: ApiKey, changes: dict[str, Any]) -> ApiKey:
    """Change a key's name, scope or per-minute limits (only the KEY_SETTINGS given in `changes`).

    The gateway trusts what it cached for up to GATEWAY_CACHE_SECONDS, so a change takes effect there
    within that time; the REST API reads the key on every request. Nothing is written when the scope is
    refused."""
    fields = {name: changes[name] for name in KEY_SETTINGS if name in changes}
    if "allowed_deployments" in fields:
        fields["allowed_deployments"] = check_key_scope(api_key.organization, fields["allowed_deployments"])
    for name, value in fields.items():
        setattr(api_key, name, value)
    if fields:
        api_key.save(update_fields=list(fields))
    return api_key


def revoke_api_key(api_key: ApiKey) -> ApiKey:
    """Idempotent: revoking a revoked key keeps the first revocation time."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key
