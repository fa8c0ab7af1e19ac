"""One click on an idle deployment in the deployments list: scale it to zero (KEDA wakes it on the next
request) or down to its minimum. Any member may, as any member may scale (serving/idle.py)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST
from rest_framework import exceptions

from marketplace.api import Conflict
from marketplace.web.views.deployments import deployment_or_404
from serving import idle


@login_required
@require_POST
def scale_idle(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    how = request.POST.get("to", "")
    try:
        if how == "zero":
            if not idle.can_scale_to_zero(deployment):
                raise exceptions.ValidationError(
                    {"to": [f"{deployment.name} cannot scale to zero here: that needs KEDA on the cluster."]}
                )
            idle.scale_to_zero(deployment, actor=request.user)
            done = f"{deployment.name} now scales to zero when idle; the first request wakes it."
        elif how == "minimum":
            if not idle.can_scale_to_minimum(deployment):
                raise exceptions.ValidationError({"to": [f"{deployment.name} runs at its minimum already."]})
            idle.scale_to_minimum(deployment, actor=request.user)
            done = f"{deployment.name} is scaled down to its minimum of {deployment.min_replicas or 1}."
        else:
            raise exceptions.ValidationError({"to": ["Choose 'zero' or 'minimum'."]})
    except (exceptions.ValidationError, Conflict) as error:
        detail = error.detail
        text = (
            " ".join(str(m) for value in detail.values() for m in value)
            if isinstance(detail, dict)
            else str(detail)
        )
        messages.warning(request, text)
        return redirect("web:deployments")
    messages.success(request, done)
    return redirect("web:deployments")
