"""Datasets and evaluations of the current organisation: list and upload datasets, open one; start an
evaluation, follow its progress, compare its deployments (quality against cost) and their answers.

Validation, refusals and who reads what are the REST API's and the services' (learning.api,
learning.datasets, learning.evaluations): members see names, counts, progress and results; owners and
admins also upload, start, cancel, and read prompts and answers."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import exceptions

from learning import datasets, evaluations, scorers
from learning.api.datasets import DatasetUploadSerializer
from learning.api.evaluations import EvaluationCreateSerializer, side_by_side
from learning.choices import FINISHED_STATUSES, DatasetPart, EvaluationStatus
from learning.models import Dataset, Evaluation
from learning.storage import ObjectNotFound, get_store
from marketplace.accounts import tenancy
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, field_errors
from marketplace.web.quality_chart import quality_cost_chart
from serving.choices import DeploymentStatus
from serving.models import Deployment

PREVIEW_RECORDS = 20
SIDE_BY_SIDE = 20


def _refusal(organization: Any, what: str) -> dict[str, list[str]]:
    return {NON_FIELD: [f"Only an owner or admin of {organization.name} {what}; ask one of them."]}


@login_required
@require_http_methods(["GET", "POST"])
def dataset_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {"organization": organization, "errors": {}, "values": {}}
    if organization is None:
        return render(request, "web/datasets.html", context)
    can_manage = tenancy.can_manage(request, organization)
    context.update(can_manage=can_manage, datasets=Dataset.objects.filter(organization=organization))
    if request.method == "GET":
        return render(request, "web/datasets.html", context)
    if not can_manage:
        context["errors"] = _refusal(organization, "uploads datasets")
        return render(request, "web/datasets.html", context, status=403)
    fields = {k: str(v).strip() for k, v in request.POST.items() if str(v).strip()}
    serializer = DatasetUploadSerializer(data={**fields, **request.FILES.dict()})
    try:
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        dataset = datasets.create_from_upload(
            get_store(), data["file"], organization_id=organization.pk, name=data["name"],
            heldout_fraction=data["heldout_fraction"], seed=data["seed"],
            description=data["description"], created_by_id=request.user.pk,
        )  # fmt: skip
    except exceptions.ValidationError as error:
        context.update(errors=field_errors(error), values=request.POST.dict())
        return render(request, "web/datasets.html", context, status=400)
    except datasets.UploadError as error:
        context.update(errors={"file": error.errors}, values=request.POST.dict())
        return render(request, "web/datasets.html", context, status=400)
    return redirect("web:dataset", pk=dataset.pk)


@login_required
@require_GET
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    organization = current.organization(request)
    dataset = get_object_or_404(
        Dataset.objects.filter(organization__in=tenancy.visible_organizations(request)),
        pk=pk, organization=organization,
    )  # fmt: skip
    can_manage = tenancy.can_manage(request, dataset.organization)
    records: list[dict[str, Any]] = []
    if can_manage:
        try:
            records = datasets.load(get_store(), dataset)[:PREVIEW_RECORDS]
        except ObjectNotFound:
            records = []
    context = {
        "organization": organization, "dataset": dataset, "can_manage": can_manage, "records": records,
        "evaluations": dataset.evaluations.all()[:20],
    }  # fmt: skip
    return render(request, "web/dataset.html", context)


def _deployment_names(organization: Any) -> list[str]:
    return list(
        Deployment.objects.filter(organization=organization)
        .exclude(status=DeploymentStatus.DELETED)
        .order_by("name")
        .values_list("name", flat=True)
    )


def scorer_specs(post: Any) -> list[dict[str, Any]]:
    """The scorers a form ticked, as specs (learning.scorers)."""
    specs: list[dict[str, Any]] = []
    if "exact_match" in post:
        specs.append({"kind": "exact_match"})
    if "regex" in post:
        specs.append({"kind": "regex", "pattern": post.get("regex_pattern", "")})
    if "json" in post:
        specs.append({"kind": "json"})
    if "similarity" in post:
        specs.append({"kind": "similarity", "deployment": post.get("similarity_deployment", "")})
    if "judge" in post:
        spec = {"kind": "judge", "deployment": post.get("judge_deployment", "")}
        rubric = str(post.get("judge_rubric", "")).strip()
        if rubric and rubric != scorers.DEFAULT_RUBRIC.strip():
            spec["rubric"] = rubric
        specs.append(spec)
    return specs


@login_required
@require_http_methods(["GET", "POST"])
def evaluation_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {
        "organization": organization, "errors": {}, "values": {"judge_rubric": scorers.DEFAULT_RUBRIC},
        "parts": DatasetPart.choices,
    }  # fmt: skip
    if organization is None:
        return render(request, "web/evaluations.html", context)
    can_manage = tenancy.can_manage(request, organization)
    context.update(
        can_manage=can_manage,
        evaluations=Evaluation.objects.filter(organization=organization).select_related("dataset"),
        datasets=Dataset.objects.filter(organization=organization),
        deployments=_deployment_names(organization),
    )
    if request.method == "GET":
        return render(request, "web/evaluations.html", context)
    if not can_manage:
        context["errors"] = _refusal(organization, "starts evaluations")
        return render(request, "web/evaluations.html", context, status=403)
    post = request.POST
    data = {
        "dataset": post.get("dataset", ""), "part": post.get("part", DatasetPart.HELDOUT),
        "deployments": post.getlist("deployments"), "scorers": scorer_specs(post),
        "name": post.get("name", ""),
    }  # fmt: skip
    for name in ("max_tokens", "concurrency"):
        if str(post.get(name, "")).strip():
            data[name] = str(post[name]).strip()
    serializer = EvaluationCreateSerializer(data=data)
    errors = {} if serializer.is_valid() else field_errors(serializer.errors)
    try:
        scorers.check_specs(data["scorers"])
    except scorers.SpecError as error:
        errors["scorers"] = [str(error)]
    if errors:
        context.update(errors=errors, values=post.dict())
        return render(request, "web/evaluations.html", context, status=400)
    try:
        valid = serializer.validated_data
        dataset = Dataset.objects.filter(pk=valid["dataset"], organization=organization).first()
        if dataset is None:
            raise exceptions.ValidationError({"dataset": ["Choose a dataset of this organisation."]})
        evaluation = evaluations.create_evaluation(
            organization=organization, user=request.user, dataset=dataset,
            deployments=valid["deployments"], scorer_specs=valid["scorers"], name=valid["name"],
            part=valid["part"], max_tokens=valid["max_tokens"], concurrency=valid["concurrency"],
        )  # fmt: skip
    except exceptions.ValidationError as error:
        context.update(errors=field_errors(error), values=post.dict())
        return render(request, "web/evaluations.html", context, status=400)
    except evaluations.Refused as error:
        context.update(errors={error.field.split("[")[0]: [str(error)]}, values=post.dict())
        return render(request, "web/evaluations.html", context, status=400)
    return redirect("web:evaluation", pk=evaluation.pk)


def _evaluation_of(request: HttpRequest, pk: int) -> Evaluation:
    return get_object_or_404(
        Evaluation.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "dataset", "organization"
        ),
        pk=pk, organization=current.organization(request),
    )  # fmt: skip


@login_required
@require_GET
def evaluation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = _evaluation_of(request, pk)
    can_manage = tenancy.can_manage(request, evaluation.organization)
    summaries = evaluations.results(evaluation)
    rows: list[dict[str, Any]] = []
    if can_manage:
        try:
            records = datasets.in_part(datasets.load(get_store(), evaluation.dataset), evaluation.part)
            rows = side_by_side(evaluation, records, 0, SIDE_BY_SIDE)
        except ObjectNotFound:
            rows = []
    main_scorer = evaluation.scorers[0]["name"] if evaluation.scorers else ""
    context = {
        "organization": evaluation.organization, "evaluation": evaluation, "can_manage": can_manage,
        "progress": evaluations.progress(evaluation), "summaries": summaries, "rows": rows,
        "scorer_names": [spec["name"] for spec in evaluation.scorers],
        "chart": quality_cost_chart(summaries, main_scorer), "main_scorer": main_scorer,
        "finished": evaluation.status in FINISHED_STATUSES, "events": evaluation.events.all(),
    }  # fmt: skip
    return render(request, "web/evaluation.html", context)


@login_required
@require_POST
def evaluation_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = _evaluation_of(request, pk)
    if not tenancy.can_manage(request, evaluation.organization):
        [refusal] = _refusal(evaluation.organization, "cancels evaluations")[NON_FIELD]
        return HttpResponse(refusal, status=403, content_type="text/plain; charset=utf-8")
    if evaluation.status in (EvaluationStatus.PENDING, EvaluationStatus.RUNNING):
        evaluations.cancel_evaluation(evaluation)
    return redirect("web:evaluation", pk=evaluation.pk)
