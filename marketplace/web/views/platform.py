"""Platform admins: every organisation with its quota use, quota editing, every deployment, usage
across organisations. Anyone else is told that the pages are for platform admins, and where to go
instead (their links are shown to platform admins only)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from marketplace.accounts.api.serializers import QuotaSerializer
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog.models import InstanceType
from marketplace.web import charts
from marketplace.web.charts import quota_bars
from marketplace.web.forms import error_summary, field_errors, form_data
from serving.choices import DeploymentStatus
from serving.models import Deployment, UsageRecord
from serving.services import quota_use

QUOTA_FIELDS = (
    "max_gpus",
    "max_deployments",
    "max_cpu_replicas",
    "monthly_token_budget",
    "requests_per_minute",
    "tokens_per_minute",
)
QUOTA_LABELS = {
    "max_gpus": "GPUs, all models",
    "max_deployments": "Deployments",
    "max_cpu_replicas": "CPU replicas",
    "monthly_token_budget": "Monthly token budget",
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
}
# Every quota has a limit (the model has no "unlimited"), so a field cleared on the form is refused
# rather than silently keeping the old value.
CLEARED = "Every quota has a limit: enter a number (0 allows none)."
NOT_FOR_YOU = (
    "The platform pages are for platform admins, who set every organisation's quota. Your organisation's "
    "quota and members are on its Organisation page; ask a platform admin to change a quota."
)


def platform_admin_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    @login_required
    def check(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied(NOT_FOR_YOU)
        return view(request, *args, **kwargs)

    return check


@platform_admin_only
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    organizations = (
        Organization.objects.annotate(
            live=Count("deployments", filter=~Q(deployments__status=DeploymentStatus.DELETED)),
            gpus=Sum("deployments__reserved_gpus"),
        )
        .select_related("quota")
        .order_by("name")
    )
    deployments = (
        Deployment.objects.exclude(status=DeploymentStatus.DELETED)
        .select_related("organization", "model_card", "instance_type")
        .order_by("organization__name", "name")
    )
    usage = (
        UsageRecord.objects.values("organization__slug", "organization__name")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by("organization__name")
    )
    return render(
        request,
        "web/platform.html",
        {
            "organizations": organizations,
            "deployments": deployments,
            "usage": usage,
            **charts.usage_charts(UsageRecord.objects.all(), "30d"),
        },
    )


@platform_admin_only
@require_http_methods(["GET", "POST"])
def edit_quota(request: HttpRequest, slug: str) -> HttpResponse:
    organization = get_object_or_404(Organization, slug=slug)
    quota = Quota.objects.get_or_create(organization=organization)[0]
    gpu_models = sorted(set(InstanceType.objects.filter(gpu_count__gt=0).values_list("gpu_model", flat=True)))
    context: dict[str, Any] = {
        "organization": organization,
        "bars": quota_bars(organization),
        "errors": {},
        "values": {name: getattr(quota, name) for name in QUOTA_FIELDS},
        "per_model": {model: quota.gpus_per_model.get(model, "") for model in gpu_models},
    }
    if request.method == "POST":
        cleared = {
            name: [CLEARED]
            for name in QUOTA_FIELDS
            if name in request.POST and not request.POST[name].strip()
        }
        data = form_data(request.POST, QUOTA_FIELDS)
        # A GPU model left empty has no limit of its own (the total applies).
        data["gpus_per_model"] = {
            model: request.POST[f"gpus_per_model.{model}"].strip()
            for model in gpu_models
            if request.POST.get(f"gpus_per_model.{model}", "").strip()
        }
        serializer = QuotaSerializer(quota, data=data, partial=True)
        if serializer.is_valid() and not cleared:
            serializer.save()
            messages.success(request, f"The quota of {organization.name} was saved.")
            for warning in _above_the_new_limits(organization):
                messages.warning(request, warning)
            return redirect("web:platform")
        context["errors"] = {**field_errors(serializer.errors or {}), **cleared}
        context["summary"] = error_summary(context["errors"], QUOTA_LABELS)
        context["values"] = {name: request.POST.get(name, "") for name in QUOTA_FIELDS}
        context["per_model"] = {
            model: request.POST.get(f"gpus_per_model.{model}", "") for model in gpu_models
        }
        return render(request, "web/platform_quota.html", context, status=400)
    return render(request, "web/platform_quota.html", context)


def _above_the_new_limits(organization: Organization) -> list[str]:
    """What an organisation already uses beyond its (new) quota, with the numbers: nothing running is
    stopped, but it cannot deploy or scale up past the limit until it is back under it."""
    use = quota_use(organization)
    quota = use.quota
    over = [
        (use.deployments, quota.max_deployments, "deployments"),
        (use.gpus, quota.max_gpus, "GPUs"),
        (use.cpu_replicas, quota.max_cpu_replicas, "CPU replicas"),
        *((used, quota.gpus_per_model[model], f"× {model}") for model, used in use.gpus_by_model.items()
          if model in quota.gpus_per_model),
        (use.tokens_this_month, quota.monthly_token_budget, "tokens this month"),
    ]  # fmt: skip
    return [
        f"{organization.name} already uses {used:,} {what}, above the new limit of {limit:,}: "
        "what runs keeps running, but it cannot add more until it is back under the limit."
        for used, limit, what in over
        if used > limit
    ]
