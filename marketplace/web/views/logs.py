"""Invocation logs of the current organisation: the settings page (what is kept, who reads it, what a
full queue turned away) and the log browser (filter, page, open one record, export a range).

Validation, the listing and who sees bodies are the REST API's (learning.api, learning.browse)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods
from rest_framework import exceptions

from learning import browse
from learning.api.serializers import InvocationLogSettingsSerializer, RecordQuerySerializer
from learning.api.views import overflow_counts
from learning.models import InvocationLogObject, InvocationLogSettings
from learning.storage import get_store
from marketplace.accounts import tenancy
from marketplace.accounts.models import ApiKey, Organization
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, field_errors
from serving.choices import DeploymentStatus
from serving.models import Deployment

BOOLEANS = ("enabled", "keep_requests", "keep_answers", "mask_personal_data")


def _settings_of(organization: Organization) -> InvocationLogSettings:
    found = InvocationLogSettings.objects.filter(organization=organization).first()
    return found or InvocationLogSettings(organization=organization)


def _settings_data(post: QueryDict) -> dict[str, Any]:
    """The form as the API's serializer takes it: an unticked box is false, lists come from checkboxes."""
    data: dict[str, Any] = {name: name in post for name in BOOLEANS}
    data["deployments"] = post.getlist("deployments")
    data["api_keys"] = post.getlist("api_keys")
    for name in ("sample_rate", "retention_days"):
        if str(post.get(name, "")).strip():
            data[name] = str(post[name]).strip()
    return data


@login_required
@require_http_methods(["GET", "POST"])
def log_settings(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {"organization": organization, "errors": {}}
    if organization is None:
        return render(request, "web/log_settings.html", context)
    row = _settings_of(organization)
    can_manage = tenancy.can_manage(request, organization)
    context.update(
        settings=row,
        can_manage=can_manage,
        overflow=overflow_counts().get(organization.pk, 0),
        deployments=list(
            Deployment.objects.filter(organization=organization)
            .exclude(status=DeploymentStatus.DELETED)
            .order_by("name")
            .values_list("name", flat=True)
        ),
        keys=ApiKey.objects.usable().filter(organization=organization).order_by("name"),
        values={"sample_rate": row.sample_rate, "retention_days": row.retention_days},
    )
    if request.method == "GET":
        return render(request, "web/log_settings.html", context)
    if not can_manage:
        context["errors"] = {
            NON_FIELD: [
                f"Only an owner or admin of {organization.name} changes invocation logging; ask one of them."
            ]
        }
        return render(request, "web/log_settings.html", context, status=403)
    serializer = InvocationLogSettingsSerializer(
        row, data=_settings_data(request.POST), context={"organization": organization}
    )
    try:
        serializer.is_valid(raise_exception=True)
    except exceptions.ValidationError as error:
        context.update(errors=field_errors(error), values=request.POST.dict())
        return render(request, "web/log_settings.html", context, status=400)
    saved = serializer.save(organization=organization, updated_by=request.user)
    context.update(
        settings=saved,
        saved=True,
        values={"sample_rate": saved.sample_rate, "retention_days": saved.retention_days},
    )
    return render(request, "web/log_settings.html", context)


@login_required
@require_GET
def logs(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {"organization": organization, "errors": {}, "values": request.GET.dict()}
    if organization is None:
        return render(request, "web/logs.html", context)
    filled = {name: str(value).strip() for name, value in request.GET.items() if str(value).strip()}
    query = RecordQuerySerializer(data=filled)
    if not query.is_valid():
        context["errors"] = field_errors(query.errors)
        return render(request, "web/logs.html", context, status=400)
    params = query.validated_data
    bodies = tenancy.can_manage(request, organization)
    results, cursor = browse.page(
        InvocationLogObject.objects.filter(organization=organization),
        get_store(),
        browse.RecordFilter.from_query(params),
        readable={organization.pk} if bodies else set(),
        slugs={organization.pk: organization.slug},
        limit=params["limit"],
        cursor=params.get("cursor"),
    )
    for record in results:
        record["time_shown"] = record["time"][:19].replace("T", " ")
    following = request.GET.copy()
    following["cursor"] = str(cursor) if cursor else ""
    context.update(
        records=results,
        bodies=bodies,
        next_query=following.urlencode() if cursor else None,
        enabled=_settings_of(organization).enabled,
    )
    return render(request, "web/logs.html", context)


@login_required
@require_GET
def log_record(request: HttpRequest, record_id: str) -> HttpResponse:
    organization = current.organization(request)
    parts = browse.split_record_id(record_id)
    if parts is None:
        raise Http404
    object_pk, request_id = parts
    obj = get_object_or_404(
        InvocationLogObject.objects.filter(organization__in=tenancy.visible_organizations(request)),
        pk=object_pk,
        organization=organization,
    )
    record = browse.find(get_store(), obj, request_id)
    if record is None:
        raise Http404
    bodies = tenancy.can_manage(request, obj.organization)
    shown = browse.present(obj, record, obj.organization.slug, bodies=bodies)
    for name in browse.BODY_FIELDS:
        if shown.get(name) is not None:
            shown[f"{name}_json"] = json.dumps(shown[name], indent=2, ensure_ascii=False)
    return render(
        request, "web/log_record.html", {"organization": organization, "record": shown, "bodies": bodies}
    )
