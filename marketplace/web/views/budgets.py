"""Budgets of the current organisation: what each covers has cost this month, its alerts and webhook
deliveries. Members read; owners (and platform admins) set, change and delete them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework import exceptions

from marketplace.accounts import budgets, tenancy
from marketplace.accounts.api.budgets import BudgetCreateSerializer, BudgetSettingsSerializer
from marketplace.accounts.models import DEFAULT_BUDGET_THRESHOLDS, Budget, Organization, WebhookDelivery
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, field_errors
from serving import costs
from serving.models import Deployment

FIELDS = ("monthly_amount_usd", "thresholds", "webhook_url", "scale_down_at_limit")


def _current(request: HttpRequest) -> Organization:
    organization = current.organization(request)
    if organization is None:
        raise Http404("You are in no organisation.")
    return organization


def _is_owner(request: HttpRequest, organization: Organization) -> bool:
    return tenancy.role_in(request, organization) == "owner"


def _form(post: Any, *, creating: bool) -> dict[str, Any]:
    """The form as the API's serializer takes it: thresholds from "50, 80, 100", the checkbox as a bool."""
    data: dict[str, Any] = {
        "monthly_amount_usd": post.get("monthly_amount_usd", "").strip(),
        "webhook_url": post.get("webhook_url", "").strip(),
        "scale_down_at_limit": post.get("scale_down_at_limit") == "on",
    }
    thresholds = [part.strip().rstrip("%") for part in post.get("thresholds", "").split(",") if part.strip()]
    data["thresholds"] = thresholds or list(DEFAULT_BUDGET_THRESHOLDS)
    if creating:
        data["deployment"] = post.get("deployment", "").strip()
    return data


def _errors(error: exceptions.ValidationError) -> dict[str, list[str]]:
    """By field, with a threshold's own error (thresholds.1) under `thresholds`."""
    found: dict[str, list[str]] = {}
    for name, messages in field_errors(error).items():
        found.setdefault(name.split(".")[0], []).extend(messages)
    return found


def _budgets(organization: Organization) -> list[Budget]:
    """The organisation's budgets, each with `spent` this month (two queries whatever their number)."""
    rows = list(Budget.objects.filter(organization=organization).select_related("deployment"))
    now = timezone.now()
    since = budgets.month_start(now)
    by_deployment = costs.cost_by_deployment(organization_id=organization.pk, since=since, until=now)
    total = sum(by_deployment.values(), Decimal(0))
    for budget in rows:
        budget.spent = by_deployment.get(budget.deployment_id, Decimal(0)) if budget.deployment_id else total  # type: ignore[attr-defined]
        budget.percent = budgets.percent_of(budget.spent, budget.monthly_amount_usd)  # type: ignore[attr-defined]
    return rows


def _list_context(request: HttpRequest, organization: Organization) -> dict[str, Any]:
    can_change = _is_owner(request, organization)
    rows = _budgets(organization)
    for budget in rows:  # members see where a webhook goes, not the URL's token
        shown = budget.webhook_url if can_change else budgets.webhook_for_readers(budget.webhook_url)
        budget.webhook_shown = shown  # type: ignore[attr-defined]
    return {
        "organization": organization,
        "budgets": rows,
        "deployments": Deployment.objects.live().filter(organization=organization).order_by("name"),
        "can_change": can_change,
        "values": {"thresholds": "50, 80, 100"},
        "errors": {},
    }


