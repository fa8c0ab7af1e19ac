"""Browse → subscribe: the catalog with its facets, a model's page, subscribing and unsubscribing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Page, Paginator
from django.db.models import F, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST
from rest_framework import exceptions

from marketplace.accounts import tenancy
from marketplace.catalog import search
from marketplace.catalog.filtersets import ModelCardFilterSet
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions import services as subscriptions
from marketplace.subscriptions.models import Subscription
from marketplace.web import catalog_facets as facets
from marketplace.web import current
from marketplace.web.fitting import cheapest_fit, instance_rows, memory_arithmetic, why_not_here
from marketplace.web.forms import field_errors
from marketplace.web.htmx import render_page
from marketplace.wording import reword
from serving.choices import Backend

PAGE_SIZE = 24  # a multiple of the grid's 2, 3 and 4 columns
RELEVANCE = "relevance"
# Each sort's label and order; ties go by name, and unknown release dates sort last.
SORTS: dict[str, tuple[str, tuple[Any, ...]]] = {
    RELEVANCE: ("Best match", ()),  # ordered in Python from the search's ranks (_best_match_page)
    "name": ("Name", ("name",)),
    "-parameters": ("Largest first", ("-parameters", "name")),
    "parameters": ("Smallest first", ("parameters", "name")),
    "-context_length": ("Longest context", ("-context_length", "name")),
    "-release_date": ("Newest", (F("release_date").desc(nulls_last=True), "name")),
}
CONTEXTS = {"": "Any context", "8192": "8K+", "32768": "32K+", "131072": "128K+", "1000000": "1M+"}
SEARCH_MAX_LENGTH = 200
# Single-valued filters that the API's filterset validates and applies; the facets are catalog_facets'.
SINGLE_FILTERS = (
    "context_length_min", "context_length_max", "parameters_min", "parameters_max", "fits", "gated",
    "cpu_capable",
)  # fmt: skip
# What the page calls each filter the facets do not (the facets' own labels name theirs).
FILTER_LABELS = {
    "q": "Search", "context_length_min": "Context length", "context_length_max": "Context length",
    "parameters_min": "Parameters", "parameters_max": "Parameters", "fits": "Fits instance type",
    "gated": "Gated", "cpu_capable": "Runs on CPU",
}  # fmt: skip


def _searched_cards(
    request: HttpRequest,
) -> tuple[QuerySet[ModelCard], dict[str, list[str]], dict[int, float] | None]:
    """The cards that pass the search and the single-valued filters (the facets come after), the errors
    in words by field, and each found card's search rank (None when the person did not search).

    The search runs once, in its own query, and the rest of the page reads its result by primary key:
    the search document is the costly part, and the page would otherwise work it out three times."""
    params = {name: request.GET[name] for name in SINGLE_FILTERS if request.GET.get(name, "") != ""}
    filterset = ModelCardFilterSet(params, queryset=ModelCard.objects.all())
    if not filterset.is_valid():
        errors = {
            name: [reword(message) for message in messages] for name, messages in filterset.errors.items()
        }
        return ModelCard.objects.none(), errors, None
    cards: QuerySet[ModelCard] = filterset.qs
    text = request.GET.get("q", "").strip()
    if len(text) > SEARCH_MAX_LENGTH:
        return ModelCard.objects.none(), {"q": [f"Search for at most {SEARCH_MAX_LENGTH} characters."]}, None
    if not text:
        return cards, {}, None
    ranks = dict(search.search(cards, text).values_list("pk", "search_rank"))  # type: ignore[misc]
    return ModelCard.objects.filter(pk__in=list(ranks)), {}, ranks


def _best_match_page(shown: QuerySet[ModelCard], ranks: dict[int, float], number: str | None) -> Page[Any]:
    """A page of `shown`, best match first (ties by name), ordered here from the ranks the search gave."""
    order = sorted(shown.values_list("pk", "name"), key=lambda row: (-ranks[row[0]], row[1].casefold()))
    page: Page[Any] = Paginator([pk for pk, _ in order], PAGE_SIZE).get_page(number)
    cards = shown.in_bulk(list(page.object_list))
    page.object_list = [cards[pk] for pk in page.object_list]
    return page


@require_GET
def catalog(request: HttpRequest) -> HttpResponse:
    cards, errors, ranks = _searched_cards(request)
    searched = ranks is not None
    selection = {name: [v for v in request.GET.getlist(name) if v != ""] for name in facets.FACET_NAMES}
    selection_errors = facets.check_selection(selection)
    if selection_errors:
        errors.update(selection_errors)
        cards = ModelCard.objects.none()
    instance_types = list(InstanceType.objects.order_by("provider", "gpu_count", "name"))
    cards = facets.with_deployable(cards, instance_types)
    filters = facets.facet_filters(selection)
    facet_results = facets.counts(cards, selection, filters)
    shown = (
        cards.filter(*filters.values())
        .select_related("provider", "license")
        .defer("search_text", "search_vector", "summary", "license__text")
    )
    sort = request.GET.get("sort") or (RELEVANCE if searched else "name")
    if sort not in SORTS or (sort == RELEVANCE and not searched):
        sort = "name"
    page: Page[Any]
    if sort == RELEVANCE and ranks is not None:
        page = _best_match_page(shown, ranks, request.GET.get("page"))
    else:
        page = Paginator(shown.order_by(*SORTS[sort][1]), PAGE_SIZE).get_page(request.GET.get("page"))
    for card in page.object_list:  # a sentence for a person on the badge of a model that cannot run here
        card.why_not_here = None if card.deployable else why_not_here(card, instance_types)  # type: ignore[union-attr]
    query = request.GET.copy()
    query.pop("page", None)
    labels = {**FILTER_LABELS, **{facet.name: facet.label for facet in facet_results}}
    single_active = sum(1 for name in ("context_length_min", "fits") if request.GET.get(name))
    context = {
        "page": page,
        "errors": errors,
        "error_rows": [(labels.get(name, name), messages) for name, messages in errors.items()],
        "selected": {**request.GET.dict(), "sort": sort},
        "query_string": query.urlencode(),
        "facets": facet_results,
        "active_filters": sum(facet.selected_count for facet in facet_results) + single_active,
        "instance_types": [(instance.slug, instance.name) for instance in instance_types],
        "contexts": CONTEXTS,
        # The first option sends no sort: the best match while searching, else by name. A search typed
        # after the page loaded then still lists the best match first.
        "sorts": {"": "Best match", **{key: label for key, (label, _) in SORTS.items() if key != RELEVANCE}},
        "sort_chosen": request.GET.get("sort", "") if request.GET.get("sort") != RELEVANCE else "",
        # An htmx request for the results also refreshes the facets' counts (out of band).
        "refresh_facets": request.headers.get("HX-Target") == "results",
    }
    response = render_page(
        request, "web/catalog.html", context, parts={"results": "web/_catalog_results.html"}
    )
    if errors:
        response.status_code = 400  # the results say which filter to change (htmx swaps a 400 in too)
    return response


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
    card = _card(slug)
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
