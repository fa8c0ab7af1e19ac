"""The platform's capacity page: GPUs per model on the nodes, promised by quotas, used and waiting, as
bars and a table (serving/capacity.py). Platform admins only; anyone else is refused 403."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from marketplace.web.capacity_chart import capacity_chart
from serving import capacity


@login_required
@require_GET
def capacity_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("Only a platform admin may see the platform's capacity.")
    measured = capacity.current()
    return render(
        request,
        "web/platform_capacity.html",
        {"capacity": measured, "chart": capacity_chart(measured.models)},
    )