@login_required
@require_http_methods(["GET", "POST"])
def budget_list(request: HttpRequest) -> HttpResponse:
    organization = _current(request)
    context = _list_context(request, organization)
    if request.method == "GET":
        return render(request, "web/budgets.html", context)
    context["values"] = request.POST.dict()
    try:
        budgets.require_budget_owner(tenancy.role_in(request, organization), organization)
        serializer = BudgetCreateSerializer(data=_form(request.POST, creating=True))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        deployment = None
        if data.get("deployment"):
            deployment = context["deployments"].filter(name=data["deployment"]).first()
            if deployment is None:
                raise exceptions.ValidationError(
                    {
                        "deployment": [
                            f"{organization.name} has no live deployment named '{data['deployment']}'."
                        ]
                    }
                )
        budget, secret = budgets.create_budget(
            organization=organization, deployment=deployment, monthly_amount_usd=data["monthly_amount_usd"],
            thresholds=data["thresholds"], webhook_url=data.get("webhook_url", ""),
            scale_down_at_limit=data.get("scale_down_at_limit", False), user=request.user,
        )  # fmt: skip
    except exceptions.ValidationError as error:
        context["errors"] = _errors(error)
        return render(request, "web/budgets.html", context, status=400)
    except exceptions.PermissionDenied as error:
        context["errors"] = {NON_FIELD: [str(error.detail)]}
        return render(request, "web/budgets.html", context, status=403)
    context = _list_context(request, organization)
    context.update({"created": budget, "secret": secret})
    return render(request, "web/budgets.html", context, status=201)


def _budget(request: HttpRequest, pk: int) -> Budget:
    """A budget of an organisation the person belongs to, or 404 (as for one that does not exist)."""
    visible: QuerySet[Budget] = Budget.objects.filter(
        organization__in=tenancy.visible_organizations(request)
    ).select_related("organization", "deployment")
    return get_object_or_404(visible, pk=pk)


def _detail_context(request: HttpRequest, budget: Budget) -> dict[str, Any]:
    spent = budgets.spent(budget, timezone.now())
    return {
        "budget": budget,
        "organization": budget.organization,
        "spent": spent,
        "percent": budgets.percent_of(spent, budget.monthly_amount_usd),
        "alerts": budget.alerts.all()[:50],
        "deliveries": WebhookDelivery.objects.filter(alert__budget=budget).select_related("alert")[:50],
        "can_change": _is_owner(request, budget.organization),
        "values": {
            "monthly_amount_usd": budget.monthly_amount_usd,
            "thresholds": ", ".join(map(str, budget.thresholds)),
            "webhook_url": budget.webhook_url,
            "scale_down_at_limit": budget.scale_down_at_limit,
        },
        "errors": {},
    }


@login_required
@require_http_methods(["GET", "POST"])
def budget_detail(request: HttpRequest, pk: int) -> HttpResponse:
    budget = _budget(request, pk)
    context = _detail_context(request, budget)
    if request.method == "GET":
        return render(request, "web/budget.html", context)
    try:
        budgets.require_budget_owner(tenancy.role_in(request, budget.organization), budget.organization)
        serializer = BudgetSettingsSerializer(data=_form(request.POST, creating=False))
        serializer.is_valid(raise_exception=True)
        budgets.update_budget(budget, serializer.validated_data)
    except exceptions.ValidationError as error:
        context["errors"] = _errors(error)
        context["values"] = request.POST.dict()
        return render(request, "web/budget.html", context, status=400)
    except exceptions.PermissionDenied as error:
        context["errors"] = {NON_FIELD: [str(error.detail)]}
        return render(request, "web/budget.html", context, status=403)
    return redirect("web:budget", pk=budget.pk)


@login_required
@require_POST
def budget_rotate_secret(request: HttpRequest, pk: int) -> HttpResponse:
    budget = _budget(request, pk)
    context = _detail_context(request, budget)
    try:
        budgets.require_budget_owner(tenancy.role_in(request, budget.organization), budget.organization)
    except exceptions.PermissionDenied as error:
        context["errors"] = {NON_FIELD: [str(error.detail)]}
        return render(request, "web/budget.html", context, status=403)
    context["secret"] = budgets.rotate_secret(budget)
    return render(request, "web/budget.html", context)


@login_required
@require_POST
def budget_delete(request: HttpRequest, pk: int) -> HttpResponse:
    budget = _budget(request, pk)
    try:
        budgets.require_budget_owner(tenancy.role_in(request, budget.organization), budget.organization)
    except exceptions.PermissionDenied as error:
        context = _detail_context(request, budget)
        context["errors"] = {NON_FIELD: [str(error.detail)]}
        return render(request, "web/budget.html", context, status=403)
    budgets.delete_budget(budget)
    return redirect("web:budgets")
