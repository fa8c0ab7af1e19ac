"""A local deployment's engine log: what its engine processes printed, for a person waiting for it to
start or reading why it stopped. Engines run on this machine (the local backend), so their logs are
files the engine supervisor reports in the actual state (serving.local.state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from marketplace.web.views.deployments import deployment_or_404
from serving.choices import Backend
from serving.local import state

TAIL_BYTES = 20_000  # some 200 lines: vLLM's start-up and the last requests


def _tail(path: Path) -> str:
    with path.open("rb") as handle:
        size = path.stat().st_size
        handle.seek(max(0, size - TAIL_BYTES))
        text = handle.read().decode(errors="replace")
    return text.split("\n", 1)[-1] if size > TAIL_BYTES else text  # from a whole line


def replica_logs(deployment_id: int) -> tuple[list[dict[str, Any]], str]:
    """Each replica's state and the end of its log, and a sentence when there is nothing to show.

    Only a file the supervisor named for this deployment's replica (`<id>-<slot>.log`) is read, whatever
    else the actual state might say."""
    try:
        actual = state.read_hash(state.client(), state.ACTUAL).get(deployment_id)
    except redis.RedisError:
        return [], "The engine supervisor's state cannot be read now (Redis does not answer); try again."
    if not actual or not actual.get("replicas"):
        return [], "No engine has started for this deployment yet: the supervisor places it within a second."
    replicas = []
    for replica in actual["replicas"]:
        path = Path(str(replica.get("log") or ""))
        text = ""
        if path.name == f"{deployment_id}-{replica.get('slot')}.log":
            try:
                text = _tail(path)
            except OSError:
                text = ""
        replicas.append(
            {
                "slot": replica.get("slot"),
                "state": replica.get("state", ""),
                "message": replica.get("message", ""),
                "restarts": replica.get("restarts", 0),
                "log": text or "(nothing written yet)",
            }
        )
    return replicas, ""


@login_required
@require_GET
def engine_log(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = deployment_or_404(request, pk)
    if deployment.backend != Backend.LOCAL:
        raise Http404("Engine logs are kept on this machine for the local backend only.")
    replicas, note = replica_logs(deployment.pk)
    return render(
        request, "web/engine_log.html", {"deployment": deployment, "replicas": replicas, "note": note}
    )
