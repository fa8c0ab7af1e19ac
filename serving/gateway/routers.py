"""The pipeline's router step: a call to a prompt router becomes a call to the deployment it chooses.

1. Resolution (`resolve`): the name is a deployment or a router of the caller's organisation
   (serving.gateway.directory). A deployment answers only the routes its model serves (its card's
   routes); any other is a 400 naming those it serves (`unserved`). A router answers chat and
   completions on every API; embeddings through one are refused (400): a router picks who answers a
   prompt, and vectors of different embedding models are not interchangeable, so there is no answer it
   could choose. A router none of whose candidates is a target (none ready, or their subscriptions
   not in force) is a 503 saying so. Otherwise the call is admitted under the router's fallback (or,
   when the fallback is no target, another candidate): admission does not depend on the deployment.
2. The decision (`choose`, after admission, so a caller refused by its limits costs no embedding):
   the prompt's text (learning.routing.prompt_text); its embedding when the router's predictor needs
   one, from the router's embedding deployment, once, kept on the call for any other step that needs
   it; then learning.routing.decide with each candidate's capacity (serving.gateway.capacity).
   An embedding that fails (the embedding deployment not ready, an error, slower than
   EMBEDDING_TIMEOUT_SECONDS) is no error for the caller: the decision goes on without it, which for a
   semantic predictor means the fallback answers (learning.routing says so in its reason), and the
   failure is counted in /metrics. The embedding is metered, after the answer with the call's own
   usage (serving.gateway.pipeline), as a usage record of the organisation with route
   EMBEDDING_ROUTE, no API key, the embedding deployment and the router's name, and its tokens count
   in the organisation's per-minute tokens and monthly budget (never the key's: the router spends
   them, not the app). A predictor that fails on a prompt (say, an embedding
   deployment now serving vectors of another size than it was trained on) is logged and counted, and
   the call is decided as if the router were untrained.
3. The call then goes on exactly as a call to the chosen deployment: the engine request names it, and
   metering, logging and metrics see it (with the router's name and choice beside it). When every
   candidate is unavailable the decision names the fallback; if the fallback is no target either, the
   candidate with the shortest queue answers (one scaled to zero answers "try again shortly" and wakes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from learning import routing
from serving.gateway import capacity, metrics, shadow, upstream
from serving.gateway.directory import Caller, Directory, RouterTarget, Target

if TYPE_CHECKING:
    from serving.gateway.pipeline import Call

log = logging.getLogger(__name__)

EMBEDDING_TIMEOUT_SECONDS = 2.0
EMBEDDING_ROUTE = "router.embedding"
ROUTABLE = frozenset(
    {
        "chat.completions", "completions", "bedrock.converse", "bedrock.converse-stream",
        "bedrock.invoke", "bedrock.invoke-stream",
    }
)  # fmt: skip


# What a router answers, as /v1/models lists it: chat and completions (ROUTABLE, on every API).
ROUTER_ROUTES = ("chat.completions", "completions")
# Each gateway route's route of the card (choices.ROUTES): Bedrock's routes are chat, translated.
CARD_ROUTE = {route: "chat.completions" for route in ROUTABLE if route.startswith("bedrock.")}
# How an answer names a route to a person: its OpenAI path, or Bedrock's operation.
ROUTE_NAMES = {
    "chat.completions": "/v1/chat/completions", "responses": "/v1/responses",
    "completions": "/v1/completions", "embeddings": "/v1/embeddings", "rerank": "/v1/rerank",
    "score": "/v1/score", "audio.transcriptions": "/v1/audio/transcriptions",
    "audio.translations": "/v1/audio/translations", "bedrock.converse": "Bedrock's Converse",
    "bedrock.converse-stream": "Bedrock's ConverseStream", "bedrock.invoke": "Bedrock's InvokeModel",
    "bedrock.invoke-stream": "Bedrock's InvokeModelWithResponseStream",
}  # fmt: skip


@dataclass(frozen=True)
class Unresolved:
    """Why a name cannot be called: 404 (the API says it in its own words), 400 or 503 with `message`."""

    status: int
    message: str = ""


async def resolve(
    directory: Directory, caller: Caller, name: str, route: str
) -> tuple[Target, RouterTarget | None] | Unresolved:
    """(the target the call is admitted under, the router when `name` is one), or why not."""
    found = await directory.resolve(caller, name)
    if found is None:
        return Unresolved(404)
    if isinstance(found, Target):
        if CARD_ROUTE.get(route, route) not in found.routes:
            return Unresolved(400, unserved(found, route))
        return found, None
    if route not in ROUTABLE:
        return Unresolved(
            400,
            f"`{name}` is a prompt router: it answers chat and completions. For "
            f"{ROUTE_NAMES.get(route, route)}, call a deployment by its own name.",
        )
    target = provisional(found)
    if target is None:
        candidates = ", ".join(candidate.deployment for candidate in found.route.candidates)
        return Unresolved(
            503,
            f"None of the router `{name}`'s candidates ({candidates}) is ready right now; deploy or "
            "resume one, or check that their models' subscriptions are in force.",
        )
    return target, found


def unserved(target: Target, route: str) -> str:
    """What a caller is told who calls a deployment on a route its model does not serve (chat on an
    embedding model, say): a 400 naming the routes it serves, before anything is spent, rather than
    whatever the engine would answer (a 404 that reads like a wrong name, or its own error)."""
    asked = ROUTE_NAMES.get(route, route)
    if not target.routes:
        return (
            f"The deployment `{target.name}` cannot answer {asked}: its model serves no invoke route on "
            "this platform (its catalog card says why)."
        )
    served = ", ".join(ROUTE_NAMES.get(served, served) for served in target.routes)
    return (
        f"The deployment `{target.name}` cannot answer {asked}: it serves {served}. Send this request "
        "to a deployment whose model serves it (GET /v1/models lists what each of yours serves)."
    )


def provisional(router: RouterTarget) -> Target | None:
    """The target a router's call is admitted under: its fallback, else its first candidate that is
    a target; None when none is."""
    fallback = router.candidates.get(router.route.fallback)
    if fallback is not None:
        return fallback
    return next(iter(router.candidates.values()), None)


async def choose(call: Call) -> None:
    """Decide who answers the admitted call to a router and point the call at it (see the module
    docstring). Sets call.target, call.payload's model, call.choice, call.prompt, call.embedding and
    whether the call is shadowed."""
    router = call.router
    assert router is not None
    route = router.route
    call.prompt = routing.prompt_text(call.payload)
    if route.predictor is not None and route.predictor.needs_embedding:
        call.embedding = await embed(router, call.prompt, call)

    def available(name: str) -> bool:
        return capacity.available(router.candidates.get(name))

    try:
        choice = routing.decide(route, call.prompt, available, call.embedding)
    except Exception:  # a predictor that fails on this prompt must not fail the call: answer untrained
        log.exception("router %s: its predictor failed; deciding as untrained", route.name)
        metrics.ROUTER_PREDICTION_FAILURES.labels(route.name).inc()
        choice = routing.decide(dataclasses.replace(route, predictor=None), call.prompt, available)
    target = router.candidates.get(choice.deployment) or _last_resort(router)
    call.choice = choice
    call.target = target
    call.payload = {**call.payload, "model": target.name}
    # The platform's own calls (evaluations, which call every candidate anyway) are never shadowed.
    call.shadow = call.caller.logged and call.route in shadow.PATHS and shadow.sampled(route)
    metrics.ROUTED.labels(route.name, target.name, route.mode).inc()


def _last_resort(router: RouterTarget) -> Target:
    """The candidate with the shortest queue (one without replicas last), when the decision named a
    deployment that is no target."""
    return min(router.candidates.values(), key=capacity.load)


async def embed(router: RouterTarget, text: str, call: Call | None = None) -> np.ndarray | None:
    """The prompt's embedding from the router's embedding deployment, or None when it cannot be had in
    EMBEDDING_TIMEOUT_SECONDS (counted in /metrics; the decision goes on without it). When the engine
    answered, what it used is noted on `call` (`embedding_usage`), to be metered with the call."""
    embedder = router.embedder
    if embedder is None or not embedder.endpoints or not text:
        why = "no prompt text" if not text else "embedding deployment not ready"
        log.debug("router %s decides without an embedding: %s", router.name, why)
        if text:
            metrics.ROUTER_EMBEDDING_FAILURES.labels(router.name).inc()
        return None
    started = time.perf_counter()
    try:
        async with asyncio.timeout(EMBEDDING_TIMEOUT_SECONDS):
            exchange = await upstream.call(
                "/v1/embeddings", {"model": embedder.name, "input": text}, embedder.endpoints
            )
        answer = json.loads(exchange.body) if exchange.status == 200 else None
        if call is not None:
            call.embedding_usage = EmbeddingUsage(
                target=embedder,
                status=exchange.status,
                prompt_tokens=_prompt_tokens(answer),
                seconds=time.perf_counter() - started,
            )
        if answer is None:
            raise ValueError(f"the embedding deployment answered {exchange.status}")
        vector = np.asarray(answer["data"][0]["embedding"], dtype=np.float32)
        if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
            raise ValueError("the embedding is not a vector of numbers")
        return vector
    except (TimeoutError, upstream.UpstreamError, ValueError, KeyError, IndexError, TypeError) as error:
        message = error.message if isinstance(error, upstream.UpstreamError) else str(error) or "timed out"
        log.warning("router %s decides without an embedding: %s", router.name, message)
        metrics.ROUTER_EMBEDDING_FAILURES.labels(router.name).inc()
        return None


@dataclass(frozen=True)
class EmbeddingUsage:
    """What a routed call's prompt embedding used, metered with the call (serving.gateway.pipeline)."""

    target: Target
    status: int
    prompt_tokens: int
    seconds: float


