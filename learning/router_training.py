"""Training a router's predictors from the organisation's own data, and judging shadow-call samples.

Statuses: PENDING → RUNNING → SUCCEEDED or FAILED (with a sentence saying what to fix). A run (`run`,
in the Celery task `train_router`):
1. Claims the training: a conditional update to RUNNING while no live worker holds its lease, so a
   second delivery stops at once and a killed worker's training is taken over once the lease lapses.
2. Gathers the targets: every evaluation item's score from the chosen scorer, normalised to 0..1 by the
   scorer's range, for prompts that every candidate answered and that scorer scored; then the router's
   judged shadow-call samples, where an app's feedback on the served answer replaces its judged score.
   Feedback on any other call is not a target: a target is every candidate's score on one prompt, and
   an ordinary call (even one the invocation log kept) has one candidate's answer. Predictors fit on
   complete rows only, so such a rating would need per-candidate fits to count; shadow sampling is how
   a router collects the other candidates' answers to rated prompts.
3. Splits prompts into train and held-out by a hash of their text (the same prompt always falls on the
   same side, so re-running gives the same split and a duplicate cannot leak across).
4. Fits the n-gram predictor, and, when the router names an embedding deployment, embeds every prompt
   through the gateway (as the organisation, metered) and fits the semantic one.
5. Reports both on the held-out split (learning.router_report) and writes one version per kind. A
   version is unique per (training, kind), so a re-run after a crash writes only what is missing.
Nothing is activated: a person looks at the report and activates a version.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from learning import datasets, predictors, router_report, routing, scorers
from learning.choices import EvaluationStatus
from learning.evaluations import Refused, gateway_invoker
from learning.models import (
    Evaluation,
    EvaluationItem,
    Feedback,
    PredictorKind,
    Router,
    RouterSample,
    RouterTraining,
    RouterVersion,
    SampleStatus,
    TrainingStatus,
)
from learning.router_service import candidate_costs, costs_from_evaluation
from learning.storage import get_store
from serving.models import UsageRecord

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.3
MIN_TRAIN_ITEMS = 10
MIN_HELDOUT_ITEMS = 5
LEASE_SECONDS = 600
EMBED_BATCH = 32
FINISHED = (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED)
PENDING_GRACE_SECONDS = 600  # a sample unjudged this long is queued again

# texts -> one embedding per text; the gateway's embeddings route in production.
Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


class TrainingFailed(Exception):
    """Something a person must fix; the message says what."""


@dataclass
class Example:
    text: str
    targets: list[float]  # per candidate, 0..1
    tokens: list[int]  # per candidate, tokens spent on this prompt (for its cost)
    source: str = "evaluation"
    extra: dict[str, Any] = field(default_factory=dict)


# --- Starting ----------------------------------------------------------------------------------------------


def start_training(
    *, router: Router, evaluation: Evaluation | None, scorer: str, user: Any
) -> RouterTraining:
    """Check the request, save the training PENDING and, on commit, hand it to a worker."""
    from learning.tasks import train_router

    if evaluation is None or evaluation.organization_id != router.organization_id:
        raise Refused("evaluation", "No such evaluation in this organisation.")
    if evaluation.status != EvaluationStatus.SUCCEEDED:
        raise Refused(
            "evaluation", f"The evaluation is {evaluation.status}; train from one that has succeeded."
        )
    names = {spec["name"] for spec in evaluation.scorers}
    if scorer not in names:
        raise Refused(
            "scorer", f"The evaluation has no scorer '{scorer}'; choose one of {', '.join(sorted(names))}."
        )
    candidates = [c["deployment"] for c in router.candidates]
    missing = [name for name in candidates if name not in evaluation.deployments]
    if missing:
        raise Refused(
            "evaluation",
            f"The evaluation did not run {', '.join(missing)}; evaluate every candidate of the router "
            f"({', '.join(candidates)}) on the same dataset, then train from that evaluation.",
        )
    with transaction.atomic():
        # The router's row is locked first, so of two requests at once the second waits for the first
        # to commit and then finds its training under way.
        Router.objects.select_for_update().filter(pk=router.pk).first()
        if RouterTraining.objects.filter(
            router=router, status__in=(TrainingStatus.PENDING, TrainingStatus.RUNNING)
        ).exists():
            raise Refused("router", "A training of this router is already under way; wait for it to finish.")
        training = RouterTraining.objects.create(
            router=router, evaluation=evaluation, scorer=scorer, status_message="Waiting for a worker.",
            created_by=user if getattr(user, "pk", None) else None,
        )  # fmt: skip
        transaction.on_commit(lambda: train_router.delay(training.pk))
    return training


# --- The status machine -----------------------------------------------------------------------------------


def claim(training_id: int) -> RouterTraining | None:
    now = timezone.now()
    claimed = (
        RouterTraining.objects.filter(pk=training_id)
        .exclude(status__in=FINISHED)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(
            status=TrainingStatus.RUNNING,
            lease_until=now + datetime.timedelta(seconds=LEASE_SECONDS),
            started_at=Coalesce("started_at", now),
            status_message="Gathering the targets.",
        )
    )
    if not claimed:
        return None
    return RouterTraining.objects.select_related("router", "router__organization", "evaluation").get(
        pk=training_id
    )


def report_progress(training_id: int, progress: float, message: str) -> None:
    """Renews the lease too: a step that reports progress is alive."""
    RouterTraining.objects.filter(pk=training_id, status=TrainingStatus.RUNNING).update(
        progress=round(progress, 3), status_message=message,
        lease_until=timezone.now() + datetime.timedelta(seconds=LEASE_SECONDS),
    )  # fmt: skip


def finish(training_id: int, status: str, message: str) -> None:
    done = {"progress": 1.0} if status == TrainingStatus.SUCCEEDED else {}
    RouterTraining.objects.filter(pk=training_id, status=TrainingStatus.RUNNING).update(
        status=status, status_message=message, finished_at=timezone.now(), lease_until=None, **done
    )


# --- Targets -----------------------------------------------------------------------------------------------


def normalise(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return min(1.0, max(0.0, (value - low) / (high - low)))


def evaluation_examples(
    evaluation: Evaluation, scorer: str, candidates: Sequence[str]
) -> tuple[list[Example], int]:
    """Examples from the evaluation's items, and how many records were left out (a candidate did not
    answer, or the scorer could not score it)."""
    spec = next(spec for spec in evaluation.scorers if spec["name"] == scorer)
    bounds = scorers.BOUNDS[spec["kind"]]
    try:
        records = datasets.load_part(get_store(), evaluation.dataset, evaluation.part)
    except datasets.RecordsUnavailable as error:
        raise TrainingFailed(str(error)) from None
    texts = {record["id"]: routing.prompt_text({"messages": record["messages"]}) for record in records}
    rows = EvaluationItem.objects.filter(evaluation=evaluation, deployment__in=candidates).values_list(
        "item_id", "deployment", "error", "scores", "prompt_tokens", "completion_tokens"
    )
    found: dict[str, dict[str, tuple[float, int]]] = {}
    for item_id, deployment, failed, scores, prompt_tokens, completion_tokens in rows.iterator():
        value = scores.get(scorer)
        if failed or value is None or item_id not in texts:
            continue
        found.setdefault(item_id, {})[deployment] = (
            normalise(float(value), bounds),
            prompt_tokens + completion_tokens,
        )
    examples, left_out = [], 0
    for item_id, text in texts.items():
        per = found.get(item_id, {})
        if len(per) < len(candidates) or not text:
            left_out += 1
            continue
        examples.append(Example(text, [per[n][0] for n in candidates], [per[n][1] for n in candidates]))
    return examples, left_out


def sample_examples(router: Router, candidates: Sequence[str]) -> list[Example]:
    """The router's judged samples that scored every candidate; an app's feedback on the served answer
    replaces that answer's judged score. The only place feedback becomes a target (see the module)."""
    samples = list(RouterSample.objects.filter(router=router, status=SampleStatus.SCORED))
    ratings = {
        row["request_id"]: row
        for row in Feedback.objects.filter(
            organization_id=router.organization_id, request_id__in=[s.request_id for s in samples]
        ).values("request_id", "deployment", "score")
    }
    # A rating posted before its call was metered names no deployment; who served is known by now.
    unknown = [request_id for request_id, rating in ratings.items() if not rating["deployment"]]
    if unknown:
        served = UsageRecord.objects.filter(
            organization_id=router.organization_id, request_id__in=unknown, deployment__isnull=False
        ).values_list("request_id", "deployment__name")
        for request_id, name in served:
            ratings[request_id]["deployment"] = name
    examples = []
    for sample in samples:
        scores = dict(sample.scores)
        rating = ratings.get(sample.request_id)
        if rating and rating["deployment"] in candidates:
            scores[rating["deployment"]] = rating["score"]
        if any(scores.get(name) is None for name in candidates):
            continue
        tokens = [
            int((sample.answers.get(name) or {}).get("prompt_tokens") or 0)
            + int((sample.answers.get(name) or {}).get("completion_tokens") or 0)
            for name in candidates
        ]
        examples.append(
            Example(
                sample.prompt[-routing.MAX_PROMPT_CHARACTERS :],
                [float(scores[n]) for n in candidates],
                tokens,
                "sample",
            )
        )
    return examples


