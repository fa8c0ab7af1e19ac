"""Running a tuning job: each step does its work and moves the job on; a resumed job redoes nothing done.

`run(job_id)` (the Celery task's body):
1. Claims the job (learning.tuning.claim): a second delivery while a live worker holds the lease stops.
2. GENERATING: the teacher answers every record of the dataset (train and held-out) through the gateway's
   own path as the organisation (learning.evaluations.gateway_invoker: rate limits, budget and metering
   apply), at most `concurrency` at once. Each answer is a TuningAnswer row written once, so a resumed
   generation asks only for the records without one.
3. TRAINING: the train rows (the student's prompt, the teacher's answer or the reference) are written to
   the job's folder and the CPU trainer runs there (learning.training.runner), or, for a job with a GPU
   instance type, a training Job runs on the cluster (learning.tuning_kube, the same interface). Loss
   points and progress are saved per step. A run started again resumes from its last checkpoint; an
   adapter already written whole is not trained again. The GPUs a Job held are given back as it ends.
4. EVALUATING: the student (base + adapter) and the base alone answer the held-out prompts on CPU (a
   cluster's Job answered them on its GPU already), and learning.tuning_eval scores them with the
   teacher's answers. Kept in `evaluation`; not redone.
5. REGISTERING: the adapter becomes a custom model (catalog.custom_models.register_adapter) under the
   job's row lock, and the job points at it in the same transaction: a job that already points at one
   never registers another.
Between and within steps the lease is renewed conditionally on the status: a cancel stops the step (the
trainer keeps its checkpoint). A failure a person must fix ends the job FAILED with the reason in words.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.utils import timezone
from rest_framework import exceptions

from learning import datasets, evaluations, results, scorers, tuning, tuning_eval
from learning.choices import DatasetPart
from learning.models import TuningAnswer, TuningJob, TuningKind, TuningStatus
from learning.storage import get_store
from learning.training.runner import CANCELLED, FAILED, SUCCEEDED, CpuTraining
from learning.training.spec import TrainingSpec
from learning.tuning_kube import KubernetesTraining
from marketplace.catalog import custom_models
from marketplace.catalog.models import InstanceType
from serving.choices import DeploymentStatus
from serving.models import Deployment

log = logging.getLogger(__name__)

T = TypeVar("T")
RENEW_SECONDS = 5
# A teacher that fails more than this share of its calls is not distilled from.
MAX_TEACHER_FAILURES = 0.2

Training = Callable[..., CpuTraining]  # CpuTraining's constructor, or a stand-in with its interface


class StepFailed(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Postponed(Exception):
    """The step waits on something outside that should come back (the object store): the job keeps its
    step, says why, and a worker takes it up again once its lease lapses (learning.tasks.resume_tuning_jobs,
    every minute)."""


POSTPONE_SECONDS = 60


@dataclasses.dataclass
class Parts:
    """What the steps need of the outside world; tests replace one part at its seam."""

    invoke: evaluations.Invoke | None = None
    training: Training = CpuTraining
    cluster: Callable[..., KubernetesTraining] = KubernetesTraining
    answer_locally: tuning_eval.AnswerLocally = tuning_eval.answer_locally


def run(job_id: int, parts: Parts | None = None) -> str:
    """Run (or resume) the job as the module's docstring says; its status at the end, or "" when this
    run did not hold it."""
    parts = parts or Parts()
    job = tuning.claim(job_id)
    if job is None:
        return ""
    steps = {
        TuningStatus.GENERATING: generate,
        TuningStatus.TRAINING: train,
        TuningStatus.EVALUATING: evaluate,
        TuningStatus.REGISTERING: register,
    }
    try:
        while job.status in steps:
            status = job.status
            if not steps[TuningStatus(status)](job, parts):
                break  # cancelled, or the lease lost: whoever holds the job now decides
            job.refresh_from_db()
            if job.status == status:
                break
    except StepFailed as error:
        tuning.fail(job_id, str(error), error.reason)
    except Postponed as error:
        log.warning("tuning job %s waits: %s", job_id, error)
        lease = timezone.now() + datetime.timedelta(seconds=POSTPONE_SECONDS)
        TuningJob.objects.filter(pk=job_id, status=job.status).update(
            status_message=str(error), lease_until=lease
        )
    except Exception as error:  # one bad job must not crash-loop a worker: it fails with the reason
        log.exception("tuning job %s failed", job_id)
        message = f"The job stopped on an unexpected error ({type(error).__name__}: {error})"
        tuning.fail(job_id, message[:2000], "error")
    return str(TuningJob.objects.values_list("status", flat=True).get(pk=job_id))


def advance(job: TuningJob, target: str, message: str, **fields: Any) -> bool:
    """The job from its current step to `target` (with a fresh lease), only if still at that step."""
    lease = timezone.now() + _lease()
    return tuning.move(job.pk, (job.status,), target, message, lease_until=lease, **fields)


def _lease() -> datetime.timedelta:
    return datetime.timedelta(seconds=tuning.LEASE_SECONDS)


def records_of(job: TuningJob) -> list[dict[str, Any]]:
    try:
        return datasets.load_part(get_store(), job.dataset, DatasetPart.ALL)
    except datasets.RecordsUnavailable as error:
        raise StepFailed(str(error), "bad_data") from None


# --- 2. The teacher answers -------------------------------------------------------------------------------


def teacher_payload(job: TuningJob, record: dict[str, Any]) -> dict[str, Any]:
    messages = list(record["messages"])
    if job.teacher_instructions:
        messages = [{"role": "system", "content": job.teacher_instructions}, *messages]
    return {
        "model": job.teacher_deployment,
        "messages": messages,
        "max_tokens": job.max_tokens,
        "temperature": 0,
    }


async def _teacher_answers(job: TuningJob, records: list[dict[str, Any]], invoke: evaluations.Invoke) -> bool:
    """Answer the records not yet answered; False when the job stopped being this worker's meanwhile."""
    done = await sync_to_async(
        lambda: set(TuningAnswer.objects.filter(job=job).values_list("record_id", flat=True))
    )()
    work = asyncio.Queue[dict[str, Any]]()
    for record in records:
        if record["id"] not in done:
            work.put_nowait(record)
    total, stopped = len(records), asyncio.Event()
    count = {"done": len(done)}

    async def worker() -> None:
        while not stopped.is_set():
            try:
                record = work.get_nowait()
            except asyncio.QueueEmpty:
                return
            began = time.monotonic()
            try:
                status, body = await invoke("chat.completions", teacher_payload(job, record))
            except Exception as raised:  # an answer that cannot be had is stored as an error; the rest go on
                log.exception("tuning job %s: record %s", job.pk, record["id"])
                status, body = 500, {"error": {"message": type(raised).__name__}}
            usage = body.get("usage") or {}
            text = datasets.answer_text(body) if status == 200 else None
            text = evaluations.without_nul(text)  # PostgreSQL stores no NUL, and an engine may answer one
            error = "" if text is not None else f"{status}: {scorers.error_text(body)}"
            row = TuningAnswer(
                job=job, record_id=record["id"], part=record["split"], status_code=status, error=error[:2000],
                answer=text or "", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                latency_ms=round((time.monotonic() - began) * 1000),
            )  # fmt: skip
            await sync_to_async(TuningAnswer.objects.bulk_create)([row], ignore_conflicts=True)
            count["done"] += 1

    async def keep_lease() -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            progress = {"done": count["done"], "total": total}
            held = await sync_to_async(_renew_with_progress)(job.pk, TuningStatus.GENERATING, progress)
            if not held:
                stopped.set()
                return

    lease = asyncio.create_task(keep_lease())
    try:
        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
    finally:
        lease.cancel()
    return not stopped.is_set() and await sync_to_async(_renew_with_progress)(
        job.pk, TuningStatus.GENERATING, {"done": count["done"], "total": total}
    )


