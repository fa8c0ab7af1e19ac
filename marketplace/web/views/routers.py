"""Prompt routers of the current organisation: list and create one, open it (its candidates and their
costs, what it does now, its training with progress, its versions, and what a version would do, as
charts), train it from an evaluation, activate a version, change τ, its mode and shadow calls.

Validation, refusals and who may do what are the REST API's and the services' (learning.api.routers,
learning.router_service, learning.router_training): every member reads routers, their reports and their
decisions on live traffic; owners and admins create, change, train and activate. Percentages on the
forms are fractions in the API (τ 10% is quality_difference 0.1)."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from learning import router_report, router_service, router_training
from learning.api.routers import RouterWriteSerializer, TrainSerializer
from learning.choices import EvaluationStatus
from learning.evaluations import Refused
from learning.models import (
    Evaluation,
    Router,
    RouterMode,
    RouterVersion,
    TrainingStatus,
)
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.web import current, router_chart
from marketplace.web.forms import NON_FIELD, field_errors
from serving.choices import DeploymentStatus
from serving.models import Deployment

DEFAULT_TAU_PERCENT = 10
TRAININGS_SHOWN = 10
EVALUATIONS_OFFERED = 50


class FormError(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _refusal(organization: Organization, what: str) -> dict[str, list[str]]:
    return {NON_FIELD: [f"Only an owner or admin of {organization.name} {what}; ask one of them."]}


def _deployment_names(organization: Organization) -> list[str]:
    return list(
        Deployment.objects.filter(organization=organization)
        .exclude(status=DeploymentStatus.DELETED)
        .order_by("name")
        .values_list("name", flat=True)
    )


def _number(post: QueryDict, name: str, strip: str) -> tuple[str, float | None]:
    """(what was typed, its value): None when left empty, NaN when it is no number."""
    raw = str(post.get(name, "")).strip().strip(strip).strip()
    if not raw:
        return raw, None
    try:
        return raw, float(raw)
    except ValueError:
        return raw, math.nan


def _percent(post: QueryDict, name: str, label: str) -> float | None:
    """A form's percentage as a fraction (None when left empty); FormError naming the field if it is no
    number from 0 to 100."""
    raw, value = _number(post, name, "%")
    if value is None:
        return None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise FormError({name: [f"{label} is a percentage from 0 to 100; {raw[:20]!r} is not."]})
    return round(value / 100, 6)


def _cost(post: QueryDict, deployment: str) -> float | None:
    field = f"cost-{deployment}"
    raw, value = _number(post, field, "$")
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise FormError(
            {field: [f"A cost per 1,000 tokens is a number of USD from 0, or empty for the measured one; "
                     f"{raw[:20]!r} is not."]}
        )  # fmt: skip
    return value


def _settings_data(post: QueryDict) -> dict[str, Any]:
    """τ, mode and shadow calls from a form, in the API's terms (only the fields that were filled in)."""
    data: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, label in (("quality_difference", "τ"), ("shadow_rate", "The shadow rate")):
        try:
            value = _percent(post, name, label)
        except FormError as error:
            errors.update(error.errors)
            continue
        if value is not None:
            data[name] = value
    for name in ("mode", "embedding_deployment", "judge_deployment", "description"):
        if name in post:
            data[name] = str(post[name]).strip()
    if str(post.get("shadow_tokens_per_day", "")).strip():  # empty: unchanged (0 turns shadow calls off)
        data["shadow_tokens_per_day"] = str(post["shadow_tokens_per_day"]).strip()
    if errors:
        raise FormError(errors)
    return data


def _router_data(post: QueryDict) -> dict[str, Any]:
    """The create form as the API's fields: candidates are the ticked deployments, each with its cost
    override (empty: the measured cost)."""
    data = _settings_data(post)
    data.setdefault("quality_difference", DEFAULT_TAU_PERCENT / 100)
    errors: dict[str, list[str]] = {}
    candidates = []
    for name in post.getlist("candidates"):
        try:
            candidates.append({"deployment": name, "cost_per_1k_tokens": _cost(post, name)})
        except FormError as error:
            errors.update(error.errors)
    if errors:
        raise FormError(errors)
    data.update(
        name=str(post.get("name", "")).strip(), candidates=candidates, fallback=post.get("fallback", "")
    )
    return data


def _change_data(router: Router, post: QueryDict) -> dict[str, Any]:
    """The settings form: τ, mode, shadow calls, and the fallback and cost overrides of the same
    candidates (a cost left empty goes back to the measured one)."""
    data = _settings_data(post)
    if "fallback" in post:
        data["fallback"] = str(post["fallback"])
    names = [c["deployment"] for c in router.candidates]
    if any(f"cost-{name}" in post for name in names):
        errors: dict[str, list[str]] = {}
        candidates = []
        for name in names:
            try:
                candidates.append({"deployment": name, "cost_per_1k_tokens": _cost(post, name)})
            except FormError as error:
                errors.update(error.errors)
        if errors:
            raise FormError(errors)
        data["candidates"] = candidates
    return data


