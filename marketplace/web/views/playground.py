"""The playground: chat with a ready deployment, or through a prompt router, from the browser, the
answer streaming in.

The page posts to `playground_chat` (`router_playground_chat` for a router), which sends the conversation
through the same gateway path as an API key's call (limits, the router's decision, proxying, metering),
as the signed-in person's organisation. A router's answer says which candidate served it
(x-router-deployment), which the page shows under the answer.
"""

from __future__ import annotations

from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from learning.models import Router
from marketplace.accounts import tenancy
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
    return await _chat(request, pk, _target, "deployment")


@login_required
@require_GET
def router_playground(request: HttpRequest, pk: int) -> HttpResponse:
    """The playground of a prompt router of an organisation the person sees (members only chat)."""
    router = get_object_or_404(
        Router.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization"
        ),
        pk=pk,
    )
    return render(
        request,
        "web/router_playground.html",
        {
            "router": router,
            "member": Membership.objects.filter(
                organization=router.organization_id, user=request.user.pk
            ).exists(),
        },
    )


def _router_target(request: HttpRequest, pk: int) -> tuple[int, str] | None:
    """(organisation, name) of a router of an organisation the person is a member of (as `_target`)."""
    found: tuple[int, str] | None = (
        Router.objects.filter(pk=pk, organization__memberships__user=request.user.pk)
        .values_list("organization_id", "name")
        .first()
    )
    return found


async def router_playground_chat(request: HttpRequest, pk: int) -> HttpResponse | StreamingHttpResponse:
    """POST {messages, max_tokens?, temperature?} → the chosen candidate's server-sent events."""
    return await _chat(request, pk, _router_target, "router")


async def _chat(
    request: HttpRequest,
    pk: int,
    find: Callable[[HttpRequest, int], tuple[int, str] | None],
    kind: str,
) -> HttpResponse | StreamingHttpResponse:
    if request.method != "POST":
        return openai_error(405, "Use POST.")
    user = await request.auser()
    if not user.is_authenticated:
        return openai_error(401, "Your session has ended: sign in again.")
    target = await sync_to_async(find)(request, pk)
    if target is None:
        return openai_error(404, f"No such {kind} in an organisation you are a member of.")
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