def _renew_with_progress(job_id: int, status: str, progress: dict[str, int]) -> bool:
    until = timezone.now() + _lease()
    return bool(
        TuningJob.objects.filter(pk=job_id, status=status).update(lease_until=until, progress=progress)
    )


def on_the_gateway(
    job: TuningJob, invoke: evaluations.Invoke | None, work: Callable[[evaluations.Invoke], Awaitable[T]]
) -> T:
    """`work` on an event loop of its own, calling through the gateway's own path as the organisation
    (or `invoke`); the gateway's metering in flight is awaited before the loop goes, so every call's tokens
    reach the organisation's usage."""
    from serving.gateway import pipeline, upstream

    async def main() -> T:
        try:
            return await work(invoke or evaluations.gateway_invoker(job.organization_id))
        finally:
            await pipeline.drain()
            await upstream.close_clients()
            await sync_to_async(connections.close_all)()

    return asyncio.run(main())


def _answer_all(job: TuningJob, records: list[dict[str, Any]], invoke: evaluations.Invoke | None) -> bool:
    """The teacher's answers (False when the job stopped being this worker's meanwhile)."""
    return on_the_gateway(job, invoke, lambda ask: _teacher_answers(job, records, ask))


def generate(job: TuningJob, parts: Parts) -> bool:
    records = records_of(job)
    if not _answer_all(job, records, parts.invoke):
        return False
    answers = list(TuningAnswer.objects.filter(job=job))
    failed = [answer for answer in answers if answer.error]
    train_ok = sum(1 for answer in answers if not answer.error and answer.part == DatasetPart.TRAIN)
    heldout_ok = sum(1 for answer in answers if not answer.error and answer.part == DatasetPart.HELDOUT)
    if len(failed) > MAX_TEACHER_FAILURES * len(answers) or not train_ok or not heldout_ok:
        raise StepFailed(
            f"The teacher {job.teacher_deployment} failed {len(failed)} of {len(answers)} calls "
            f"(first: {failed[0].error if failed else 'none'}); fix the deployment and start a new job.",
            "teacher",
        )
    tokens = sum(answer.prompt_tokens + answer.completion_tokens for answer in answers)
    note = f" ({len(failed)} calls failed and are left out)" if failed else ""
    return advance(
        job, TuningStatus.TRAINING,
        f"The teacher answered {len(answers) - len(failed)} prompts with {tokens:,} tokens{note}; training.",
        progress={},
    )  # fmt: skip