def _checked(data: dict[str, Any], partial: bool) -> dict[str, Any]:
    serializer = RouterWriteSerializer(data=data, partial=partial)
    if not serializer.is_valid():
        raise FormError(field_errors(serializer.errors))
    return dict(serializer.validated_data)


def _refused(error: Refused) -> dict[str, list[str]]:
    # "candidates[1].cost_per_1k_tokens" is shown beside the candidates
    return {error.field.split("[")[0]: [str(error)]}


@login_required
@require_http_methods(["GET", "POST"])
def router_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {
        "organization": organization, "errors": {}, "values": {"quality_difference": DEFAULT_TAU_PERCENT},
        "modes": RouterMode.choices, "ticked": [],
    }  # fmt: skip
    if organization is None:
        return render(request, "web/routers.html", context)
    can_manage = tenancy.can_manage(request, organization)
    routers = Router.objects.filter(organization=organization).select_related("active_version")
    context.update(can_manage=can_manage, routers=routers, deployments=_deployment_names(organization))
    if request.method == "GET":
        return render(request, "web/routers.html", context)
    if not can_manage:
        context["errors"] = _refusal(organization, "creates routers")
        return render(request, "web/routers.html", context, status=403)
    post = request.POST
    try:
        fields = _checked(_router_data(post), partial=False)
        fields.pop("organization", None)
        router = router_service.create_router(organization=organization, user=request.user, **fields)
    except FormError as error:
        context.update(errors=error.errors, values=post.dict(), ticked=post.getlist("candidates"))
        return render(request, "web/routers.html", context, status=400)
    except Refused as error:
        context.update(errors=_refused(error), values=post.dict(), ticked=post.getlist("candidates"))
        return render(request, "web/routers.html", context, status=400)
    return redirect("web:router", pk=router.pk)


def _router_of(request: HttpRequest, pk: int) -> Router:
    return get_object_or_404(
        Router.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization", "active_version"
        ),
        pk=pk, organization=current.organization(request),
    )  # fmt: skip


def state_sentence(router: Router) -> str:
    """What the router does now, in words a person reads on the page."""
    version = router.active_version
    if version is None:
        return f"Untrained: sends everything to its fallback, {router.fallback}."
    if router.mode == RouterMode.SHADOW:
        return (
            f"Shadow mode: the fallback, {router.fallback}, answers every call; the choices version "
            f"{version.version} ({version.get_kind_display().lower()}) would make are recorded below."
        )
    return (
        f"Active: version {version.version} ({version.get_kind_display().lower()}) sends each prompt to the "
        f"cheapest candidate predicted within {router.quality_difference * 100:.4g}% of {router.fallback}."
    )


def _shown_version(
    request: HttpRequest, router: Router, versions: list[RouterVersion]
) -> RouterVersion | None:
    asked = request.GET.get("version", "")
    if asked.isdigit():
        return next((v for v in versions if v.version == int(asked)), None)
    if router.active_version is not None:
        return router.active_version
    return versions[0] if versions else None


def _report_context(
    router: Router, shown: RouterVersion | None, versions: list[RouterVersion]
) -> dict[str, Any]:
    """The charts and figures of the shown version, beside the other predictors of its training (the
    same held-out split)."""
    if shown is None or not shown.report.get("curve"):
        return {"report": None}
    siblings = [shown] + [
        v
        for v in versions
        if v.pk != shown.pk and v.training_id is not None and v.training_id == shown.training_id
    ]
    report = shown.report
    at = router_report.at_tau(report, router.quality_difference) or {}
    gap = report.get("gap_recovered") or {}
    return {
        "report": report,
        "at": at,
        "tradeoff": router_chart.tradeoff_chart(
            [(f"v{v.version} {v.get_kind_display().split(',')[0].lower()}", v.report) for v in siblings],
            router.quality_difference,
        ),
        "gap_plot": router_chart.gap_chart(report),
        "gap": gap,
        "share_bars": router_chart.shares(at, router.fallback),
        "retained": router_chart.interval(
            "Quality retained (of the fallback's)",
            at.get("quality_retained"),
            at.get("quality_retained_ci95"),
        ),
        "saved": router_chart.interval(
            "Cost saved (of the fallback's)", at.get("cost_saved"), at.get("cost_saved_ci95")
        ),
    }


