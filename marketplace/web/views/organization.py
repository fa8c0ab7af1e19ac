"""The current organisation: its members and their roles, and how much of its quota is in use."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from rest_framework import exceptions

from marketplace.accounts import rights, services, tenancy
from marketplace.accounts.api.serializers import MembershipCreateSerializer, MembershipUpdateSerializer
from marketplace.accounts.choices import Role
from marketplace.accounts.models import ApiKey, Membership, Organization
from marketplace.web import current
from marketplace.web.charts import quota_bars
from marketplace.web.forms import NON_FIELD, error_summary, field_errors, form_data

MEMBER_LABELS = {"username": "Add a person (username)", "role": "Role"}


def _members(organization: Organization) -> QuerySet[Membership]:
    """The members, each with `api_keys`: the usable keys of this organisation they created, which
    removing them revokes (counted in the same query)."""
    keys = (
        ApiKey.objects.usable()
        .filter(organization=organization, created_by=OuterRef("user"))
        .order_by()
        .values("created_by")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return (
        organization.memberships.select_related("user")
        .annotate(api_keys=Coalesce(Subquery(keys), 0))
        .order_by("user__username")
    )


def _context(request: HttpRequest, organization: Organization) -> dict[str, Any]:
    role = tenancy.role_in(request, organization)
    return {
        "organization": organization,
        "members": _members(organization),
        "bars": quota_bars(organization),
        "quota": organization.quota,
        "role": role,
        "can_manage": role in (Role.OWNER, Role.ADMIN),
        "is_owner": role == Role.OWNER,
        "roles": Role.choices,
        "role_label": Role(role).label if role else "",
        "rights": rights.table(),
        "rights_roles": [Role(role).label for role in rights.EVERYONE],
        "errors": {},
        "values": {},
    }


def _current(request: HttpRequest) -> Organization:
    organization = current.organization(request)
    if organization is None:
        raise Http404("You are in no organisation.")
    return organization


@login_required
@require_GET
def organization_page(request: HttpRequest) -> HttpResponse:
    return render(request, "web/organization.html", _context(request, _current(request)))


@login_required
@require_POST
def switch(request: HttpRequest) -> HttpResponse:
    current.pick(request, request.POST.get("organization", ""))
    target = request.POST.get("next", "")
    # Back to a page of this site only, else the catalog: a bare word would be read by redirect() as a
    # view name (and fail), and another host would make this form an open redirect.
    on_this_site = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    if not (target.startswith("/") and on_this_site):
        target = "/"
    return redirect(target)


def _refused(
    request: HttpRequest, organization: Organization, error: exceptions.APIException
) -> HttpResponse:
    context = _context(request, organization)
    context["values"] = request.POST.dict()
    if isinstance(error, exceptions.ValidationError):
        context["errors"] = field_errors(error)
        context["summary"] = error_summary(context["errors"], MEMBER_LABELS)
        return render(request, "web/organization.html", context, status=400)
    context["errors"] = {NON_FIELD: [str(error.detail)]}
    context["summary"] = error_summary(context["errors"], MEMBER_LABELS)
    return render(request, "web/organization.html", context, status=403)


@login_required
@require_POST
def add_member(request: HttpRequest) -> HttpResponse:
    organization = _current(request)
    try:
        tenancy.require_manager(request, organization)
        serializer = MembershipCreateSerializer(data=form_data(request.POST, ("username", "role")))
        serializer.is_valid(raise_exception=True)
        services.add_member(
            organization,
            serializer.validated_data["username"],
            serializer.validated_data["role"],
            by_owner=tenancy.role_in(request, organization) == Role.OWNER,
        )
    except exceptions.APIException as error:
        return _refused(request, organization, error)
    messages.success(
        request, f"{serializer.validated_data['username'].username} was added to {organization.name}."
    )
    return redirect("web:organization")


def _membership(organization: Organization, username: str) -> Membership:
    return get_object_or_404(organization.memberships.select_related("user"), user__username=username)


@login_required
@require_POST
def change_role(request: HttpRequest, username: str) -> HttpResponse:
    organization = _current(request)
    membership = _membership(organization, username)
    try:
        tenancy.require_manager(request, organization)
        serializer = MembershipUpdateSerializer(data=form_data(request.POST, ("role",)))
        serializer.is_valid(raise_exception=True)
        by_owner = tenancy.role_in(request, organization) == Role.OWNER
        before = membership.role
        services.change_role(membership, serializer.validated_data["role"], by_owner=by_owner)
    except exceptions.APIException as error:
        return _refused(request, organization, error)
    label = Role(membership.role).label.lower()
    if membership.role == before:
        messages.info(request, f"{username} was already {_article(label)} {label}: nothing changed.")
    else:
        messages.success(request, f"{username} is now {_article(label)} {label} of {organization.name}.")
    return redirect("web:organization")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


@login_required
@require_POST
def remove_member(request: HttpRequest, username: str) -> HttpResponse:
    organization = _current(request)
    membership = _membership(organization, username)
    try:
        if membership.user_id != request.user.pk:
            tenancy.require_manager(request, organization)
        by_owner = tenancy.role_in(request, organization) == Role.OWNER
        revoked = services.remove_member(membership, by_owner=by_owner)
    except exceptions.APIException as error:
        return _refused(request, organization, error)
    messages.success(request, services.removal_message(username, revoked))
    return redirect("web:organization")
