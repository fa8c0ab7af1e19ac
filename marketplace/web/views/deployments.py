"""Deploy → provision → ready, as people see it: the deploy form, the list, a deployment's page with
its live status, timeline, snippets and usage, scaling and deleting."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import exceptions

from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import Conflict
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.models import Subscription
from marketplace.web import charts, current, guardrail_chart
from marketplace.web.fitting import instance_rows, why_not_here
from marketplace.web.forms import NON_FIELD, error_summary, field_errors, form_data
from marketplace.web.htmx import render_page
from serving import services
from serving.api.serializers import (
    DTYPES,
    QUANTIZATIONS,
    DeploymentCreateSerializer,
    DeploymentScaleSerializer,
    EngineOptionsSerializer,
)
from serving.choices import POLICY_EXPLANATIONS, AutoscalingPolicy, Backend, DeploymentStatus
from serving.models import Deployment

SCALING_FIELDS = (
    "min_replicas", "max_replicas", "autoscaling_policy", "autoscaling_target", "idle_seconds",
    "scale_up_window_seconds", "scale_down_window_seconds",
)  # fmt: skip
ENGINE_FIELDS = tuple(EngineOptionsSerializer().fields)
# The steps a new deployment goes through, for the progress timeline.
STEPS = (
    (DeploymentStatus.PENDING, "Requested"),
    (DeploymentStatus.PROVISIONING, "Starting the engine"),
    (DeploymentStatus.READY, "Ready"),
)
POLLING = {DeploymentStatus.PENDING, DeploymentStatus.PROVISIONING, DeploymentStatus.UPDATING,
           DeploymentStatus.DELETING}  # fmt: skip


def visible_deployments(request: HttpRequest) -> QuerySet[Deployment]:
    return Deployment.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
        "organization", "model_card", "instance_type"
    )


def deployment_or_404(request: HttpRequest, pk: int) -> Deployment:
    """The deployment, or 404 for one of an organisation the person is not in (as for one that does not
    exist). Any member may scale and delete, as in the API."""
    return get_object_or_404(visible_deployments(request), pk=pk)


@login_required
@require_GET
def deployment_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    deployments = (
        visible_deployments(request)
        .filter(organization=organization)
        .exclude(status=DeploymentStatus.DELETED)
        if organization
        else Deployment.objects.none()
    )
    return render(
        request,
        "web/deployments.html",
        {"organization": organization, "deployments": deployments},
    )


# The deploy form's fields as the error summary names them, and the element each refusal links to.
DEPLOY_LABELS = {
    "model": "Subscribed model",
    "name": "Deployment name",
    "instance_type": "Instance type",
    "min_replicas": "Min replicas",
    "max_replicas": "Max replicas",
    "autoscaling_policy": "Autoscaling policy",
    "autoscaling_target": "Target",
    "idle_seconds": "Idle seconds before zero",
    "scale_up_window_seconds": "Scale-up window",
    "scale_down_window_seconds": "Scale-down window",
    "tensor_parallel_size": "Tensor-parallel size",
    "engine_options": "Engine options",
    "engine_options.max_model_len": "Max model length",
    "engine_options.max_num_seqs": "Max concurrent sequences",
    "engine_options.gpu_memory_utilization": "GPU memory utilisation",
    "engine_options.dtype": "Data type",
    "engine_options.quantization": "Quantization",
    "engine_options.enable_prefix_caching": "Prefix caching",
}


def _deploy_context(organization: Organization | None, card: ModelCard | None) -> dict[str, Any]:
    subscribed = list(
        ModelCard.objects.visible_to(organization)
        .filter(subscriptions__in=Subscription.objects.in_force().filter(organization=organization))
        .order_by("name")
        if organization
        else ModelCard.objects.none()
    )
    rows = instance_rows(card) if card else []
    # Said before anyone clicks: which models this platform cannot run, why, and what can run instead.
    instance_types = [row["instance"] for row in rows] or list(InstanceType.objects.all())
    cannot_run = why_not_here(card, instance_types) if card else None
    runs_here = {option.pk: why_not_here(option, instance_types) is None for option in subscribed}
    return {
        "organization": organization,
        "card": card,
        "cannot_run": cannot_run,
        "runnable": [option for option in subscribed if option != card and runs_here[option.pk]]
        if cannot_run
        else [],
        "subscribed": subscribed,
        "model_choices": [(option, suggested_name(option), runs_here[option.pk]) for option in subscribed],
        "instances": rows,
        "unusable": [row for row in rows if not row["usable"]],
        "policies": [
            (policy.value, policy.label, POLICY_EXPLANATIONS[policy]) for policy in AutoscalingPolicy
        ],
        "local_backend": settings.SERVING_BACKEND == Backend.LOCAL,
        "bars": charts.quota_bars(organization) if organization else [],
        "dtypes": DTYPES,
        "quantizations": QUANTIZATIONS,
        "values": {
            "min_replicas": "1",
            "max_replicas": "1",
            "autoscaling_policy": "fixed",
            "autoscaling_target": "5",
            "idle_seconds": "900",
            "scale_up_window_seconds": "0",
            "scale_down_window_seconds": "300",
        },
        "errors": {},
        "summary": [],
    }


def _refused(
    request: HttpRequest, context: dict[str, Any], errors: dict[str, list[str]], status: int = 400
) -> HttpResponse:
    """The form again with every refusal: next to its field, and all of them in a summary at the top
    (a refusal of no field on the form, such as the deployments quota, appears there)."""
    context["errors"] = errors
    context["summary"] = error_summary(errors, DEPLOY_LABELS)
    context["engine_open"] = any(
        name.startswith("engine_options") or name == "tensor_parallel_size" for name in errors
    )
    return render(request, "web/deploy.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def deploy(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    slug = request.POST.get("model") or request.GET.get("model")
    card = ModelCard.objects.visible_to(organization).filter(slug=slug).first() if slug else None
    context = _deploy_context(organization, card)
    if request.method == "GET":
        if card is not None:
            context["values"]["name"] = suggested_name(card)
        return render(request, "web/deploy.html", context)
    context["values"] = request.POST.dict()
    if organization is None:
        return _refused(
            request,
            context,
            {NON_FIELD: ["You are in no organisation yet: ask a platform admin to add you to one."]},
        )
    if context["cannot_run"] and not request.POST.get("instance_type"):
        return _refused(request, context, {"model": [context["cannot_run"]]})
    data = form_data(
        request.POST,
        ("name", "model", "instance_type", "tensor_parallel_size", *SCALING_FIELDS),
        nested={"engine_options": ENGINE_FIELDS},
    )
    # A field left empty is "not given": the serializer's default or the card's engine default applies.
    serializer = DeploymentCreateSerializer(data=data)
    try:
        serializer.is_valid(raise_exception=True)
        deployment = serializer.create_deployment(organization, request.user)
    except exceptions.APIException as error:  # a refusal of any kind (400, 403, 409) is shown, never a 500
        errors = field_errors(exceptions.ValidationError(error.detail))
        return _refused(request, context, errors, status=error.status_code)
    return redirect("web:deployment", pk=deployment.pk)


def suggested_name(card: ModelCard) -> str:
    """A deployment name made from the model's, offered until the person types their own."""
    return card.slug.replace(".", "-")[:40].strip("-")


