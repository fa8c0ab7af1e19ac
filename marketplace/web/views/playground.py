"""The playground: chat with a ready deployment from the browser, the answer streaming in.

The page posts to `playground_chat`, which sends the conversation through the same gateway path as an
API key's call (limits, proxying, metering), as the signed-in person's organisation.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from marketplace.accounts.models import Membership
from marketplace.web.views.deployments import deployment_or_404, visible_deployments
from serving.choices import DeploymentStatus
from serving.gateway import invocation_log, openai_api, pipeline, request_fields
from serving.gateway.errors import openai_error

CHATTABLE = (DeploymentStatus.READY, DeploymentStatus.UPDATING)


@login_required
@require_GET
def playground(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    return render(
        request,
        "web/playground.html",
        {
            "deployment": deployment,
            "chattable": deployment.status in CHATTABLE,
            "is_embedding": deployment.model_card.is_embedding,
            # Platform admins see every deployment but chat only where they are members (see _target).
            "member": Membership.objects.filter(
                organization=deployment.organization_id, user=request.user.pk
            ).exists(),
        },
    )


def _target(request: HttpRequest, pk: int) -> tuple[int, str] | None:
    """(organisation, name) of a deployment of an organisation the person is a member of. Platform admins
    see every deployment, but chat only where they are members: a chat spends the organisation's budget
    and is metered as its own."""
    found = (
        visible_deployments(request)
        .filter(pk=pk, organization__memberships__user=request.user.pk)
        .values_list("organization_id", "name")
        .first()
    )
    return found


async def playground_chat(request: HttpRequest, pk: int) -> HttpResponse | StreamingHttpResponse:
    """POST {messages, max_tokens?, temperature?} → the engine's server-sent events."""
    if request.method != "POST":
        return openai_error(405, "Use POST.")
    user = await request.auser()
    if not user.is_authenticated:
        return openai_error(401, "Your session has ended: sign in again.")
    target = await sync_to_async(_target)(request, pk)
    if target is None:
        return openai_error(404, "No such deployment in an organisation you are a member of.")
    organization_id, name = target
    payload = openai_api.read_json(request)
    if isinstance(payload, str):
        return openai_api.body_error(payload)
    unknown = sorted(set(payload) - request_fields.PLAYGROUND_FIELDS)
    if unknown:
        return openai_error(400, f"The playground does not send '{unknown[0]}'.", param=unknown[0])
    caller = await pipeline.services().directory.person(organization_id)
    payload = {**payload, "model": name, "stream": True, "stream_options": {"include_usage": True}}
    route = invocation_log.PLAYGROUND
    return await openai_api.invoke_as(caller, "chat.completions", payload, log_route=route)
