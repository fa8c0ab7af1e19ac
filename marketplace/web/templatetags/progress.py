"""How long a deployment has been getting ready, and where to look meanwhile: the deployment page's
progress line."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.conf import settings
from django.utils import timezone

from serving import manifests, services
from serving.backends import local
from serving.choices import Backend
from serving.manifests import DEPLOYMENT_ID_LABEL
from serving.models import Deployment

register = template.Library()


def duration(seconds: float) -> str:
    """A wait as people say it: "45 s", "2 min 05 s", "1 h 03 min"."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def in_status_since(deployment: Deployment) -> datetime:
    """When the deployment entered its current status (its newest event of that status), else when it
    was requested."""
    since = (
        deployment.events.filter(status=deployment.status)
        .order_by("-created_at", "-id")
        .values_list("created_at", flat=True)
        .first()
    )
    return since or deployment.created_at


@register.simple_tag
def elapsed(deployment: Deployment) -> str:
    """How long the deployment has been in its current status, as `duration` says it."""
    return duration((timezone.now() - in_status_since(deployment)).total_seconds())


@register.simple_tag
def pod_events_command(deployment: Deployment) -> str:
    """The command that shows a Kubernetes deployment's pods with their events (scheduling, image pulls,
    probes)."""
    return (
        f"kubectl -n {settings.KUBERNETES_NAMESPACE} describe pods -l {DEPLOYMENT_ID_LABEL}={deployment.pk}"
    )


@register.simple_tag
def served_max_model_len(deployment: Deployment) -> str:
    """The max model length the deployment's engines run with, as its backend builds their command."""
    spec = services.spec_for(deployment, sign=False)
    if deployment.backend == Backend.LOCAL:
        tokens = local.served_max_model_len(spec)
    else:
        tokens = manifests.max_model_len(spec)
    return f"{tokens:,}"
