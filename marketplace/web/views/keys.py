"""API keys of the current organisation: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST
from rest_framework import exceptions

from marketplace.accounts import services, tenancy
from marketplace.accounts.api.serializers import ApiKeyCreateSerializer
from marketplace.accounts.models import ApiKey, Organization
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, field_errors, form_data


def _context(request: HttpRequest, organization: Organization | None) -> dict[str, Any]:
    keys = (
        ApiKey.objects.filter(organization=organization).select_related("created_by")
        if organization
        else ApiKey.objects.none()
    )
    return {
        "organization": organization,
        "keys": keys,
        "can_manage": organization is not None and tenancy.can_manage(request, organization),
        "errors": {},
        "values": {},
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
    try:
        if organization is None:
            raise exceptions.ValidationError({NON_FIELD: ["You are in no organisation yet."]})
        if not context["can_manage"]:
            raise exceptions.ValidationError(
                {NON_FIELD: [f"Only an owner or admin of {organization.name} creates keys; ask one of them."]}
            )
        serializer = ApiKeyCreateSerializer(data=form_data(request.POST, ("name", "expires_at")))
        serializer.is_valid(raise_exception=True)
        api_key, secret = services.create_api_key(
            organization=organization,
            name=serializer.validated_data["name"],
            created_by=request.user,  # type: ignore[arg-type]
            expires_at=serializer.validated_data.get("expires_at"),
        )
    except exceptions.ValidationError as error:
        context["errors"] = field_errors(error)
        return render(request, "web/api_keys.html", context, status=400)
    context.update(created=api_key, secret=secret, values={})
    response = render(request, "web/api_keys.html", context, status=201)
    response["Cache-Control"] = "no-store"  # the secret must not stay in a cache or the history
    return response


@login_required
@require_POST
def revoke_api_key(request: HttpRequest, pk: int) -> HttpResponse:
    api_key = get_object_or_404(
        ApiKey.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization"
        ),
        pk=pk,
    )
    if not tenancy.can_manage(request, api_key.organization):
        context = _context(request, api_key.organization)
        context["errors"] = {NON_FIELD: ["Only an owner or admin may revoke keys."]}
        return render(request, "web/api_keys.html", context, status=403)
    services.revoke_api_key(api_key)
    return redirect("web:api-keys")