def is_heldout(text: str) -> bool:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_FRACTION


def call_costs(examples: Sequence[Example], costs_per_1k: np.ndarray) -> np.ndarray:
    """Each example's cost per candidate, USD. A candidate that reported no tokens is charged the mean
    of the others' on that prompt (or 1,000 tokens when none reported any)."""
    tokens = np.array([example.tokens for example in examples], dtype=np.float64).reshape(
        len(examples), len(costs_per_1k)
    )
    for row in tokens:
        reported = row[row > 0]
        row[row <= 0] = reported.mean() if len(reported) else 1000.0
    return tokens / 1000.0 * costs_per_1k


# --- Embeddings --------------------------------------------------------------------------------------------


def gateway_embedder(organization_id: int, deployment: str) -> Embed:
    invoke = gateway_invoker(organization_id)

    async def embed(texts: list[str]) -> list[list[float]]:
        status, answer = await invoke("embeddings", {"model": deployment, "input": [t or " " for t in texts]})
        if status != 200:
            raise TrainingFailed(
                f"The embedding deployment {deployment} answered {status}: {scorers.error_text(answer)}; "
                "check that it is ready and serves embeddings."
            )
        try:
            return [row["embedding"] for row in sorted(answer["data"], key=lambda row: row["index"])]
        except (KeyError, TypeError):
            raise TrainingFailed(f"The embedding deployment {deployment} answered no embeddings.") from None

    return embed


