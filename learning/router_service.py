"""Routers: the rules of creating and changing one, their candidates' costs, what gateway processes read
of them (`routes_of`), shadow-call samples and feedback.

Every refusal is a `Refused(field, sentence)` that names the field and says what to do.
"""

from __future__ import annotations

import datetime
import logging
import math
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from learning import masking, predictors, routing, writer
from learning.choices import EvaluationStatus
from learning.evaluations import Refused, results
from learning.models import (
    Evaluation,
    Feedback,
    InvocationLogSettings,
    Router,
    RouterMode,
    RouterSample,
    RouterVersion,
    SampleStatus,
)
from learning.storage import ObjectNotFound, get_store
from marketplace.accounts.models import Organization
from serving.choices import DeploymentStatus
from serving.models import Deployment, UsageRecord

log = logging.getLogger(__name__)

MIN_CANDIDATES = 2
MAX_CANDIDATES = 10
# Recent evaluations read for measured costs; older ones measured deployments that have likely changed.
COST_EVALUATIONS = 20

__all__ = ["Refused"]


# --- Checking and saving -----------------------------------------------------------------------------------


def deployment_names(organization: Organization, names: set[str]) -> set[str]:
    """Which of `names` are deployments of the organisation (not deleted)."""
    return set(
        Deployment.objects.filter(organization=organization, name__in=names)
        .exclude(status=DeploymentStatus.DELETED)
        .values_list("name", flat=True)
    )


def is_router_name(organization_id: int, name: str) -> bool:
    """Whether the organisation has a router of this name: the deployments side refuses such a name,
    as a router refuses a deployment's, so one name never means two things to the gateway."""
    return Router.objects.filter(organization_id=organization_id, name=name).exists()