def snippet_kind(routes: tuple[str, ...]) -> str:
    """Which calls the page's snippets show: what the deployment's model answers first."""
    if "chat.completions" in routes:
        return "chat"
    if "embeddings" in routes:
        return "embeddings"
    if "rerank" in routes:
        return "rerank"
    return "audio" if "audio.transcriptions" in routes else "chat"


def _detail_context(request: HttpRequest, deployment: Deployment) -> dict[str, Any]:
    reached = {status for (status,) in deployment.events.values_list("status")}
    steps = []
    for status, label in STEPS:
        if deployment.status == status:
            state = "current"
        elif status in reached or deployment.status == DeploymentStatus.READY:
            state = "done"
        else:
            state = "todo"
        steps.append({"label": label, "state": state})
    return {
        "deployment": deployment,
        "events": deployment.events.all()[:30],
        "steps": steps,
        "polling": deployment.status in POLLING,
        "base_url": settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/"),
        "explanation": POLICY_EXPLANATIONS[AutoscalingPolicy(deployment.autoscaling_policy)],
        "is_embedding": deployment.model_card.is_embedding,
        "snippets": snippet_kind(deployment.model_card.routes),
        "adapters": services.served_adapters(deployment),
        "deployment_values": {
            "min_replicas": deployment.min_replicas,
            "max_replicas": deployment.max_replicas,
        },
        "errors": {},
        **_interventions(deployment),
    }


def _interventions(deployment: Deployment) -> dict[str, Any]:
    """What guardrails did on calls to it over 30 days (marketplace.web.guardrail_chart; two queries), read
    only when a template shows them: the page loads them as its `interventions` part, so neither the page
    nor its status polling pays for them."""

    @functools.cache
    def loaded() -> tuple[list[charts.Chart], list[dict[str, Any]]]:
        interventions = guardrail_chart.of_deployment(deployment)
        return (
            [guardrail_chart.intervention_chart(interventions)],
            guardrail_chart.intervention_totals(interventions),
        )

    return {"intervention_charts": lambda: loaded()[0], "intervention_totals": lambda: loaded()[1]}


@login_required
@require_GET
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    return render_page(
        request,
        "web/deployment.html",
        _detail_context(request, deployment),
        parts={"status": "web/_deployment_status.html", "interventions": "web/_guardrail_interventions.html"},
    )


@login_required
@require_GET
def deployment_usage(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    range_name = request.GET.get("range", "24h")
    if range_name not in charts.RANGES:
        range_name = "24h"
    context = charts.usage_charts(deployment.usage_records.all(), range_name)
    return render(request, "web/_usage.html", {**context, "deployment": deployment, "range": range_name})


@login_required
@require_POST
def deployment_scale(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    try:
        serializer = DeploymentScaleSerializer(data=form_data(request.POST, SCALING_FIELDS))
        serializer.is_valid(raise_exception=True)
        services.scale_deployment(deployment, serializer.scaling(), actor=request.user)
    except (exceptions.ValidationError, Conflict) as error:  # Conflict: the model's terms not accepted
        context = _detail_context(request, deployment)
        context["errors"] = field_errors(exceptions.ValidationError(error.detail))  # either kind, by field
        context["scale_values"] = request.POST.dict()
        return render(request, "web/deployment.html", context, status=error.status_code)
    return redirect("web:deployment", pk=deployment.pk)


@login_required
@require_POST
def deployment_delete(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    if request.POST.get("confirm", "").strip() != deployment.name:
        context = _detail_context(request, deployment)
        context["errors"] = {"confirm": [f"Type the deployment's name, {deployment.name}, to delete it."]}
        return render(request, "web/deployment.html", context, status=400)
    services.delete_deployment(deployment, actor=request.user)
    return redirect("web:deployment", pk=deployment.pk)