def embed_all(embed: Embed, texts: list[str], on_batch: Callable[[int], None]) -> np.ndarray:
    """Every text's embedding, a batch at a time; `on_batch` hears how many are done. Each batch runs on
    a loop of its own, so progress is written from this thread between batches."""
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start : start + EMBED_BATCH]
        found = run_async(embed(batch))
        if len(found) != len(batch):
            raise TrainingFailed(
                "The embedding deployment answered a different number of embeddings than asked."
            )
        vectors.extend(found)
        on_batch(len(vectors))
    return np.array(vectors, dtype=np.float32)


# --- The run -----------------------------------------------------------------------------------------------


def decision_ms(predict: Callable[[int], Any], count: int) -> float:
    """Median milliseconds of one prediction over up to 200 held-out prompts."""
    times = []
    for index in range(min(200, count)):
        clock = time.perf_counter()
        predict(index)
        times.append((time.perf_counter() - clock) * 1000)
    return round(statistics.median(times), 4) if times else 0.0


def write_version(
    training: RouterTraining, kind: str, predictor: predictors.AnyPredictor, report: dict[str, Any]
) -> RouterVersion:
    """The version of this training and kind: the one already written (a re-run), or a new one."""
    existing = RouterVersion.objects.filter(training=training, kind=kind).first()
    if existing is not None:
        return existing
    router = training.router
    data = predictors.dump(predictor)
    with transaction.atomic():
        # Locked so versions are numbered in turn, and so a delete cannot slip in before the row is
        # written: a predictor stored for a deleted router would stay in the store for ever.
        if Router.objects.select_for_update().filter(pk=router.pk).first() is None:
            raise TrainingFailed("The router was deleted during its training; nothing was stored.")
        number = (RouterVersion.objects.filter(router=router).aggregate(top=Max("version"))["top"] or 0) + 1
        key = f"routers/org-{router.organization_id}/router-{router.pk}/v{number}-{kind}.npz"
        get_store().put(key, data)
        try:
            with transaction.atomic():
                return RouterVersion.objects.create(
                    router=router, version=number, kind=kind, candidates=list(predictor.candidates), key=key,
                    bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), report=report,
                    training=training, evaluation=training.evaluation,
                )  # fmt: skip
        except IntegrityError:  # another run of this training wrote it first
            return RouterVersion.objects.get(training=training, kind=kind)