def _prompt_tokens(answer: object) -> int:
    """The tokens an embeddings answer reports it read (0 when it says nothing readable)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens > 0 else 0


def embedding_record(call: Call, created_at: str) -> dict[str, object] | None:
    """The usage record of a routed call's prompt embedding (route EMBEDDING_ROUTE), or None when the
    call needed none or the embedding deployment never answered."""
    used = call.embedding_usage
    if used is None or call.router is None:
        return None
    return {
        "request_id": uuid.uuid4().hex,
        "organization_id": call.caller.organization_id,
        "api_key_id": None,
        "deployment_id": used.target.deployment_id,
        "model": call.router.name,
        "route": EMBEDDING_ROUTE,
        "prompt_tokens": used.prompt_tokens,
        "completion_tokens": 0,
        "latency_ms": round(used.seconds * 1000),
        "time_to_first_token_ms": None,
        "status_code": used.status,
        "streamed": False,
        "router": call.router.name,
        "router_choice": call.choice.chosen if call.choice is not None else "",
        "created_at": created_at,
    }


def headers(call: Call) -> dict[str, str]:
    """What every invoke answer of an admitted (or refused) call says about it: its request id (which
    POST /api/feedback/ takes), and, once a router has chosen, the deployment that answered."""
    found = {"x-request-id": call.request_id}
    if call.choice is not None:
        found["x-router-deployment"] = call.target.name
    return found


def invoked_model(call: Call) -> str | None:
    """The deployment that answered a routed call (Bedrock's trace.promptRouter.invokedModelId), or None
    for a call to a deployment. Model ids here are deployment names, so the id is the one a caller would
    use to call that deployment directly."""
    return call.target.name if call.router is not None else None
