"""API keys of the current organisation: create (the secret is shown once), list, change the
deployments and prompt routers a key may call and its own per-minute limits, revoke. Every member
creates keys (to call what they deploy); owners and admins change and revoke any key, a member the
keys they created (see accounts/rights.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST
from rest_framework import exceptions

from learning.models import Router
from marketplace.accounts import services, tenancy
from marketplace.accounts.api.serializers import ApiKeyCreateSerializer, ApiKeySettingsSerializer
from marketplace.accounts.models import ApiKey, Organization
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, field_errors, form_data, optional_numbers
from serving.models import Deployment

LIMITS = ("requests_per_minute", "tokens_per_minute")


def _context(request: HttpRequest, organization: Organization | None) -> dict[str, Any]:
    keys = (
        ApiKey.objects.filter(organization=organization).select_related("created_by")
        if organization
        else ApiKey.objects.none()
    )
    deployments = (
        Deployment.objects.live()
        .filter(organization=organization)
        .order_by("name")
        .values_list("name", flat=True)
        if organization
        else Deployment.objects.none().values_list("name", flat=True)
    )
    # A key may be limited to prompt routers too (it then reaches their candidates through them).
    routers = (
        Router.objects.filter(organization=organization).order_by("name").values_list("name", flat=True)
        if organization
        else Router.objects.none().values_list("name", flat=True)
    )
    can_manage = organization is not None and tenancy.can_manage(request, organization)
    return {
        "organization": organization,
        "keys": keys,
        "deployments": list(deployments),
        "routers": list(routers),
        "can_manage": can_manage,
        "can_create": organization is not None and tenancy.can_create_keys(request, organization),
        # The keys this person may change and revoke: all of them for a manager, else their own.
        "changeable": {key.pk for key in keys if can_manage or key.created_by_id == request.user.pk},
        "errors": {},
        "values": {},
        "chosen": [],
        "editing": None,
    }


@login_required
@require_GET
def api_keys(request: HttpRequest) -> HttpResponse:
    return render(request, "web/api_keys.html", _context(request, current.organization(request)))


@login_required
@require_POST
def create_api_key(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context = _context(request, organization)
    context["values"] = request.POST.dict()
    context["chosen"] = request.POST.getlist("allowed_deployments")
    try:
        if organization is None:
            raise exceptions.ValidationError({NON_FIELD: ["You are in no organisation yet."]})
        if not context["can_create"]:
            raise exceptions.ValidationError(
                {NON_FIELD: ["Only members of the organisation create its keys."]}
            )
        data = form_data(request.POST, ("name", "expires_at", *LIMITS))
        data["allowed_deployments"] = context["chosen"]
        serializer = ApiKeyCreateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        api_key, secret = services.create_api_key(
            organization=organization,
            name=serializer.validated_data["name"],
            created_by=request.user,  # type: ignore[arg-type]
            expires_at=serializer.validated_data.get("expires_at"),
            allowed_deployments=serializer.validated_data.get("allowed_deployments"),
            requests_per_minute=serializer.validated_data.get("requests_per_minute"),
            tokens_per_minute=serializer.validated_data.get("tokens_per_minute"),
        )
    except exceptions.ValidationError as error:
        context["errors"] = field_errors(error)
        return render(request, "web/api_keys.html", context, status=400)
    context.update(created=api_key, secret=secret, values={}, chosen=[])
    response = render(request, "web/api_keys.html", context, status=201)
    response["Cache-Control"] = "no-store"  # the secret must not stay in a cache or the history
    return response


def _managers_only(organization: Organization, does: str) -> str:
    """The refusal of a person who may not change a key, saying whom to ask."""
    return (
        f"Only an owner or admin of {organization.name}, or the person who created the key, {does}; "
        "ask one of them."
    )


def _visible_key(request: HttpRequest, pk: int) -> ApiKey:
    """The key, or 404 when it belongs to an organisation the person cannot see."""
    return get_object_or_404(
        ApiKey.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization"
        ),
        pk=pk,
    )


@login_required
@require_POST
def change_api_key(request: HttpRequest, pk: int) -> HttpResponse:
    """The form shows every setting, so what is left empty is lifted: no box ticked means every
    deployment, an empty limit means only the organisation's. The gateway follows within
    GATEWAY_CACHE_SECONDS."""
    api_key = _visible_key(request, pk)
    context = _context(request, api_key.organization)
    if not tenancy.can_change_key(request, api_key):
        context["errors"] = {NON_FIELD: [_managers_only(api_key.organization, "changes keys")]}
        return render(request, "web/api_keys.html", context, status=403)
    data = {
        "allowed_deployments": request.POST.getlist("allowed_deployments"),
        **optional_numbers(request.POST, LIMITS),
    }
    try:
        serializer = ApiKeySettingsSerializer(data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.update_api_key(api_key, serializer.validated_data)
    except exceptions.ValidationError as error:
        context.update(editing=api_key.pk, edit_errors=field_errors(error), edit_values=data)
        return render(request, "web/api_keys.html", context, status=400)
    return redirect("web:api-keys")


@login_required
@require_POST
def revoke_api_key(request: HttpRequest, pk: int) -> HttpResponse:
    api_key = _visible_key(request, pk)
    if not tenancy.can_change_key(request, api_key):
        context = _context(request, api_key.organization)
        context["errors"] = {NON_FIELD: [_managers_only(api_key.organization, "revokes keys")]}
        return render(request, "web/api_keys.html", context, status=403)
    services.revoke_api_key(api_key)
    return redirect("web:api-keys")
