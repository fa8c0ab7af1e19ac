"""Evaluations: create, run, cancel; the status machine and its sentences.

Statuses: PENDING → RUNNING → SUCCEEDED, or FAILED (something a person must fix), or CANCELLED (from
PENDING or RUNNING). Every change is a conditional update (`move`) with an event and a sentence.

A run (`run`, in a Celery task, on an event loop of its own):
1. Claims the evaluation: a conditional update to RUNNING that succeeds only while no live worker holds
   its lease (`lease_until` in the past or unset). A second delivery of the task finds the lease held
   and stops; a killed worker's lease lapses and the next run (the task redelivered, or the periodic
   `resume_evaluations`) takes over.
2. Reads the dataset's part and the items already stored, and answers only the (deployment, record)
   pairs not yet stored: a resumed run continues where the last one stopped.
3. At most `concurrency` pairs at once, each through the gateway's own path (`invoke_as` as the
   organisation, like the web playground): its rate limits and budget apply, its metering counts the
   tokens to the organisation. A call refused for a rate limit waits (bounded) and is tried again.
4. Scores the answer with every scorer and stores the item once: the unique (evaluation, deployment,
   item) constraint turns a second write of the same item into nothing, so no item counts twice.
5. Renews the lease every few seconds; the renewal is conditional on RUNNING, so a cancel (or a lost
   lease) stops the run after the items in flight.
6. Marks SUCCEEDED with a sentence of what happened, only from RUNNING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from learning import datasets, scorers
from learning.choices import FINISHED_STATUSES, DatasetPart, EvaluationStatus
from learning.models import Dataset, Evaluation, EvaluationEvent, EvaluationItem
from learning.results import ItemResult, summarize
from learning.storage import get_store
from marketplace.accounts.models import Organization
from serving.choices import DeploymentStatus
from serving.models import Deployment

log = logging.getLogger(__name__)

LEASE_SECONDS = 60
RENEW_SECONDS = 5
MAX_DEPLOYMENTS = 10
MAX_CONCURRENCY = 16
RATE_LIMIT_RETRIES = 6
MAX_RETRY_WAIT_SECONDS = 30


class Refused(ValueError):
    """A request the evaluation service turns down; `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- The status machine -----------------------------------------------------------------------------------


def move(evaluation_id: int, sources: tuple[str, ...], target: str, message: str, **fields: Any) -> bool:
    """Move the evaluation to `target` if it is in one of `sources`; an event records the change.
    Returns whether it moved (False: someone else moved it first, and nothing was written)."""
    with transaction.atomic():
        moved = Evaluation.objects.filter(pk=evaluation_id, status__in=sources).update(
            status=target, status_message=message, **fields
        )
        if moved:
            EvaluationEvent.objects.create(evaluation_id=evaluation_id, status=target, message=message)
    return bool(moved)


def started_message(total: int, done: int, deployments: int) -> str:
    if done:
        return f"Resumed: {done} of {total} answers were already stored; answering the rest."
    return f"Answering {total // max(1, deployments)} records with {deployments} deployment(s)."


def finished_message(total: int, errors: int, unparseable: int) -> str:
    parts = [f"Answered and scored {total} items"]
    if errors:
        parts.append(f"{errors} calls failed (see the items' errors)")
    if unparseable:
        parts.append(f"{unparseable} judgements could not be parsed and are not counted")
    return "; ".join(parts) + "."


# --- Creating and cancelling -------------------------------------------------------------------------------


def deployments_named(organization: Organization, names: set[str]) -> dict[str, Deployment]:
    found = (
        Deployment.objects.filter(organization=organization, name__in=names)
        .exclude(status=DeploymentStatus.DELETED)
        .select_related("instance_type")
    )
    return {deployment.name: deployment for deployment in found}


def create_evaluation(
    *,
    organization: Organization,
    user: Any,
    dataset: Dataset,
    deployments: list[str],
    scorer_specs: list[dict[str, Any]],
    name: str = "",
    part: str = DatasetPart.HELDOUT,
    max_tokens: int = 256,
    temperature: float = 0.0,
    concurrency: int = 4,
) -> Evaluation:
    """Check the request, save the evaluation PENDING and, on commit, hand it to a worker.
    Refused names the field and what to do."""
    from learning.tasks import run_evaluation

    if dataset.organization_id != organization.pk:
        raise Refused("dataset", "No such dataset in this organisation.")
    names = list(dict.fromkeys(deployments))
    if not names or len(names) > MAX_DEPLOYMENTS:
        raise Refused("deployments", f"Choose 1 to {MAX_DEPLOYMENTS} deployments to evaluate.")
    try:
        specs = scorers.check_specs(scorer_specs)
    except scorers.SpecError as error:
        raise Refused(error.field, str(error)) from None
    found = deployments_named(organization, set(names) | scorers.deployments_of(specs))
    missing = sorted((set(names) | scorers.deployments_of(specs)) - set(found))
    if missing:
        raise Refused(
            "deployments" if set(missing) & set(names) else "scorers",
            f"No deployment named {', '.join(missing)} in '{organization.slug}'; "
            "name deployments of this organisation (see /api/deployments/).",
        )
    records = {
        DatasetPart.ALL: dataset.records,
        DatasetPart.TRAIN: dataset.train_records,
        DatasetPart.HELDOUT: dataset.heldout_records,
    }[DatasetPart(part)]
    if records == 0:
        raise Refused("part", f"The {part} part of {dataset} holds no records; choose another part.")
    prices = {
        name: {
            "hourly_usd": str(found[name].instance_type.hourly_price_usd),
            "replicas": max(1, found[name].desired_replicas),
        }
        for name in names
    }
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            organization=organization, name=name or f"{dataset} × {', '.join(names)}"[:80],
            dataset=dataset, part=part, deployments=names, scorers=specs, max_tokens=max_tokens,
            temperature=temperature, concurrency=min(max(1, concurrency), MAX_CONCURRENCY), prices=prices,
            total_items=records * len(names), status_message="Waiting for a worker.",
            created_by=user if getattr(user, "pk", None) else None,
        )  # fmt: skip
        EvaluationEvent.objects.create(
            evaluation=evaluation, status=EvaluationStatus.PENDING, message=evaluation.status_message
        )
        transaction.on_commit(lambda: run_evaluation.delay(evaluation.pk))
    return evaluation


def cancel_evaluation(evaluation: Evaluation) -> bool:
    """Cancel a pending or running evaluation; a running one stops after the items in flight. Cancelling
    a finished one changes nothing (returns False)."""
    done = EvaluationItem.objects.filter(evaluation=evaluation).count()
    return move(
        evaluation.pk,
        (EvaluationStatus.PENDING, EvaluationStatus.RUNNING),
        EvaluationStatus.CANCELLED,
        f"Cancelled with {done} of {evaluation.total_items} items answered; their results are kept.",
        finished_at=timezone.now(),
        lease_until=None,
    )


# --- Reading progress and results --------------------------------------------------------------------------


def _totals(prefix: str = "") -> dict[str, Any]:
    """The aggregates progress reads, over items (prefix "") or over an evaluation's `items__`."""
    return {
        "done": Count(f"{prefix}id"),
        "prompt": Coalesce(Sum(f"{prefix}prompt_tokens"), 0),
        "completion": Coalesce(Sum(f"{prefix}completion_tokens"), 0),
        "scoring": Coalesce(Sum(f"{prefix}scoring_tokens"), 0),
        "errors": Count(f"{prefix}id", filter=~Q(**{f"{prefix}error": ""})),
    }


PROGRESS_FIELDS = tuple(_totals())


def with_progress(evaluations: QuerySet[Evaluation]) -> QuerySet[Evaluation]:
    """Evaluations annotated with what `progress` reads (`progress_done`…), so a list costs one query."""
    annotated = evaluations.annotate(**{f"progress_{name}": v for name, v in _totals("items__").items()})
    return annotated.order_by(*(Evaluation._meta.ordering or ()))  # a grouped query drops Meta.ordering


def progress(evaluation: Evaluation) -> dict[str, Any]:
    """Items done of the total, failed calls, tokens spent (answers and scoring), seconds since it
    started. Read from `with_progress`'s annotations when present, else counted."""
    if hasattr(evaluation, "progress_done"):
        totals = {name: getattr(evaluation, f"progress_{name}") for name in PROGRESS_FIELDS}
    else:
        totals = EvaluationItem.objects.filter(evaluation=evaluation).aggregate(**_totals())
    end = evaluation.finished_at or timezone.now()
    elapsed = (end - evaluation.started_at).total_seconds() if evaluation.started_at else 0.0
    return {
        "done": totals["done"],
        "total": evaluation.total_items,
        "errors": totals["errors"],
        "tokens": totals["prompt"] + totals["completion"] + totals["scoring"],
        "elapsed_seconds": round(elapsed, 1),
    }


def results(evaluation: Evaluation) -> list[dict[str, Any]]:
    rows = EvaluationItem.objects.filter(evaluation=evaluation).values(
        "deployment", "started_at", "latency_ms", "error", "prompt_tokens", "completion_tokens",
        "scoring_tokens", "scores",
    )  # fmt: skip
    items = [
        ItemResult(
            deployment=row["deployment"],
            started_at=row["started_at"],
            latency_ms=row["latency_ms"],
            ok=not row["error"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            scoring_tokens=row["scoring_tokens"],
            scores=row["scores"],
        )
        for row in rows
    ]
    kinds = [
        (spec["name"], spec["kind"] in scorers.BINARY_KINDS, scorers.BOUNDS[spec["kind"]])
        for spec in evaluation.scorers
    ]
    return summarize(items, evaluation.deployments, kinds, evaluation.prices)


# --- Running -----------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    text: str
    error: str
    prompt_tokens: int
    completion_tokens: int


def claim(evaluation_id: int) -> Evaluation | None:
    """The evaluation, now RUNNING under this worker's lease; None when it is finished, cancelled or
    held by a live worker."""
    evaluation = Evaluation.objects.filter(pk=evaluation_id).first()
    if evaluation is None or evaluation.status in FINISHED_STATUSES:
        return None
    now = timezone.now()
    done = EvaluationItem.objects.filter(evaluation_id=evaluation_id).count()
    with transaction.atomic():
        claimed = (
            Evaluation.objects.filter(pk=evaluation_id, status=evaluation.status)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .update(
                status=EvaluationStatus.RUNNING,
                lease_until=now + datetime.timedelta(seconds=LEASE_SECONDS),
                started_at=Coalesce("started_at", now),
                status_message=started_message(evaluation.total_items, done, len(evaluation.deployments)),
            )
        )
        if not claimed:
            return None
        evaluation.refresh_from_db()
        EvaluationEvent.objects.create(
            evaluation=evaluation, status=evaluation.status, message=evaluation.status_message
        )
    return evaluation


def renew(evaluation_id: int) -> bool:
    """Extend the lease; False once the evaluation is no longer RUNNING (cancelled)."""
    until = timezone.now() + datetime.timedelta(seconds=LEASE_SECONDS)
    return bool(
        Evaluation.objects.filter(pk=evaluation_id, status=EvaluationStatus.RUNNING).update(lease_until=until)
    )


def stored_pairs(evaluation_id: int) -> set[tuple[str, str]]:
    return set(
        EvaluationItem.objects.filter(evaluation_id=evaluation_id).values_list("deployment", "item_id")
    )


def without_nul(value: Any) -> Any:
    """`value` with every NUL character taken out of its strings and keys: an engine may answer one, and
    PostgreSQL stores none (in text or jsonb), so an item holding one would fail the run at every resume."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def store_item(evaluation_id: int, fields: dict[str, Any]) -> None:
    EvaluationItem.objects.bulk_create(
        [EvaluationItem(evaluation_id=evaluation_id, **without_nul(fields))], ignore_conflicts=True
    )


def finish(evaluation_id: int) -> bool:
    items = EvaluationItem.objects.filter(evaluation_id=evaluation_id)
    total = items.count()
    errors = items.exclude(error="").count()
    unparseable = sum(
        1
        for notes in items.values_list("notes", flat=True)
        for note in notes.values()
        if isinstance(note, str) and note.startswith("Unparseable judgement")
    )
    return move(
        evaluation_id,
        (EvaluationStatus.RUNNING,),
        EvaluationStatus.SUCCEEDED,
        finished_message(total, errors, unparseable),
        finished_at=timezone.now(),
        lease_until=None,
    )


def fail(evaluation_id: int, message: str) -> None:
    move(
        evaluation_id, (EvaluationStatus.RUNNING,), EvaluationStatus.FAILED, message,
        finished_at=timezone.now(), lease_until=None,
    )  # fmt: skip


Invoke = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


def gateway_invoker(organization_id: int) -> Invoke:
    """Calls through the gateway's own path as the organisation (serving.gateway.openai_api.invoke_as),
    waiting out rate limits (Retry-After, bounded) a few times before giving up."""
    from serving.gateway import openai_api, pipeline

    async def invoke(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        # Not logged: the answers are the platform's, and would flow back into datasets made from logs.
        person = await pipeline.services().directory.person(organization_id)
        caller = dataclasses.replace(person, logged=False)
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            response = await openai_api.invoke_as(caller, route, payload)
            body = getattr(response, "content", b"")
            try:
                answer = json.loads(body) if body else {}
            except ValueError:
                answer = {"error": {"message": "The answer was not JSON."}}
            if response.status_code != 429 or attempt == RATE_LIMIT_RETRIES:
                return response.status_code, answer if isinstance(answer, dict) else {}
            wait = response.headers.get("Retry-After", "1")
            await asyncio.sleep(min(MAX_RETRY_WAIT_SECONDS, max(1, int(wait) if wait.isdigit() else 1)))
        raise AssertionError("unreachable")

    return invoke


async def answer(invoke: Invoke, evaluation: Evaluation, deployment: str, record: dict[str, Any]) -> Answer:
    payload = {
        "model": deployment,
        "messages": record["messages"],
        "max_tokens": evaluation.max_tokens,
        "temperature": evaluation.temperature,
    }
    status, body = await invoke("chat.completions", payload)
    usage = body.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    if status != 200:
        return Answer(status, "", f"{status}: {scorers.error_text(body)}", prompt, completion)
    text = datasets.answer_text(body)
    if text is None:
        return Answer(status, "", "The deployment's answer holds no message.", prompt, completion)
    return Answer(status, text, "", prompt, completion)


async def answer_and_score(
    invoke: Invoke,
    evaluation: Evaluation,
    built: list[scorers.Scorer],
    deployment: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The fields of one item: the deployment's answer and every scorer's verdict."""
    started_at, clock = timezone.now(), time.perf_counter()
    reply = await answer(invoke, evaluation, deployment, record)
    latency_ms = round((time.perf_counter() - clock) * 1000)
    scores: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    spent = 0
    item = scorers.Item(record["messages"], record.get("reference"), reply.text)
    for scorer in built:
        if reply.error:
            verdict = scorers.Score(None, "The deployment did not answer.")
        else:
            verdict = await scorer.score(item, invoke)
        scores[scorer.name] = verdict.value
        spent += verdict.tokens
        if verdict.note:
            notes[scorer.name] = verdict.note
    return {
        "deployment": deployment, "item_id": record["id"], "started_at": started_at,
        "latency_ms": latency_ms, "status_code": reply.status, "error": reply.error[:2000],
        "answer": reply.text, "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens, "scoring_tokens": spent, "scores": scores,
        "notes": notes,
    }  # fmt: skip


def failed_item(deployment: str, item_id: str, error: Exception) -> dict[str, Any]:
    """The item of a call that raised instead of answering: stored as an error, so the run goes on and a
    resumed run does not try it again and again."""
    return {
        "deployment": deployment, "item_id": item_id, "started_at": timezone.now(), "latency_ms": 0,
        "status_code": 500, "error": f"The item could not be answered or scored ({type(error).__name__}).",
    }  # fmt: skip


async def run(evaluation_id: int, invoke: Invoke | None = None) -> str:
    """Run (or resume) the evaluation as described in the module's docstring; returns its final status,
    or "" when this run did not hold it. Idempotent: running it again answers only what is missing."""
    evaluation = await sync_to_async(claim)(evaluation_id)
    if evaluation is None:
        return ""
    dataset = await sync_to_async(lambda: evaluation.dataset)()
    try:
        records = datasets.load_part(get_store(), dataset, evaluation.part)
    except datasets.RecordsUnavailable as error:
        await sync_to_async(fail)(evaluation_id, str(error))
        return EvaluationStatus.FAILED
    done = await sync_to_async(stored_pairs)(evaluation_id)
    work = asyncio.Queue[tuple[str, dict[str, Any]]]()
    for record in records:
        for deployment in evaluation.deployments:
            if (deployment, record["id"]) not in done:
                work.put_nowait((deployment, record))
    invoke = invoke or gateway_invoker(evaluation.organization_id)
    built = scorers.build(evaluation.scorers)
    stopped = asyncio.Event()

    async def worker() -> None:
        while not stopped.is_set():
            try:
                deployment, record = work.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                fields = await answer_and_score(invoke, evaluation, built, deployment, record)
            except Exception as error:  # one item that cannot be answered must not stall the rest
                log.exception("evaluation %s: item %s of %s failed", evaluation_id, record["id"], deployment)
                fields = failed_item(deployment, record["id"], error)
            await sync_to_async(store_item)(evaluation_id, fields)

    async def keep_lease() -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            if not await sync_to_async(renew)(evaluation_id):
                stopped.set()
                return

    lease = asyncio.create_task(keep_lease())
    try:
        await asyncio.gather(*(worker() for _ in range(evaluation.concurrency)))
    finally:
        lease.cancel()
    if stopped.is_set() or not await sync_to_async(renew)(evaluation_id):
        return await sync_to_async(lambda: Evaluation.objects.get(pk=evaluation_id).status)()
    await sync_to_async(finish)(evaluation_id)
    return EvaluationStatus.SUCCEEDED


def run_blocking(evaluation_id: int) -> str:
    """`run` on an event loop of its own, for a Celery task. Before the loop goes, the gateway's metering
    (and log capture) still in flight is awaited, so every call's tokens reach the organisation's usage,
    and the loop's HTTP client and the database connection of the run's queries are closed."""
    from serving.gateway import pipeline, upstream

    async def main() -> str:
        try:
            return await run(evaluation_id)
        finally:
            await pipeline.drain()
            await upstream.close_clients()
            await sync_to_async(connections.close_all)()

    return asyncio.run(main())


def unattended(pending_grace_seconds: int = 600) -> list[int]:
    """Evaluations that should be running and that no worker holds: RUNNING with a lapsed lease, or
    PENDING for longer than the grace (its task was lost before a worker took it)."""
    now = timezone.now()
    lapsed = Q(status=EvaluationStatus.RUNNING) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    waiting = Q(status=EvaluationStatus.PENDING) & Q(
        created_at__lt=now - datetime.timedelta(seconds=pending_grace_seconds)
    )
    return list(Evaluation.objects.filter(lapsed | waiting).values_list("pk", flat=True)[:100])
