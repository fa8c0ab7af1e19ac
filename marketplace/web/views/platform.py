"""Platform admins: every organisation with its quota use, quota editing, every deployment, usage
across organisations. Anyone else gets 404: the pages' existence is not advertised."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from marketplace.accounts.api.serializers import QuotaSerializer
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog.models import InstanceType
from marketplace.web import charts
from marketplace.web.charts import quota_bars
from marketplace.web.forms import field_errors, form_data
from serving.choices import DeploymentStatus
from serving.models import Deployment, UsageRecord

QUOTA_FIELDS = (
    "max_gpus",
    "max_deployments",
    "max_cpu_replicas",
    "monthly_token_budget",
    "requests_per_minute",
    "tokens_per_minute",
)


def platform_admin_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    @login_required
    def check(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404
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
        data = form_data(request.POST, QUOTA_FIELDS)
        # A GPU model left empty has no limit of its own (the total applies).
        data["gpus_per_model"] = {
            model: request.POST[f"gpus_per_model.{model}"].strip()
            for model in gpu_models
            if request.POST.get(f"gpus_per_model.{model}", "").strip()
        }
        serializer = QuotaSerializer(quota, data=data, partial=True)
        if serializer.is_valid():
            serializer.save()
            return redirect("web:platform")
        context["errors"] = field_errors(serializer.errors)
        context["values"] = {name: request.POST.get(name, "") for name in QUOTA_FIELDS}
        context["per_model"] = {
            model: request.POST.get(f"gpus_per_model.{model}", "") for model in gpu_models
        }
        return render(request, "web/platform_quota.html", context, status=400)
    return render(request, "web/platform_quota.html", context)