def _detail_context(request: HttpRequest, router: Router) -> dict[str, Any]:
    organization = router.organization
    versions = list(router.versions.select_related("training"))
    trainings = list(
        router.trainings.select_related("evaluation").prefetch_related(
            Prefetch("versions", queryset=RouterVersion.objects.only("id", "version", "training_id"))
        )[:TRAININGS_SHOWN]
    )
    costs = router_service.candidate_costs(router)
    overrides = {c["deployment"]: c.get("cost_per_1k_tokens") for c in router.candidates}
    candidates = [
        {
            "deployment": name, "cost": cost, "override": overrides.get(name),
            "measured": router.measured_costs.get(name), "fallback": name == router.fallback,
        }
        for name, cost in costs.items()
    ]  # fmt: skip
    shown = _shown_version(request, router, versions)
    evaluations = Evaluation.objects.filter(
        organization=organization, status=EvaluationStatus.SUCCEEDED
    ).order_by("-finished_at", "-id")[:EVALUATIONS_OFFERED]
    names = {c["deployment"] for c in router.candidates}
    sources = [
        {"value": f"{e.pk}:{spec['name']}", "label": f"{e.name} · {spec['name']}"}
        for e in evaluations
        if names <= set(e.deployments)
        for spec in e.scorers
    ]
    running = next(
        (t for t in trainings if t.status in (TrainingStatus.PENDING, TrainingStatus.RUNNING)), None
    )
    return {
        "organization": organization, "router": router,
        "can_manage": tenancy.can_manage(request, organization), "state": state_sentence(router),
        "candidates": candidates, "versions": versions, "shown": shown,
        "trainings": trainings, "running": running, "sources": sources, "modes": RouterMode.choices,
        "live": router_chart.live_decisions(router, costs), "errors": {},
        "tau_percent": round(router.quality_difference * 100, 4),
        "shadow_rate_percent": round(router.shadow_rate * 100, 4),
        **_report_context(router, shown, versions),
    }  # fmt: skip


@login_required
@require_GET
def router_detail(request: HttpRequest, pk: int) -> HttpResponse:
    router = _router_of(request, pk)
    return render(request, "web/router.html", _detail_context(request, router))


def _refuse(request: HttpRequest, router: Router, errors: dict[str, list[str]], status: int) -> HttpResponse:
    context = _detail_context(request, router)
    context["errors"] = errors
    return render(request, "web/router.html", context, status=status)


@login_required
@require_POST
def router_train(request: HttpRequest, pk: int) -> HttpResponse:
    router = _router_of(request, pk)
    if not tenancy.can_manage(request, router.organization):
        return _refuse(request, router, _refusal(router.organization, "trains routers"), 403)
    evaluation_id, _, scorer = str(request.POST.get("source", "")).partition(":")
    serializer = TrainSerializer(data={"evaluation": evaluation_id, "scorer": scorer})
    if not serializer.is_valid():
        errors = field_errors(serializer.errors)
        return _refuse(request, router, {"source": [m for ms in errors.values() for m in ms]}, 400)
    evaluation = Evaluation.objects.filter(
        pk=serializer.validated_data["evaluation"], organization=router.organization
    ).first()
    try:
        router_training.start_training(
            router=router,
            evaluation=evaluation,
            scorer=serializer.validated_data["scorer"],
            user=request.user,
        )
    except Refused as error:
        return _refuse(request, router, {"source": [str(error)]}, 400)
    return redirect("web:router", pk=router.pk)


@login_required
@require_POST
def router_activate(request: HttpRequest, pk: int) -> HttpResponse:
    router = _router_of(request, pk)
    if not tenancy.can_manage(request, router.organization):
        return _refuse(request, router, _refusal(router.organization, "activates router versions"), 403)
    raw = str(request.POST.get("version", "")).strip()
    version = None
    if raw != "none":
        version = router.versions.filter(version=int(raw)).first() if raw.isdigit() else None
        if version is None:
            return _refuse(request, router, {"version": [f"{router.name} has no version {raw[:20]!r}."]}, 400)
    router_service.activate(router, version)
    shown = f"?version={version.version}" if version is not None else ""
    return redirect(reverse("web:router", args=[router.pk]) + shown)


@login_required
@require_POST
def router_change(request: HttpRequest, pk: int) -> HttpResponse:
    router = _router_of(request, pk)
    if not tenancy.can_manage(request, router.organization):
        return _refuse(request, router, _refusal(router.organization, "changes routers"), 403)
    try:
        fields = _checked(_change_data(router, request.POST), partial=True)
        fields.pop("organization", None)
        router_service.update_router(router, **fields)
    except FormError as error:
        return _refuse(request, router, error.errors, 400)
    except Refused as error:
        return _refuse(request, router, _refused(error), 400)
    return redirect("web:router", pk=router.pk)