def _train(training: RouterTraining, embed: Embed | None) -> str:
    """Steps 2–5 of the module's docstring; returns the closing sentence. TrainingFailed for what a person
    must fix."""
    router, evaluation = training.router, training.evaluation
    if evaluation is None:
        raise TrainingFailed("The evaluation was deleted; start a training from another evaluation.")
    candidates = [c["deployment"] for c in router.candidates]
    missing = [name for name in candidates if name not in evaluation.deployments]
    if missing:
        raise TrainingFailed(
            f"The evaluation did not run {', '.join(missing)}; evaluate every candidate, then train again."
        )
    examples, left_out = evaluation_examples(evaluation, training.scorer, candidates)
    examples += sample_examples(router, candidates)
    train = [e for e in examples if not is_heldout(e.text)]
    heldout = [e for e in examples if is_heldout(e.text)]
    if len(train) < MIN_TRAIN_ITEMS or len(heldout) < MIN_HELDOUT_ITEMS:
        raise TrainingFailed(
            f"Too few items: {len(examples)} prompts have a score for every candidate "
            f"({len(train)} for training, {len(heldout)} held out; {left_out} left out because a "
            "candidate did not answer or the scorer could not score it). At least "
            f"{MIN_TRAIN_ITEMS} and {MIN_HELDOUT_ITEMS} are needed: evaluate a larger dataset."
        )
    measured = costs_from_evaluation(evaluation, candidates)
    if measured:
        router.measured_costs = {**router.measured_costs, **measured}
        Router.objects.filter(pk=router.pk).update(measured_costs=router.measured_costs)
    costs = candidate_costs(router)
    unknown = [name for name, cost in costs.items() if cost is None]
    if unknown:
        raise TrainingFailed(
            f"The cost of {', '.join(unknown)} is unknown; set its cost_per_1k_tokens on the router."
        )
    costs_per_1k = np.array([costs[name] for name in candidates], dtype=np.float64)
    fallback = candidates.index(router.fallback)
    true = np.array([e.targets for e in heldout])
    spent = call_costs(heldout, costs_per_1k)
    common = {
        "train_items": len(train), "heldout_items": len(heldout), "left_out": left_out,
        "from_samples": sum(1 for e in examples if e.source == "sample"),
        "evaluation": evaluation.pk, "scorer": training.scorer, "tau": router.quality_difference,
    }  # fmt: skip
    report_progress(training.pk, 0.2, f"Training the n-gram predictor on {len(train)} prompts.")
    ngram = predictors.NgramPredictor.fit(
        candidates, [e.text for e in train], np.array([e.targets for e in train])
    )
    ngram_report = router_report.build(
        candidates=candidates, true=true, predicted=ngram.predict_many([e.text for e in heldout]),
        call_costs=spent, costs_per_1k=costs_per_1k, fallback=fallback, tau=router.quality_difference,
    )  # fmt: skip
    ngram_report.update(
        common,
        kind=PredictorKind.NGRAM,
        decision_ms=decision_ms(lambda i: ngram.predict(heldout[i].text), len(heldout)),
    )
    written = [write_version(training, PredictorKind.NGRAM, ngram, ngram_report)]
    if not router.embedding_deployment:
        note = "no semantic predictor: the router names no embedding deployment"
    else:
        report_progress(
            training.pk, 0.4, f"Embedding {len(examples)} prompts with {router.embedding_deployment}."
        )
        embedder = embed or gateway_embedder(router.organization_id, router.embedding_deployment)
        texts = [e.text for e in train + heldout]

        def on_batch(done: int) -> None:
            report_progress(
                training.pk, 0.4 + 0.4 * done / len(texts), f"Embedded {done} of {len(texts)} prompts."
            )

        vectors = embed_all(embedder, texts, on_batch)
        report_progress(training.pk, 0.85, "Training the semantic predictor.")
        semantic = predictors.SemanticPredictor.fit(
            candidates, vectors[: len(train)], np.array([e.targets for e in train])
        )
        held_vectors = vectors[len(train) :]
        semantic_report = router_report.build(
            candidates=candidates, true=true, predicted=semantic.predict_many(held_vectors),
            call_costs=spent, costs_per_1k=costs_per_1k, fallback=fallback, tau=router.quality_difference,
        )  # fmt: skip
        semantic_report.update(
            common, kind=PredictorKind.SEMANTIC,
            decision_ms=decision_ms(lambda i: semantic.predict("", held_vectors[i]), len(heldout)),
        )  # fmt: skip
        written.append(write_version(training, PredictorKind.SEMANTIC, semantic, semantic_report))
        note = ""
    summary = "; ".join(
        f"v{version.version} {version.kind}: {percent(version.report['at_tau']['quality_retained'])} of the "
        f"fallback's quality for {percent(version.report['at_tau']['cost_saved'])} less cost"
        for version in written
    )
    return (
        f"Trained on {len(train)} prompts, measured on {len(heldout)} held out at τ "
        f"{percent(router.quality_difference)}: {summary}{'; ' + note if note else ''}. "
        "Activate a version to route with it."
    )


def percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value * 100:.1f}%"


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end from this (sync) thread, then let the gateway's metering finish and
    close the loop's HTTP clients, as learning.evaluations.run_blocking does."""
    from serving.gateway import pipeline, upstream

    async def main() -> Any:
        try:
            return await coroutine
        finally:
            await pipeline.drain()
            await upstream.close_clients()

    return asyncio.run(main())


def run(training_id: int, embed: Embed | None = None) -> str:
    """Run (or take over) a training as described in the module's docstring; returns its final status,
    or "" when this run did not hold it. Idempotent: a finished training is left alone."""
    training = claim(training_id)
    if training is None:
        return ""
    try:
        message = _train(training, embed)
    except TrainingFailed as error:
        finish(training_id, TrainingStatus.FAILED, str(error))
        return TrainingStatus.FAILED
    except Exception:
        log.exception("router training %s failed", training_id)
        finish(
            training_id, TrainingStatus.FAILED,
            "The training stopped on an unexpected error (logged for the operators); start it again, "
            "and report it if it happens again.",
        )  # fmt: skip
        return TrainingStatus.FAILED
    finish(training_id, TrainingStatus.SUCCEEDED, message)
    return TrainingStatus.SUCCEEDED


def pending_samples(grace_seconds: int = PENDING_GRACE_SECONDS) -> list[int]:
    """Samples still unjudged after the grace: their task was lost, or gave up while the judge was
    unavailable."""
    since = timezone.now() - datetime.timedelta(seconds=grace_seconds)
    return list(
        RouterSample.objects.filter(status=SampleStatus.PENDING, created_at__lt=since)
        .order_by("created_at")
        .values_list("pk", flat=True)[:500]
    )