# --- 3. Training --------------------------------------------------------------------------------------------


def training_rows(job: TuningJob, records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """{prompt, answer} rows of the train part, in the dataset's order (the same on every resume)."""
    taught = {}
    if job.kind == TuningKind.DISTILLATION:
        taught = dict(
            TuningAnswer.objects.filter(job=job, part=DatasetPart.TRAIN, error="").values_list(
                "record_id", "answer"
            )
        )
    rows = []
    for record in records:
        if record["split"] != DatasetPart.TRAIN:
            continue
        answer = taught.get(record["id"]) if job.kind == TuningKind.DISTILLATION else record.get("reference")
        prompt = tuning.student_prompt(record)
        if answer and answer.strip() and prompt:
            rows.append({"prompt": prompt, "answer": answer})
    return rows


def run_of(job: TuningJob, parts: Parts) -> CpuTraining | KubernetesTraining:
    folder = Path(job.work_dir)
    if job.on_cluster:
        return parts.cluster(folder / "run", job=job, data=folder / "train.jsonl")
    base = tuning.student_weights(job.student_base)
    if base is None:
        raise StepFailed(f"{job.student_base.name}'s weights are no longer on this machine.", "bad_run")
    return parts.training(
        folder / "run", base_model=base, data=folder / "train.jsonl",
        spec=TrainingSpec.from_dict(job.hyperparameters),
    )  # fmt: skip


def _finished_whole(run: CpuTraining | KubernetesTraining) -> bool:
    events = run.events()
    return (
        bool(events) and events[-1].get("event") == "done" and (run.adapter / "adapter_config.json").is_file()
    )


def train(job: TuningJob, parts: Parts) -> bool:
    if not job.work_dir:
        job.work_dir = str(tuning.work_dir_for(job))
        TuningJob.objects.filter(pk=job.pk).update(work_dir=job.work_dir)
    folder = Path(job.work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    run = run_of(job, parts)
    if not _finished_whole(run):
        rows = training_rows(job, records_of(job))
        if not rows:
            raise StepFailed("No train record has an answer to learn.", "bad_data")
        (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        points = {int(step): loss for step, loss in job.loss_points}
        state = {"total": job.total_steps}

        def on_progress(event: dict[str, Any]) -> None:
            if event.get("event") == "waiting":  # a training Job's pod that has not started, and why
                TuningJob.objects.filter(pk=job.pk, status=TuningStatus.TRAINING).update(
                    status_message=str(event["message"])
                )
            if event.get("event") in ("start", "step") and event.get("total_steps"):
                state["total"] = int(event["total_steps"])
            if event.get("event") != "step":
                return
            points[int(event["step"])] = float(event["loss"])
            TuningJob.objects.filter(pk=job.pk, status=TuningStatus.TRAINING).update(
                loss_points=[[step, points[step]] for step in sorted(points)], total_steps=state["total"],
                progress={"done": int(event["step"]), "total": state["total"],
                          "tokens_per_second": event.get("tokens_per_second"),
                          "peak_rss_bytes": event.get("peak_rss_bytes")},
            )  # fmt: skip

        run.start()
        try:
            while True:
                try:
                    outcome = run.wait(timeout=RENEW_SECONDS, on_progress=on_progress)
                    break
                except TimeoutError:
                    if not tuning.renew(job.pk, TuningStatus.TRAINING):
                        run.cancel(grace=60)
                        return False
        finally:
            run.stop()
        if outcome.status == FAILED:
            raise StepFailed(outcome.message, outcome.reason or "error")
        if outcome.status == CANCELLED or outcome.status != SUCCEEDED:
            return False  # stopped from outside: the lease lapses and a resume continues from the checkpoint
    events = [event for event in run.events() if event.get("event") == "done"]
    done = events[-1] if events else {}
    return advance(
        job, TuningStatus.EVALUATING,
        f"Trained {done.get('step', job.total_steps)} steps (loss {done.get('first_loss')} → "
        f"{done.get('last_loss')}); the student, teacher and base answer the held-out part.",
        progress={}, reserved_gpus=0,
    )  # fmt: skip


# --- 4. Evaluating -----------------------------------------------------------------------------------------


def evaluate(job: TuningJob, parts: Parts) -> bool:
    if not job.evaluation:
        heldout = [record for record in records_of(job) if record["split"] == DatasetPart.HELDOUT]
        prompts = [str(tuning.student_prompt(record)) for record in heldout]
        run = run_of(job, parts)
        if isinstance(run, KubernetesTraining):  # the Job answered on its GPU
            made = run.answers()
            student, untrained = tuning_eval.answered(made["student"]), list(made["base"]["answers"])
        else:
            answered = _answer_here(job, parts, run.adapter, prompts)
            if answered is None:
                return False
            student, untrained = answered
        teacher: list[str] | None = None
        teacher_tokens: list[int] = []
        if job.kind == TuningKind.DISTILLATION:
            answers = {a.record_id: a for a in TuningAnswer.objects.filter(job=job, part=DatasetPart.HELDOUT)}
            teacher = [answers[r["id"]].answer if r["id"] in answers else "" for r in heldout]
            teacher_tokens = [answers[r["id"]].prompt_tokens for r in heldout if r["id"] in answers]
        job.evaluation = tuning_eval.report(
            references=[record.get("reference") for record in heldout], teacher=teacher,
            student=student.answers, base=untrained, teacher_prompt_tokens=teacher_tokens,
            student_prompt_tokens=student.prompt_tokens,
        )  # fmt: skip
        job.evaluation["costs"] = tuning_eval.cost_report(_teacher_cost(job), _student_cost(job, student))
        if job.scorers:  # the chosen scorers, against the same truth as the task scorers
            by_reference = job.evaluation["truth"] == "reference"
            truths = [str(r.get("reference") or "") for r in heldout] if by_reference else list(teacher or [])
            by_model = {
                "student": student.answers,
                "base": untrained,
                **({"teacher": teacher} if teacher else {}),
            }
            job.evaluation["scorers"] = on_the_gateway(
                job, parts.invoke, lambda ask: _scored(job, prompts, truths, by_model, ask)
            )
        held = TuningJob.objects.filter(pk=job.pk, status=TuningStatus.EVALUATING).update(
            evaluation=job.evaluation, progress={"done": 2 * len(prompts), "total": 2 * len(prompts)}
        )
        if not held:
            return False
    return advance(
        job, TuningStatus.REGISTERING,
        f"Evaluated: {tuning_eval.summary(job.evaluation)}; registering the adapter as {job.name}.",
    )  # fmt: skip


async def _scored(
    job: TuningJob,
    prompts: list[str],
    truths: list[str],
    answers: dict[str, list[str]],
    ask: evaluations.Invoke,
) -> dict[str, dict[str, Any]]:
    """The scorers the job names, on every model's held-out answers (the judge and similarity through the
    gateway, metered): {model: {scorer: mean and interval}}, as an evaluation summarises them."""
    built = scorers.build(job.scorers)
    bound = asyncio.Semaphore(job.concurrency)

    async def one(scorer: scorers.Scorer, item: scorers.Item) -> float | None:
        async with bound:
            try:
                return (await scorer.score(item, ask)).value
            except Exception:  # one unscorable answer is counted as unscored; the rest go on
                log.exception("tuning job %s: scorer %s", job.pk, scorer.name)
                return None

    async def keep_lease() -> None:  # a judge may take longer than a lease; a cancel is seen at the end
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            await sync_to_async(tuning.renew)(job.pk, TuningStatus.EVALUATING)

    lease = asyncio.create_task(keep_lease())
    try:
        return await _score_models(built, answers, prompts, truths, one)
    finally:
        lease.cancel()


async def _score_models(
    built: list[scorers.Scorer],
    answers: dict[str, list[str]],
    prompts: list[str],
    truths: list[str],
    one: Callable[[scorers.Scorer, scorers.Item], Awaitable[float | None]],
) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for model, texts in answers.items():
        items = [
            scorers.Item(messages=[{"role": "user", "content": prompt}], reference=truth, answer=text)
            for prompt, truth, text in zip(prompts, truths, texts, strict=True)
        ]
        report[model] = {}
        for scorer in built:
            values = await asyncio.gather(*(one(scorer, item) for item in items))
            report[model][scorer.name] = results.score_summary(
                values, scorer.binary, scorers.BOUNDS[scorer.kind]
            )
    return report


def _teacher_cost(job: TuningJob) -> dict[str, Any] | None:
    """What the teacher's tokens cost while it answered this job: its deployment's instance price (all
    its replicas) over the time its calls were in flight, as an evaluation measures a deployment."""
    if job.kind != TuningKind.DISTILLATION:
        return None
    deployment = (
        Deployment.objects.filter(organization_id=job.organization_id, name=job.teacher_deployment)
        .exclude(status=DeploymentStatus.DELETED)
        .select_related("instance_type")
        .first()
    )
    answers = list(TuningAnswer.objects.filter(job=job, error=""))
    if deployment is None or not answers:
        return None
    busy = results.busy_seconds(
        (answer.created_at - datetime.timedelta(milliseconds=answer.latency_ms), answer.created_at)
        for answer in answers
    )
    return tuning_eval.cost_side(
        instance=deployment.instance_type.name,
        hourly_usd=float(deployment.instance_type.hourly_price_usd) * max(1, deployment.desired_replicas),
        busy_seconds=busy, tokens=sum(a.prompt_tokens + a.completion_tokens for a in answers),
        calls=len(answers), estimate=False,
    )  # fmt: skip


def _student_cost(job: TuningJob, student: tuning_eval.Answered) -> dict[str, Any]:
    """An estimate of what the student's tokens cost before it is deployed: the price of the instance
    type it answered on (the Job's, or this machine's CPU type) over the time it took to answer the
    held-out prompts one at a time with transformers. vLLM batches, so a deployment costs less."""
    instance = (
        job.instance_type or InstanceType.objects.filter(gpu_count=0).order_by("hourly_price_usd").first()
    )
    return tuning_eval.cost_side(
        instance=instance.name if instance else "this machine",
        hourly_usd=float(instance.hourly_price_usd) if instance else 0.0,
        busy_seconds=student.seconds, tokens=sum(student.prompt_tokens) + sum(student.completion_tokens),
        calls=len(student.answers), estimate=True,
    )  # fmt: skip


def _answer_here(
    job: TuningJob, parts: Parts, adapter: Path, prompts: list[str]
) -> tuple[tuning_eval.Answered, list[str]] | None:
    """The student's and the untrained base's answers on this machine's CPU; None when cancelled."""
    base = tuning.student_weights(job.student_base)
    if base is None:
        raise StepFailed(f"{job.student_base.name}'s weights are no longer on this machine.", "bad_run")

    def wanted() -> bool:
        return tuning.renew(job.pk, TuningStatus.EVALUATING)

    try:
        TuningJob.objects.filter(pk=job.pk).update(progress={"done": 0, "total": 2 * len(prompts)})
        student = parts.answer_locally(base, adapter, prompts, job.max_tokens, wanted)
        TuningJob.objects.filter(pk=job.pk).update(progress={"done": len(prompts), "total": 2 * len(prompts)})
        untrained = parts.answer_locally(base, None, prompts, job.max_tokens, wanted).answers
    except tuning_eval.Stopped:
        return None
    except tuning_eval.GenerationFailed as error:
        raise StepFailed(str(error), error.reason) from None
    return student, untrained


# --- 5. Registering ----------------------------------------------------------------------------------------


def point_adapter_at_base(adapter: Path, job: TuningJob) -> None:
    """A catalog base is named by its repository (what register_adapter and the engine check), not by the
    folder the trainer read it from; a custom model's folder is its own name already."""
    card = job.student_base
    if card.organization_id is not None:
        return
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    if config.get("base_model_name_or_path") != card.huggingface_repo:
        config["base_model_name_or_path"] = card.huggingface_repo
        path.write_text(json.dumps(config, indent=2))


def register(job: TuningJob, parts: Parts) -> bool:
    """The adapter as the organisation's custom model. Its archive goes to the object store first, outside
    the job's row lock: a store out of reach postpones the step rather than failing a finished run."""
    adapter = run_of(job, parts).adapter
    archive_key = ""
    if job.custom_model_id is None:
        point_adapter_at_base(adapter, job)
        try:
            archive_key = custom_models.keep_adapter_files(job.organization, job.name, adapter)
        except custom_models.FilesNotKept:
            raise Postponed(
                "The trained adapter waits for the platform's object store; registering it again in a minute."
            ) from None
    kept = False
    try:
        with transaction.atomic():
            locked = TuningJob.objects.select_for_update().get(pk=job.pk)
            if locked.status != TuningStatus.REGISTERING:
                return False
            if locked.custom_model_id is None:
                summary = f"Made by tuning job {job.pk} from {job.dataset}"
                if job.kind == TuningKind.DISTILLATION:
                    summary += f", taught by {job.teacher_deployment}"
                summary += f": {tuning_eval.summary(job.evaluation)}."
                try:
                    custom = custom_models.register_adapter(
                        organization=job.organization, user=job.created_by, name=job.name,
                        path=str(adapter), base=job.student_base, summary=summary[:1000], run_folder=True,
                        archive_key=archive_key,
                    )  # fmt: skip
                except exceptions.ValidationError as error:
                    raise StepFailed(
                        f"The adapter could not be registered: {_first_error(error)}", "bad_run"
                    ) from None
                locked.custom_model = custom
                locked.save(update_fields=["custom_model"])
                kept = True
            percent = job.evaluation.get("student_percent_of_teacher")
            words = f" at {percent:g}% of the teacher's quality" if percent is not None else ""
            return tuning.move(
                job.pk, (TuningStatus.REGISTERING,), TuningStatus.SUCCEEDED,
                f"Registered as the custom model {job.name}{words}; deploy it like any model.",
                finished_at=timezone.now(), lease_until=None,
            )  # fmt: skip
    finally:
        if archive_key and not kept:
            custom_models.forget_adapter_files(archive_key)  # registered by another worker, or refused


def _first_error(error: exceptions.ValidationError) -> str:
    detail = error.detail
    if isinstance(detail, dict):
        for field, problems in detail.items():
            return f"{field}: {problems[0] if isinstance(problems, list) else problems}"
    return str(detail)
