"""Browse → subscribe: the catalog with its facets, a model's page, subscribing and unsubscribing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import Func, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST
from rest_framework import exceptions

from marketplace.accounts import tenancy
from marketplace.catalog import choices
from marketplace.catalog.filtersets import ModelCardFilterSet
from marketplace.catalog.models import InstanceType, License, ModelCard, Provider
from marketplace.subscriptions import services as subscriptions
from marketplace.subscriptions.models import Subscription
from marketplace.web import current
from marketplace.web.fitting import cheapest_fit, instance_rows, memory_arithmetic
from marketplace.web.forms import field_errors
from marketplace.web.htmx import render_page
from serving.choices import Backend

PAGE_SIZE = 24  # a multiple of the grid's 2, 3 and 4 columns
SORTS = {
    "name": ("name", "Name"),
    "-parameters": ("-parameters", "Largest first"),
    "parameters": ("parameters", "Smallest first"),
    "-context_length": ("-context_length", "Longest context"),
    "-release_date": ("-release_date", "Newest"),
}
# Size buckets (billions of parameters) offered as one facet; the API takes any range.
SIZES = {
    "": ("", "", "Any size"),
    "small": ("", "3", "Up to 3B"),
    "medium": ("3", "15", "3B – 15B"),
    "large": ("15", "80", "15B – 80B"),
    "huge": ("80", "", "Over 80B"),
}
CONTEXTS = {"": "Any context", "8192": "8K+", "32768": "32K+", "131072": "128K+", "1000000": "1M+"}
VOCABULARY_SECONDS = 60


class Unnest(Func):
    function = "unnest"


def vocabularies() -> dict[str, Any]:
    """The facets' options. They change only when the catalog is loaded again, so they are kept in the
    cache for a minute instead of costing four queries on every page."""
    found = cache.get("web:catalog-vocabularies")
    if found is None:
        found = {
            "providers": list(Provider.objects.order_by("name").values_list("slug", "name")),
            "licenses": list(License.objects.order_by("name").values_list("identifier", "name")),
            # order_by(): the default ordering would join `name` into the DISTINCT.
            "languages": list(
                ModelCard.objects.annotate(language=Unnest("languages"))
                .order_by("language")
                .values_list("language", flat=True)
                .distinct()
            ),
            "instance_types": list(
                InstanceType.objects.order_by("provider", "gpu_count", "name").values_list("slug", "name")
            ),
        }
        cache.set("web:catalog-vocabularies", found, VOCABULARY_SECONDS)
    return dict(found)


def _catalog_query(request: HttpRequest) -> tuple[dict[str, str], dict[str, str]]:
    """The page's own parameters (size, sort) turned into the filterset's (parameters_min/max)."""
    params = {key: str(value) for key, value in request.GET.items() if value != "" and key != "page"}
    size = params.pop("size", "")
    extra = {"size": size, "sort": params.pop("sort", "name")}
    if size in SIZES:
        low, high, _ = SIZES[size]
        if low:
            params["parameters_min"] = low
        if high:
            params["parameters_max"] = high
    return params, extra


@require_GET
def catalog(request: HttpRequest) -> HttpResponse:
    params, extra = _catalog_query(request)
    filterset = ModelCardFilterSet(
        params,
        queryset=ModelCard.objects.select_related("provider", "license").defer(
            "search_text", "summary", "license__text"
        ),
    )
    errors = {}
    if filterset.is_valid():
        cards: QuerySet[ModelCard] = filterset.qs
    else:
        errors = {name: list(messages) for name, messages in filterset.errors.items()}
        cards = ModelCard.objects.none()
    sort = extra["sort"] if extra["sort"] in SORTS else "name"
    cards = cards.order_by(SORTS[sort][0], "name")
    page = Paginator(cards, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "errors": errors,
        "selected": {**request.GET.dict(), "sort": sort},
        "query_string": query.urlencode(),
        "vocabularies": vocabularies(),
        "tasks": choices.TASKS,
        "domains": choices.DOMAINS,
        "modalities": choices.MODALITIES_IN,
        "sizes": {key: label for key, (_, _, label) in SIZES.items()},
        "contexts": CONTEXTS,
        "sorts": {key: label for key, (_, label) in SORTS.items()},
        "commercial_uses": choices.CommercialUse.choices,
    }
    return render_page(request, "web/catalog.html", context, parts={"results": "web/_catalog_results.html"})


# The cost table's replica counts: (field, label, default, least, most).
REPLICA_FIELDS = (("min_replicas", "Min replicas", 1, 0, 64), ("max_replicas", "Max replicas", 2, 1, 64))


def _replicas(request: HttpRequest) -> tuple[int, int, dict[str, list[str]]]:
    """The replica counts the cost table is worked out for, and what is wrong with those typed.

    A page opened without them gets the defaults. Once the estimate form has sent them (its hidden
    `estimate` field says so), a count left out is refused like a bad one: the browser leaves out a number
    field it cannot read, and a table of the defaults would look like the estimate of what was typed."""
    errors: dict[str, list[str]] = {}
    values = []
    sent = "estimate" in request.GET
    for name, label, default, least, most in REPLICA_FIELDS:
        raw = request.GET.get(name, "" if sent else str(default)).strip()
        if raw.isascii() and raw.isdigit() and least <= int(raw) <= most:
            values.append(int(raw))
        else:
            shown = f" (not {raw[:20]!r})" if raw else ""
            errors[name] = [f"{label} must be a whole number from {least} to {most}{shown}."]
            values.append(default)
    low, high = values
    if not errors and low > high:
        errors["min_replicas"] = [f"Min replicas ({low}) must not be above max replicas ({high})."]
    return low, high, errors


def _model_context(request: HttpRequest, card: ModelCard) -> dict[str, Any]:
    organization = current.organization(request)
    subscription = None
    if organization is not None:
        subscription = (
            Subscription.objects.select_related("accepted_by")
            .filter(organization=organization, model_card=card)
            .first()
        )
        if subscription is not None:
            subscription.model_card = card  # already loaded: `in_force` compares with its license
    low, high, errors = _replicas(request)
    rows = instance_rows(card, min_replicas=low, max_replicas=high)
    return {
        "card": card,
        "organization": organization,
        "subscription": subscription,
        "in_force": subscription is not None and subscription.in_force,
        "can_manage": organization is not None and tenancy.can_manage(request, organization),
        "fit_rows": rows,
        "cheapest": cheapest_fit(rows),
        "memory": memory_arithmetic(card),
        "min_replicas": low,
        "max_replicas": high,
        "replica_errors": errors,
        "local_backend": settings.SERVING_BACKEND == Backend.LOCAL,
        "errors": {},
    }


def _card(slug: str) -> ModelCard:
    return get_object_or_404(ModelCard.objects.select_related("provider", "license"), slug=slug)


@require_GET
def model_page(request: HttpRequest, slug: str) -> HttpResponse:
    context = _model_context(request, card)
    response = render_page(request, "web/model.html", context, parts={"fits": "web/_fits.html"})
    if context["replica_errors"]:
        response.status_code = 400  # the page and the table say what to type instead
    return response


@login_required
@require_POST
def subscribe(request: HttpRequest, slug: str) -> HttpResponse:
    card = _card(slug)
    organization = current.organization(request)
    errors: dict[str, list[str]] = {}
    if organization is None:
        errors["accept"] = ["You are in no organisation yet: ask a platform admin to add you to one."]
    elif not tenancy.can_manage(request, organization):
        errors["accept"] = [
            f"Only an owner or admin of {organization.name} accepts licenses; ask one of them to subscribe."
        ]
    elif request.POST.get("accept") != "yes":
        errors["accept"] = ["Tick the box to accept the license terms."]
    else:
        try:
            subscriptions.subscribe(
                organization=organization,
                card=card,
                license_sha256=request.POST.get("license_sha256") or None,
                user=request.user,  # type: ignore[arg-type]
            )
        except exceptions.ValidationError as error:
            errors = field_errors(error)
    if not errors:
        return redirect("web:model", slug=card.slug)
    context = _model_context(request, card)
    context["errors"] = {"accept": [m for messages in errors.values() for m in messages]}
    return render(request, "web/model.html", context, status=400)


@login_required
@require_POST
def unsubscribe(request: HttpRequest, slug: str) -> HttpResponse:
    card = _card(slug)
    organization = current.organization(request)
    subscription = get_object_or_404(
        Subscription.objects.filter(organization__in=tenancy.visible_organizations(request)),
        organization=organization,
        model_card=card,
    )
    if not tenancy.can_manage(request, subscription.organization):
        context = _model_context(request, card)
        context["errors"] = {"unsubscribe": ["Only an owner or admin may unsubscribe."]}
        return render(request, "web/model.html", context, status=403)
    try:
        subscriptions.unsubscribe(subscription)
    except exceptions.APIException as error:  # live deployments of the model: delete them first
        context = _model_context(request, card)
        context["errors"] = {"unsubscribe": [str(error.detail)]}
        return render(request, "web/model.html", context, status=error.status_code)
    return redirect("web:model", slug=card.slug)