def unattended(pending_grace_seconds: int = 600) -> list[int]:
    """Trainings no live worker holds: RUNNING with a lapsed lease, or PENDING past the grace."""
    now = timezone.now()
    lapsed = Q(status=TrainingStatus.RUNNING) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    waiting = Q(status=TrainingStatus.PENDING) & Q(
        created_at__lt=now - datetime.timedelta(seconds=pending_grace_seconds)
    )
    return list(RouterTraining.objects.filter(lapsed | waiting).values_list("pk", flat=True)[:100])


# --- Judging samples ---------------------------------------------------------------------------------------

JUDGE_BOUNDS = scorers.BOUNDS[scorers.ScorerKind.JUDGE]


class JudgeUnavailable(ConnectionError):
    """The judge deployment could not answer for now (busy, not ready, an engine error): the sample
    stays pending and is judged on a retry, rather than failing an answer the shadow call paid for.
    A ConnectionError, which the judging task retries."""


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


async def judge_sample(
    sample: RouterSample, router: Router, invoke: scorers.Ask
) -> tuple[dict[str, Any], dict[str, str], str]:
    """(scores, notes, status) of one sample: each answer judged, its 1–10 verdict normalised to 0..1.
    JudgeUnavailable when the judge answered 429 or 5xx."""
    judge = scorers.Judge("judge", router.judge_deployment, router.judge_rubric or scorers.DEFAULT_RUBRIC)
    scores: dict[str, Any] = {}
    notes: dict[str, str] = {}

    async def ask(route: str, payload: dict[str, Any]) -> tuple[int, Any]:
        status, answer = await invoke(route, payload)
        if _transient(status):
            raise JudgeUnavailable(
                f"The judge deployment {router.judge_deployment} answered {status}: "
                f"{scorers.error_text(answer)}; the sample is judged again later."
            )
        return status, answer

    for name, answer in sample.answers.items():
        if int(answer.get("status") or 0) != 200 or not isinstance(answer.get("text"), str):
            scores[name], notes[name] = None, "The deployment did not answer."
            continue
        item = scorers.Item([{"role": "user", "content": sample.prompt}], None, answer["text"])
        verdict = await judge.score(item, ask)
        scores[name] = None if verdict.value is None else round(normalise(verdict.value, JUDGE_BOUNDS), 4)
        if verdict.note:
            notes[name] = verdict.note
    status = SampleStatus.SCORED if any(v is not None for v in scores.values()) else SampleStatus.FAILED
    return scores, notes, status


def score_samples(sample_ids: list[int], invoke: scorers.Ask | None = None) -> int:
    """Judge the pending samples among `sample_ids` with their router's judge (through the gateway as
    the organisation, unless `invoke` is given); returns how many were scored. A router without a judge
    leaves its samples FAILED, saying so. Only a pending sample is written, so a re-run changes nothing.
    JudgeUnavailable (after the samples judged before it are written) when the judge cannot answer for
    now: the rest stay pending for the task's retry, or the periodic resume."""
    samples = list(
        RouterSample.objects.filter(pk__in=sample_ids, status=SampleStatus.PENDING).select_related("router")
    )
    scored = 0
    for sample in samples:
        router = sample.router
        if not router.judge_deployment:
            fields: dict[str, Any] = {
                "status": SampleStatus.FAILED,
                "notes": {"": "The router names no judge deployment; set judge_deployment to score samples."},
            }
        else:
            ask = invoke or gateway_invoker(router.organization_id)
            scores, notes, status = run_async(judge_sample(sample, router, ask))
            fields = {"scores": scores, "notes": notes, "status": status}
            scored += status == SampleStatus.SCORED
        RouterSample.objects.filter(pk=sample.pk, status=SampleStatus.PENDING).update(**fields)
    return scored