def _usd(value: Any) -> float | None:
    """`value` as a finite amount from 0, or None (an integer too large for a float included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        amount = float(value)
    except OverflowError:
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


def check_candidates(raw: Any) -> list[dict[str, Any]]:
    """Candidates as [{"deployment": name, "cost_per_1k_tokens": float | None}], each named once."""
    if not isinstance(raw, list):
        raise Refused(
            "candidates", "A list of candidates: deployment names or {deployment, cost_per_1k_tokens}."
        )
    checked: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            item = {"deployment": item}
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("deployment"), str)
            or not item["deployment"]
            or "\x00" in item["deployment"]  # PostgreSQL cannot even compare such a string
        ):
            raise Refused(f"candidates[{index}].deployment", "Each candidate names a deployment.")
        unknown = sorted(set(item) - {"deployment", "cost_per_1k_tokens"})
        if unknown:
            raise Refused(f"candidates[{index}].{unknown[0]}", f"A candidate takes no '{unknown[0]}'.")
        cost = item.get("cost_per_1k_tokens")
        if cost is not None:
            cost = _usd(cost)
            if cost is None:
                raise Refused(
                    f"candidates[{index}].cost_per_1k_tokens",
                    "A cost per 1,000 tokens is a number of USD from 0, or null to use the measured one.",
                )
        checked.append({"deployment": item["deployment"][:40], "cost_per_1k_tokens": cost})
    names = [item["deployment"] for item in checked]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise Refused("candidates", f"{', '.join(twice)} is named more than once; name each candidate once.")
    if not MIN_CANDIDATES <= len(checked) <= MAX_CANDIDATES:
        raise Refused(
            "candidates",
            f"A router chooses among {MIN_CANDIDATES} to {MAX_CANDIDATES} candidates; {len(checked)} given.",
        )
    return checked


def check_router(
    organization: Organization, fields: dict[str, Any], router: Router | None = None
) -> dict[str, Any]:
    """The router's fields after `fields` are applied, checked against each other and the
    organisation's deployments. Refused names the first field that is wrong."""
    current: dict[str, Any] = {
        "name": router.name if router else "",
        "candidates": router.candidates if router else None,
        "fallback": router.fallback if router else "",
        "embedding_deployment": router.embedding_deployment if router else "",
        "judge_deployment": router.judge_deployment if router else "",
    }
    merged = {**current, **fields}
    name = merged["name"]
    if "name" in fields:
        if not isinstance(name, str) or not name:
            raise Refused("name", "A router needs a name: the model name apps call.")
        others = Router.objects.filter(organization=organization, name=name)
        if router is not None:
            others = others.exclude(pk=router.pk)
        if others.exists():
            raise _name_taken(organization, name)
        if deployment_names(organization, {name}):
            raise Refused(
                "name",
                f"{name} is a deployment of '{organization.slug}'; a router needs a name no deployment has.",
            )
    candidates = check_candidates(merged["candidates"])
    names = [item["deployment"] for item in candidates]
    extra = {merged[key] for key in ("embedding_deployment", "judge_deployment") if merged[key]}
    known = deployment_names(organization, set(names) | extra)
    missing = [n for n in names if n not in known]
    if missing:
        raise Refused(
            "candidates",
            f"No deployment named {', '.join(missing)} in '{organization.slug}'; "
            "name deployments of this organisation (see /api/deployments/).",
        )
    if merged["fallback"] not in names:
        raise Refused(
            "fallback",
            f"The fallback must be one of the candidates ({', '.join(names)}), "
            f"not {merged['fallback']!r:.60}.",
        )
    for key in ("embedding_deployment", "judge_deployment"):
        if merged[key] and merged[key] not in known:
            raise Refused(key, f"No deployment named {merged[key]} in '{organization.slug}'.")
    checked = {**fields, "candidates": candidates}
    if "quality_difference" in fields:
        value = fields["quality_difference"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise Refused("quality_difference", "τ is a fraction from 0 (no worse) to 1 (any quality).")
    return checked


def _name_taken(organization: Organization, name: str) -> Refused:
    return Refused("name", f"'{organization.slug}' already has a router named {name}; choose another name.")


def create_router(*, organization: Organization, user: Any, **fields: Any) -> Router:
    checked = check_router(organization, fields)
    costs = measured_costs(organization, [c["deployment"] for c in checked["candidates"]])
    try:
        with transaction.atomic():
            return Router.objects.create(
                organization=organization,
                created_by=user if getattr(user, "pk", None) else None,
                measured_costs=costs,
                **checked,
            )
    except IntegrityError:  # another request took the name between the check and the insert
        if Router.objects.filter(organization=organization, name=checked["name"]).exists():
            raise _name_taken(organization, checked["name"]) from None
        raise


def update_router(router: Router, **fields: Any) -> Router:
    checked = check_router(router.organization, fields, router)
    if not fields:
        return router
    for key, value in checked.items():
        setattr(router, key, value)
    names = [c["deployment"] for c in router.candidates]
    if set(names) - set(router.measured_costs):
        router.measured_costs = {**measured_costs(router.organization, names), **router.measured_costs}
    try:
        with transaction.atomic():
            router.save()
    except IntegrityError:  # renamed to a name another request took meanwhile
        if "name" in fields:
            raise _name_taken(router.organization, router.name) from None
        raise
    return router


def activate(router: Router, version: RouterVersion | None) -> Router:
    """Make `version` (of this router) the one gateway processes use; None: untrained again."""
    if version is not None and version.router_id != router.pk:
        raise Refused("version", "No such version of this router.")
    router.active_version = version
    router.save(update_fields=["active_version", "updated_at"])
    return router


# --- Costs -------------------------------------------------------------------------------------------------


def costs_from_evaluation(evaluation: Evaluation, names: list[str]) -> dict[str, float]:
    """USD per 1,000 tokens each named deployment cost in the evaluation (its hourly price for the time
    it was busy, over the tokens it handled), for those it measured."""
    found: dict[str, float] = {}
    for summary in results(evaluation):
        per_million = summary.get("usd_per_million_tokens")
        if summary["deployment"] in names and per_million is not None:
            found[summary["deployment"]] = round(float(per_million) / 1000, 8)
    return found


def measured_costs(organization: Organization, names: list[str]) -> dict[str, float]:
    """Each deployment's cost per 1,000 tokens from the latest succeeded evaluation that measured it."""
    wanted, found = set(names), dict[str, float]()
    recent = Evaluation.objects.filter(organization=organization, status=EvaluationStatus.SUCCEEDED).order_by(
        "-finished_at", "-id"
    )[:COST_EVALUATIONS]
    for evaluation in recent:
        todo = sorted(wanted - set(found))
        if not todo:
            break
        if set(todo) & set(evaluation.deployments):
            found.update(costs_from_evaluation(evaluation, todo))
    return found


def candidate_costs(router: Router) -> dict[str, float | None]:
    """Each candidate's cost per 1,000 tokens: the override, else the measured one, else None."""
    costs: dict[str, float | None] = {}
    for candidate in router.candidates:
        override = candidate.get("cost_per_1k_tokens")
        costs[candidate["deployment"]] = (
            float(override) if override is not None else router.measured_costs.get(candidate["deployment"])
        )
    return costs


# --- What gateway processes read ---------------------------------------------------------------------------


def _predictor(version: RouterVersion) -> routing.Predictor | None:
    def load() -> routing.Predictor:
        return predictors.load(get_store().get(version.key))

    try:
        return routing.cached_predictor(version.router_id, version.version, load)
    except (ObjectNotFound, predictors.PredictorError):
        log.exception(
            "router %s: version %s cannot be loaded; routing as untrained", version.router_id, version.version
        )
        return None


def route_of(router: Router) -> routing.Route:
    version = router.active_version
    predictor = _predictor(version) if version is not None else None
    costs = candidate_costs(router)
    return routing.Route(
        router_id=router.pk,
        organization_id=router.organization_id,
        name=router.name,
        candidates=tuple(
            routing.Candidate(name, cost if cost is not None else math.inf) for name, cost in costs.items()
        ),
        fallback=router.fallback,
        quality_difference=router.quality_difference,
        mode=router.mode if router.mode in (RouterMode.ACTIVE, RouterMode.SHADOW) else routing.SHADOW,
        version=version.version if version is not None and predictor is not None else None,
        predictor=predictor,
        embedding_deployment=(
            router.embedding_deployment if predictor is not None and predictor.needs_embedding else ""
        ),
        shadow_rate=router.shadow_rate,
        shadow_tokens_per_day=router.shadow_tokens_per_day,
    )


def routes_of(organization_id: int) -> dict[str, routing.Route]:
    routers = Router.objects.filter(organization_id=organization_id).select_related("active_version")
    return {router.name: route_of(router) for router in routers}


# --- Samples and feedback ----------------------------------------------------------------------------------

ANSWER_FIELDS = ("text", "prompt_tokens", "completion_tokens", "latency_ms", "status")


def masks_personal_data(router_id: int) -> bool:
    """Whether the router's organisation masks personal data in what it keeps of its traffic: its
    invocation log setting, on unless the organisation turned it off."""
    setting = (
        InvocationLogSettings.objects.filter(organization__routers=router_id)
        .values_list("mask_personal_data", flat=True)
        .first()
    )
    return True if setting is None else setting


def record_sample(router_id: int, request_id: str, prompt: str, answers: dict[str, dict[str, Any]]) -> None:
    """A sample is traffic kept, like an invocation log record: personal data in the prompt and the
    answers is masked (learning.masking) as the organisation masks its logs, before it is stored."""
    from learning.evaluations import without_nul
    from learning.tasks import score_router_samples

    kept = {
        str(name)[:40]: {key: answer.get(key) for key in ANSWER_FIELDS}
        for name, answer in answers.items()
        if isinstance(answer, dict)
    }
    if masks_personal_data(router_id):
        prompt = masking.mask(prompt)[0]
        for answer in kept.values():
            if isinstance(answer["text"], str):
                answer["text"] = masking.mask(answer["text"])[0]
    # ON CONFLICT DO NOTHING returns no id, so the pending sample is looked up: a record of a request
    # already stored and still unjudged queues its judging again, one already judged queues nothing.
    RouterSample.objects.bulk_create(
        [
            RouterSample(
                router_id=router_id,
                request_id=request_id[:64],
                prompt=without_nul(prompt)[: routing.MAX_PROMPT_CHARACTERS * 4],
                answers=without_nul(kept),
            )
        ],
        ignore_conflicts=True,
    )
    pending = (
        RouterSample.objects.filter(
            router_id=router_id, request_id=request_id[:64], status=SampleStatus.PENDING
        )
        .values_list("pk", flat=True)
        .first()
    )
    if pending is not None:
        transaction.on_commit(lambda: score_router_samples.delay([pending]))


def expire_samples(now: datetime.datetime | None = None) -> int:
    """Delete the shadow-call samples older than their organisation's invocation log retention (the
    default when it has no settings): a sample is kept traffic, and goes when the logs of its day go.
    Returns how many were deleted."""
    now = now or timezone.now()
    deleted = 0
    organizations = RouterSample.objects.values_list("router__organization_id", flat=True).distinct()
    for organization_id, cutoff in writer.retention_cutoffs(organizations, now):
        count, _ = RouterSample.objects.filter(
            router__organization_id=organization_id, created_at__lt=cutoff
        ).delete()
        deleted += count
    return deleted


class UnknownRequest(LookupError):
    """No request of this id is known in the organisation."""


def give_feedback(
    *,
    organization: Organization,
    request_id: str,
    score: float,
    text: str,
    user: Any,
    api_key: Any,
    scope: frozenset[str] | None = None,
) -> tuple[Feedback, bool]:
    """Store (or replace) the rating of one answer of the organisation; (feedback, created).
    UnknownRequest when neither a usage record nor a router sample of the organisation has the id, or
    when a key limited to `scope` rates a call to a name outside it."""
    usage = (
        UsageRecord.objects.filter(organization=organization, request_id=request_id)
        .select_related("deployment")
        .first()
    )
    deployment, router_name = "", ""
    if usage is not None:
        if scope is not None and usage.model not in scope:
            raise UnknownRequest(request_id)
        deployment = usage.deployment.name if usage.deployment else ""
        router_name = usage.router
    else:
        sample = (
            RouterSample.objects.filter(router__organization=organization, request_id=request_id)
            .select_related("router")
            .first()
        )
        if sample is None or (scope is not None and sample.router.name not in scope):
            raise UnknownRequest(request_id)
        router_name = sample.router.name
    with transaction.atomic():
        feedback, created = Feedback.objects.update_or_create(
            organization=organization,
            request_id=request_id,
            defaults={
                "score": score,
                "text": text,
                "deployment": deployment,
                "router": router_name,
                "created_by": user if getattr(user, "pk", None) else None,
                "api_key": api_key,
            },
        )
    return feedback, created
