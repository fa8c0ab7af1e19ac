"""Custom models of the current organisation: the list with a register form, a model's page (the facts
read from its files) and deleting one.

Validation and refusals are the REST API's and the service's (marketplace.catalog.api.custom_models,
marketplace.catalog.custom_models): every member sees the organisation's custom models; owners and
admins register and delete them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework import exceptions

from marketplace.accounts import tenancy
from marketplace.catalog import custom_models
from marketplace.catalog.api.custom_models import CustomModelCreateSerializer, StoreKeySerializer
from marketplace.catalog.choices import CustomModelSource
from marketplace.catalog.models import CustomModel, ModelCard
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, error_summary, field_errors, form_data

FIELDS = (
    "name", "source", "huggingface_repo", "revision", "hf_token", "uri", "endpoint_url", "region",
    "access_key_id", "secret_access_key", "path", "base", "summary",
)  # fmt: skip
SECRETS = ("hf_token", "secret_access_key")  # never sent back to the browser
LABELS = {
    "name": "Name",
    "source": "Where the weights are",
    "huggingface_repo": "Hugging Face repository",
    "revision": "Commit",
    "hf_token": "Access token",
    "uri": "Folder in the store",
    "endpoint_url": "Endpoint",
    "region": "Region",
    "access_key_id": "Access key id",
    "secret_access_key": "Secret access key",
    "path": "Folder",
    "base": "Base model",
    "summary": "Summary",
}


def _list_context(request: HttpRequest) -> dict[str, Any]:
    organization = current.organization(request)
    context: dict[str, Any] = {
        "organization": organization,
        "errors": {},
        "summary": [],
        "values": {"source": CustomModelSource.PATH},
        "sources": CustomModelSource.choices,
        "roots": settings.CUSTOM_MODEL_ROOTS,
        "endpoint_help": "Empty for AWS S3; otherwise one of "
        + (", ".join(settings.CUSTOM_MODEL_STORE_ENDPOINTS) or "none yet (a platform admin adds them)")
        + ".",
    }
    if organization is not None:
        context["custom_models"] = CustomModel.objects.filter(organization=organization).select_related(
            "card", "base"
        )
        context["can_manage"] = tenancy.can_manage(request, organization)
        context["bases"] = (
            ModelCard.objects.visible_to(organization)
            .filter(tasks__overlap=["chat", "text-generation"])
            .exclude(custom_model__source=CustomModelSource.ADAPTER)
            .order_by("name")
        )
    return context


@login_required
@require_http_methods(["GET", "POST"])
def custom_model_list(request: HttpRequest) -> HttpResponse:
    context = _list_context(request)
    organization = context["organization"]
    if request.method == "GET" or organization is None:
        return render(request, "web/custom_models.html", context)
    context["values"] = {
        name: str(request.POST.get(name, "")).strip() for name in FIELDS if name not in SECRETS
    }
    if not context["can_manage"]:
        context["errors"] = {
            NON_FIELD: [f"Only an owner or admin of {organization.name} registers custom models."]
        }
        context["summary"] = error_summary(context["errors"], LABELS)
        return render(request, "web/custom_models.html", context, status=403)
    serializer = CustomModelCreateSerializer(data=form_data(request.POST, FIELDS))
    try:
        serializer.is_valid(raise_exception=True)
        custom = serializer.register(organization, request.user)
    except exceptions.APIException as error:  # any refusal is shown beside its field, never a 500
        context["errors"] = field_errors(exceptions.ValidationError(error.detail))
        context["summary"] = error_summary(context["errors"], LABELS)
        return render(request, "web/custom_models.html", context, status=error.status_code)
    return redirect("web:custom-model", pk=custom.pk)


def _custom_model_of(request: HttpRequest, pk: int) -> CustomModel:
    return get_object_or_404(
        CustomModel.objects.select_related("organization", "card", "base", "created_by"),
        pk=pk,
        organization=current.organization(request),
    )


def _page(
    request: HttpRequest,
    custom: CustomModel,
    *,
    status: int = 200,
    errors: Any = None,
    values: dict[str, str] | None = None,
) -> HttpResponse:
    context = {
        "values": values or {},
        "organization": custom.organization,
        "custom": custom,
        "card": custom.card,
        "can_manage": tenancy.can_manage(request, custom.organization),
        "adapters": CustomModel.objects.filter(base=custom.card).order_by("name"),
        "errors": errors or {},
    }
    return render(request, "web/custom_model.html", context, status=status)


@login_required
def custom_model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _page(request, _custom_model_of(request, pk))


@login_required
@require_POST
def custom_model_delete(request: HttpRequest, pk: int) -> HttpResponse:
    custom = _custom_model_of(request, pk)
    if not tenancy.can_manage(request, custom.organization):
        errors = {NON_FIELD: [f"Only an owner or admin of {custom.organization.name} deletes custom models."]}
        return _page(request, custom, status=403, errors=errors)
    try:
        custom_models.delete_custom_model(custom)
    except exceptions.APIException as error:
        return _refused(request, custom, error)
    return redirect("web:custom-models")


def _refused(
    request: HttpRequest,
    custom: CustomModel,
    error: exceptions.APIException,
    values: dict[str, str] | None = None,
) -> HttpResponse:
    """The model's page again, with a refusal beside its field, or at the top when the page has no such
    field (the folder out of reach, say): never a 500, never a refusal nobody sees."""
    errors: dict[str, list[str]] = {}
    for field, messages in field_errors(exceptions.ValidationError(error.detail)).items():
        errors.setdefault(field if field in PAGE_FIELDS else NON_FIELD, []).extend(messages)
    return _page(request, custom, status=error.status_code, errors=errors, values=values)


# The fields the model's page shows refusals beside (the rest go at its top).
PAGE_FIELDS = ("name", "access_key_id", "secret_access_key")


@login_required
@require_POST
def custom_model_key(request: HttpRequest, pk: int) -> HttpResponse:
    """Replace a store-registered model's read key (the API's POST /api/custom-models/<id>/key/)."""
    custom = _custom_model_of(request, pk)
    values = {"access_key_id": str(request.POST.get("access_key_id", "")).strip()}
    if not tenancy.can_manage(request, custom.organization):
        errors = {NON_FIELD: [f"Only an owner or admin of {custom.organization.name} replaces keys."]}
        return _page(request, custom, status=403, errors=errors, values=values)
    serializer = StoreKeySerializer(data=form_data(request.POST, ("access_key_id", "secret_access_key")))
    try:
        serializer.is_valid(raise_exception=True)
        custom_models.replace_store_key(custom, **serializer.validated_data)
    except exceptions.APIException as error:
        return _refused(request, custom, error, values)
    return redirect("web:custom-model", pk=custom.pk)
