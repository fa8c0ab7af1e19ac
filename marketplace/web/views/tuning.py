"""Tuning jobs of the current organisation: the list with a form to start one, and one job's steps,
progress, loss curve and held-out evaluation, with the offer to deploy the student it registered.

Validation and refusals are the REST API's and the service's (learning.api.tuning, learning.tuning);
members read these pages, owners and admins also start and cancel. Another organisation's job is a 404."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from learning import scorers, tuning
from learning.api.tuning import TuningJobCreateSerializer
from learning.models import Dataset, TuningJob, TuningKind
from learning.training.spec import TrainingSpec
from marketplace.accounts import tenancy
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.web import current
from marketplace.web.forms import NON_FIELD, field_errors
from marketplace.web.loss_chart import loss_chart
from marketplace.web.views.evaluations import scorer_specs
from serving.choices import Backend, DeploymentStatus
from serving.models import Deployment

# The hyperparameters the form offers (the rest keep their defaults), with their input's step.
FORM_HYPERPARAMETERS = (("rank", "1"), ("alpha", "1"), ("learning_rate", "any"), ("epochs", "1"),
                        ("max_seq_length", "1"))  # fmt: skip


def _job_of(request: HttpRequest, pk: int) -> TuningJob:
    return get_object_or_404(
        TuningJob.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization", "dataset", "student_base", "custom_model__card", "instance_type"
        ),
        pk=pk, organization=current.organization(request),
    )  # fmt: skip


def _form_data(post: Any) -> dict[str, Any]:
    """The API's request body from the form: empty hyperparameter boxes keep their defaults."""
    hyperparameters: dict[str, Any] = {}
    for name, _ in FORM_HYPERPARAMETERS:
        text = str(post.get(name, "")).strip()
        if text:
            try:
                hyperparameters[name] = float(text) if name == "learning_rate" else int(text)
            except ValueError:
                hyperparameters[name] = text  # refused by the spec, naming the hyperparameter
    keys = (
        "name",
        "kind",
        "dataset",
        "student_base",
        "teacher_deployment",
        "teacher_instructions",
        "instance_type",
    )
    data = {key: post.get(key, "") for key in keys}
    return {**data, "hyperparameters": hyperparameters, "scorers": scorer_specs(post)}


@login_required
@require_http_methods(["GET", "POST"])
def tuning_job_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {
        "organization": organization,
        "errors": {},
        "values": {"judge_rubric": scorers.DEFAULT_RUBRIC},
    }
    if organization is None:
        return render(request, "web/tuning_jobs.html", context)
    can_manage = tenancy.can_manage(request, organization)
    # On a cluster a student of any size trains on a GPU instance type; on this machine, a CPU-capable one.
    on_cluster = settings.SERVING_BACKEND == Backend.KUBERNETES
    students = ModelCard.objects.visible_to(organization)
    if not on_cluster:
        students = students.filter(cpu_capable=True)
    context.update(
        can_manage=can_manage, kinds=TuningKind.choices, defaults=TrainingSpec().to_dict(),
        hyperparameters=FORM_HYPERPARAMETERS,
        jobs=TuningJob.objects.filter(organization=organization).select_related("dataset", "student_base"),
        datasets=Dataset.objects.filter(organization=organization),
        students=students.order_by("name"), on_cluster=on_cluster,
        instance_types=InstanceType.objects.filter(gpu_count__gt=0).order_by("hourly_price_usd")
        if on_cluster else InstanceType.objects.none(),
        teachers=Deployment.objects.filter(organization=organization, status=DeploymentStatus.READY)
        .order_by("name").values_list("name", flat=True),
    )  # fmt: skip
    if request.method == "GET":
        return render(request, "web/tuning_jobs.html", context)
    if not can_manage:
        refusal = f"Only an owner or admin of {organization.name} starts tuning jobs; ask one of them."
        context["errors"] = {NON_FIELD: [refusal]}
        return render(request, "web/tuning_jobs.html", context, status=403)
    serializer = TuningJobCreateSerializer(data=_form_data(request.POST))
    if not serializer.is_valid():
        context.update(errors=field_errors(serializer.errors), values=request.POST.dict())
        return render(request, "web/tuning_jobs.html", context, status=400)
    data = serializer.validated_data
    try:
        job = tuning.create_tuning_job(
            organization=organization, user=request.user, name=data["name"], kind=data["kind"],
            dataset_id=data["dataset"], student_base=data["student_base"],
            teacher_deployment=data["teacher_deployment"], teacher_instructions=data["teacher_instructions"],
            hyperparameters=data["hyperparameters"], instance_type=data["instance_type"],
            scorer_specs=data.get("scorers", []),
        )  # fmt: skip
    except tuning.Refused as error:
        # A scorer's refusal names its place in the list (`scorers[0].pattern`); the form has one place.
        field = "scorers" if error.field.startswith("scorers") else error.field
        context.update(errors={field: [str(error)]}, values=request.POST.dict())
        return render(request, "web/tuning_jobs.html", context, status=400)
    return redirect("web:tuning-job", pk=job.pk)


def _model_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation's models in the order a reader compares them: teacher, student, base."""
    models = evaluation.get("models") or {}
    rows = []
    for name in ("teacher", "student", "base"):
        if name in models:
            scores = models[name]
            rows.append({"name": name, **scores, "fields": scores.get("field_accuracy") or {}})
    return rows


@login_required
@require_GET
def tuning_job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_of(request, pk)
    evaluation = job.evaluation or {}
    costs = evaluation.get("costs") or {}
    chosen = evaluation.get("scorers") or {}
    scorer_names = list(next(iter(chosen.values()), {}))
    context = {
        "organization": job.organization, "job": job,
        "can_manage": tenancy.can_manage(request, job.organization),
        "finished": job.status in tuning.FINISHED, "steps": tuning.steps_of(job), "events": job.events.all(),
        "chart": loss_chart(job.loss_points, job.total_steps), "evaluation": evaluation,
        "model_rows": _model_rows(evaluation),
        "cost_rows": [(name, side) for name in ("teacher", "student") if (side := costs.get(name))],
        "scorer_names": scorer_names,
        "scorer_rows": [
            (model, [chosen[model].get(name) or {} for name in scorer_names])
            for model in ("teacher", "student", "base") if model in chosen
        ],
    }  # fmt: skip
    return render(request, "web/tuning_job.html", context)


@login_required
@require_POST
def tuning_job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_of(request, pk)
    if not tenancy.can_manage(request, job.organization):
        refusal = f"Only an owner or admin of {job.organization.name} cancels tuning jobs; ask one of them."
        return HttpResponse(refusal, status=403, content_type="text/plain; charset=utf-8")
    if job.status not in tuning.FINISHED:
        tuning.cancel_tuning_job(job)
    return redirect("web:tuning-job", pk=job.pk)
