"""Tuning jobs of the current organisation: the list, and one job's steps, progress, loss curve and
held-out evaluation, with the offer to deploy the student it registered.

Creating a job is the REST API's (/api/tuning-jobs/, learning.tuning checks every field); members read
these pages, owners and admins also cancel. Another organisation's job is a 404."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from learning import tuning
from learning.models import TuningJob
from marketplace.accounts import tenancy
from marketplace.web import current
from marketplace.web.loss_chart import loss_chart


def _job_of(request: HttpRequest, pk: int) -> TuningJob:
    return get_object_or_404(
        TuningJob.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization", "dataset", "student_base", "custom_model__card"
        ),
        pk=pk, organization=current.organization(request),
    )  # fmt: skip


@login_required
@require_GET
def tuning_job_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {"organization": organization}
    if organization is not None:
        context["jobs"] = TuningJob.objects.filter(organization=organization).select_related(
            "dataset", "student_base"
        )
    return render(request, "web/tuning_jobs.html", context)


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
    context = {
        "organization": job.organization, "job": job,
        "can_manage": tenancy.can_manage(request, job.organization),
        "finished": job.status in tuning.FINISHED, "steps": tuning.steps_of(job), "events": job.events.all(),
        "chart": loss_chart(job.loss_points, job.total_steps), "evaluation": evaluation,
        "model_rows": _model_rows(evaluation),
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
