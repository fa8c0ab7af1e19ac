"""Running a tuning job step by step, fast: the teacher is the ticket task teacher (deterministic code, not
a model) deployed behind the gateway's own path over real HTTP, so its calls are metered like any; the
trainer's process and the student's CPU answers are replaced at their seams (learning.tuning_run.Parts)
by stand-ins that write what the real ones write (progress lines, a LoRA adapter's files). The real
training runs in test_tuning_end_to_end.py. What is checked here: every step in order with an event, a
resumed job redoing nothing finished (no teacher call twice, no second registration), cancel, and
failures in words."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from celery.exceptions import Retry
from django.utils import timezone

from learning import tasks, tuning, tuning_eval, tuning_run
from learning.models import Dataset, TuningAnswer, TuningJob, TuningStatus
from learning.storage import FolderStore, get_store
from learning.training import tickets
from learning.training.runner import CANCELLED, FAILED, SUCCEEDED, CpuTraining, Outcome
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog.models import CustomModel, InstanceType
from serving import tasks as serving_tasks
from serving.models import Deployment, UsageRecord
from tests.catalog.custom_model_files import write_adapter
from tests.conftest import make_user
from tests.learning.standin import StandIn, stand_in_engine
from tests.learning.ticket_teacher import TicketTeacher, ticket_dataset, ticket_teacher
from tests.serving.gateway.conftest import CHAT, deploy

pytestmark = pytest.mark.usefixtures("transactional_catalog")  # the teacher's calls read rows from threads

RECORDS = 8
STUDENT_SECONDS = 0.25  # a held-out answer of the stand-in student
LOSSES = (2.5, 1.2, 0.6)


class StandInTraining(CpuTraining):
    """The trainer's process replaced: start() writes the progress lines and adapter files the real
    trainer writes (cpu_trainer.py), and `mode` picks how the run ends."""

    mode: ClassVar[str] = "succeed"  # succeed | out_of_memory | cancelled_from_the_job | worker_dies
    starts: ClassVar[list[Path]] = []
    cancels: ClassVar[int] = 0

    def _line(self, event: str, **fields: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.progress_path.open("a") as handle:
            handle.write(json.dumps({"event": event, **fields}) + "\n")

    def start(self) -> None:
        StandInTraining.starts.append(self.folder)
        assert self.data.read_text().count("\n") > 0  # the rows were written before the trainer started
        self._line("start", step=0, total_steps=len(LOSSES))

    @property
    def running(self) -> bool:
        return False

    def wait(
        self, timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.5,
    ) -> Outcome:  # fmt: skip
        assert on_progress is not None
        for step, loss in enumerate(LOSSES, start=1):
            line = {"event": "step", "step": step, "total_steps": len(LOSSES), "loss": loss,
                    "tokens_per_second": 100.0, "peak_rss_bytes": 2**30}  # fmt: skip
            self._line(**line)
            on_progress(line)
            if self.mode == "cancelled_from_the_job":
                tuning.cancel_tuning_job(TuningJob.objects.get())  # a person presses Cancel mid-run
                raise TimeoutError
            if self.mode == "worker_dies" and step == 2:
                raise SystemExit("the worker was stopped")
        if self.mode == "out_of_memory":
            message = "Out of memory (the trainer had reached 2.4 GB): lower batch_size or max_seq_length."
            return Outcome(FAILED, message, reason="out_of_memory", step=1)
        write_adapter(self.adapter, str(self.base_model), rank=8)
        self._line("done", step=len(LOSSES), first_loss=LOSSES[0], last_loss=LOSSES[-1])
        return Outcome(SUCCEEDED, "Trained.", adapter=self.adapter, step=len(LOSSES))

    def cancel(self, grace: float = 60.0) -> Outcome:
        StandInTraining.cancels += 1
        return Outcome(CANCELLED, "Cancelled at step 1.", step=1)


@dataclass
class StudentAnswers:
    """The student's CPU answers replaced: the adapter answers as the teacher did, but for the last
    prompt (so it scores a little under the teacher); the base alone answers no JSON."""

    calls: int = 0

    def __call__(
        self,
        base: Path,
        adapter: Path | None,
        prompts: list[str],
        max_tokens: int,
        wanted: Callable[[], bool],
    ) -> tuning_eval.Answered:
        self.calls += 1
        assert (base / "config.json").is_file() and wanted()
        if adapter is None:
            refusals = ["I am sorry, I cannot help with that." for _ in prompts]
            return tuning_eval.Answered(refusals, [12] * len(prompts), [9] * len(prompts), 0.5 * len(prompts))
        assert (adapter / "adapter_config.json").is_file()
        answers = [tickets.teacher_answer(prompt) for prompt in prompts]
        answers[-1] = '{"category": "billing"}'
        prompt_tokens = [len(prompt.split()) for prompt in prompts]
        return tuning_eval.Answered(
            answers, prompt_tokens, [20] * len(prompts), STUDENT_SECONDS * len(prompts)
        )


@dataclass
class Setup:
    organization: Organization
    owner: Any
    dataset: Dataset
    student: StudentAnswers

    def parts(self) -> tuning_run.Parts:
        return tuning_run.Parts(training=StandInTraining, answer_locally=self.student)

    def create(self, **fields: Any) -> TuningJob:
        options: dict[str, Any] = {
            "name": "ticket-student", "kind": "distillation", "dataset_id": self.dataset.pk,
            "student_base": CHAT, "teacher_deployment": "teacher",
            "teacher_instructions": tickets.INSTRUCTIONS, **fields,
        }  # fmt: skip
        return tuning.create_tuning_job(organization=self.organization, user=self.owner, **options)


@pytest.fixture
def setup(
    configured_store: FolderStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> Iterator[Setup]:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # limits, usage and task messages of earlier tests
    student = tmp_path / "engine" / "models" / CHAT  # the student's weights, as `make engine` leaves them
    student.mkdir(parents=True)
    (student / "config.json").write_text("{}")
    monkeypatch.setenv("ENGINE_DIR", str(tmp_path / "engine"))
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path / "custom-models")]
    StandInTraining.mode, StandInTraining.starts, StandInTraining.cancels = "succeed", [], 0
    with ticket_teacher() as url:
        owner = make_user("tia")
        organization = account_services.create_organization(slug="tuners", name="Tuners", owner=owner)
        Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
        deploy(organization, "teacher", CHAT, url)
        dataset = ticket_dataset(configured_store, organization.pk, RECORDS, heldout_fraction=0.25)
        yield Setup(organization, owner, dataset, StudentAnswers())


def statuses(job: TuningJob) -> list[str]:
    return [event.status for event in job.events.all()]


def test_a_distillation_job_runs_every_step_in_order_and_registers_its_student(setup: Setup) -> None:
    job = setup.create()
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
    job.refresh_from_db()
    assert statuses(job) == ["queued", "generating", "training", "evaluating", "registering", "succeeded"]
    assert job.loss_points == [[1, 2.5], [2, 1.2], [3, 0.6]] and job.total_steps == 3
    assert job.custom_model is not None and job.custom_model.name == "ticket-student"
    assert job.custom_model.base is not None and job.custom_model.base.slug == CHAT
    assert job.status_message.startswith("Registered as the custom model ticket-student at ")
    assert job.finished_at is not None and job.lease_until is None


def test_the_teacher_answers_every_record_once_with_its_instructions_through_the_metered_gateway(
    setup: Setup,
) -> None:
    job = setup.create()
    tuning_run.run(job.pk, setup.parts())
    assert len(TicketTeacher.asked) == RECORDS
    assert all(
        messages[0] == {"role": "system", "content": tickets.INSTRUCTIONS} for messages in TicketTeacher.asked
    )
    answers = TuningAnswer.objects.filter(job=job)
    assert answers.count() == RECORDS and not answers.exclude(error="").exists()
    serving_tasks.flush_usage()
    assert UsageRecord.objects.filter(organization=setup.organization, model="teacher").count() == RECORDS


def test_the_student_learns_the_teachers_answers_without_the_instructions(setup: Setup) -> None:
    job = setup.create()
    tuning_run.run(job.pk, setup.parts())
    job.refresh_from_db()
    rows = [json.loads(line) for line in (Path(job.work_dir) / "train.jsonl").read_text().splitlines()]
    assert len(rows) == setup.dataset.train_records
    for row in rows:
        assert tickets.INSTRUCTIONS not in row["prompt"]
        assert row["answer"] == tickets.teacher_answer(row["prompt"])


def test_the_evaluation_scores_student_teacher_and_base_on_the_heldout_part(setup: Setup) -> None:
    job = setup.create()
    tuning_run.run(job.pk, setup.parts())
    job.refresh_from_db()
    report = job.evaluation
    assert report["records"] == setup.dataset.heldout_records == 2 and report["truth"] == "reference"
    models = report["models"]
    assert models["teacher"]["quality"] == 1.0  # the task teacher reads every ticket right
    assert models["base"]["json_validity"] == 0.0 and models["base"]["quality"] == 0.0
    assert models["student"]["json_validity"] == 1.0 and models["student"]["teacher_agreement"] == 0.5
    assert models["student"]["field_accuracy"]["priority"] == 0.5
    assert report["student_percent_of_teacher"] == round(100 * models["student"]["quality"], 1)
    assert report["prompt_tokens"]["saved_per_call"] > 100  # the instructions the student does without


def test_the_evaluation_sets_the_students_cost_beside_the_teachers(setup: Setup) -> None:
    """The teacher's cost is measured: its instance's price over the time its calls were in flight. The
    student's is an estimate from its held-out answers, priced at this machine's CPU instance type."""
    gpu = InstanceType.objects.get(slug="aws-g5-xlarge")
    Deployment.objects.filter(name="teacher").update(instance_type=gpu, desired_replicas=2)
    job = setup.create()
    tuning_run.run(job.pk, setup.parts())
    job.refresh_from_db()
    costs = job.evaluation["costs"]
    answers = list(TuningAnswer.objects.filter(job=job))
    assert all(answer.latency_ms > 0 for answer in answers)
    teacher = costs["teacher"]
    tokens = sum(answer.prompt_tokens + answer.completion_tokens for answer in answers)
    assert (teacher["instance_type"], teacher["hourly_usd"], teacher["tokens"]) == (
        "g5.xlarge",
        2 * 1.006,
        tokens,
    )
    assert (
        teacher["estimate"] is False
        and 0 < teacher["busy_seconds"] <= sum(a.latency_ms for a in answers) / 1000
    )
    # busy_seconds is kept to the millisecond, the cost from the exact time: up to half a millisecond apart
    shown = teacher["hourly_usd"] * teacher["busy_seconds"] / 3600 / tokens * 1000
    assert teacher["usd_per_1k_tokens"] == pytest.approx(shown, rel=0.0005 / teacher["busy_seconds"] + 1e-5)
    assert teacher["usd_per_call"] == pytest.approx(
        teacher["usd_per_1k_tokens"] * tokens / len(answers) / 1000, rel=1e-3
    )
    student = costs["student"]
    heldout = setup.dataset.heldout_records
    assert student["estimate"] is True and student["busy_seconds"] == STUDENT_SECONDS * heldout
    assert (
        student["instance_type"]
        == InstanceType.objects.filter(gpu_count=0).order_by("hourly_price_usd")[0].name
    )
    assert student["tokens_per_call"] < teacher["tokens_per_call"]  # no instructions in its prompt
    assert costs["student_throughput_ratio"] == round(
        student["tokens_per_second"] / teacher["tokens_per_second"], 2
    )


def test_a_fine_tuning_job_has_no_teacher_to_price(setup: Setup) -> None:
    job = setup.create(kind="fine-tuning", teacher_deployment="", teacher_instructions="")
    tuning_run.run(job.pk, setup.parts())
    job.refresh_from_db()
    assert set(job.evaluation["costs"]) == {"student"}


def test_the_scorers_a_job_names_score_every_models_heldout_answers_through_the_metered_gateway(
    setup: Setup,
) -> None:
    with stand_in_engine() as url:
        deploy(setup.organization, "judge", CHAT, url)
        specs = [
            {"kind": "judge", "deployment": "judge"},
            {"kind": "regex", "pattern": "^\\{", "name": "json-like"},
        ]
        job = setup.create(scorer_specs=specs)
        assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
        judged = [prompt for prompt in StandIn.prompts if "Rate the assistant's answer" in prompt]
    job.refresh_from_db()
    chosen = job.evaluation["scorers"]
    heldout = setup.dataset.heldout_records
    assert set(chosen) == {"teacher", "student", "base"}
    assert len(judged) == 3 * heldout  # every model's every held-out answer, once
    for model in chosen:
        assert chosen[model]["judge"]["mean"] == 7.0 and chosen[model]["judge"]["scored"] == heldout
    assert chosen["teacher"]["json-like"]["mean"] == 1.0 and chosen["base"]["json-like"]["mean"] == 0.0
    serving_tasks.flush_usage()
    assert UsageRecord.objects.filter(organization=setup.organization, model="judge").count() == 3 * heldout


@pytest.mark.parametrize(
    ("specs", "field", "words"),
    [
        ([{"kind": "judge", "deployment": "nowhere"}], "scorers", "No deployment named nowhere"),
        ([{"kind": "telepathy"}], "scorers[0].kind", ""),
        ({"kind": "judge"}, "scorers", ""),
    ],
)
def test_a_scorer_that_cannot_run_is_refused_and_nothing_is_written(
    setup: Setup, specs: Any, field: str, words: str
) -> None:
    with pytest.raises(tuning.Refused) as refused:
        setup.create(scorer_specs=specs)
    assert refused.value.field == field and words in str(refused.value)
    assert not TuningJob.objects.exists()


def test_running_a_finished_job_again_changes_nothing(setup: Setup) -> None:
    job = setup.create()
    tuning_run.run(job.pk, setup.parts())
    assert tuning_run.run(job.pk, setup.parts()) == ""  # nothing to hold
    assert TuningJob.objects.get().status == TuningStatus.SUCCEEDED
    assert len(TicketTeacher.asked) == RECORDS and len(StandInTraining.starts) == 1
    assert CustomModel.objects.count() == 1


def test_a_second_delivery_while_a_worker_holds_the_job_does_nothing(setup: Setup) -> None:
    job = setup.create()
    assert tuning.claim(job.pk) is not None  # another worker holds it
    assert tuning_run.run(job.pk, setup.parts()) == ""
    assert TicketTeacher.asked == [] and StandInTraining.starts == []


def lapse_lease(job: TuningJob) -> None:
    TuningJob.objects.filter(pk=job.pk).update(lease_until=timezone.now() - datetime.timedelta(seconds=1))


def test_a_worker_lost_mid_training_is_resumed_without_asking_the_teacher_again(setup: Setup) -> None:
    job = setup.create()
    StandInTraining.mode = "worker_dies"
    with pytest.raises(SystemExit):
        tuning_run.run(job.pk, setup.parts())
    job.refresh_from_db()
    assert job.status == TuningStatus.TRAINING and job.loss_points == [[1, 2.5], [2, 1.2]]  # saved as it went
    assert tuning.unattended() == []  # its lease still runs
    lapse_lease(job)
    assert tuning.unattended() == [job.pk]
    StandInTraining.mode = "succeed"
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
    assert len(TicketTeacher.asked) == RECORDS  # no record answered twice
    job.refresh_from_db()
    assert StandInTraining.starts == [Path(job.work_dir) / "run"] * 2
    assert "Resumed training where the last worker stopped." in [e.message for e in job.events.all()]


def test_a_job_that_registered_its_student_before_the_worker_died_registers_no_second_one(
    setup: Setup,
) -> None:
    job = setup.create()
    tuning_run.run(job.pk, setup.parts())
    # the state a worker killed between registering and the final move leaves: the row points at the model
    TuningJob.objects.filter(pk=job.pk).update(status=TuningStatus.REGISTERING, lease_until=None)
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
    assert CustomModel.objects.count() == 1
    assert setup.student.calls == 2 and len(StandInTraining.starts) == 1  # no step before it redone


def test_running_out_of_memory_fails_the_job_in_plain_words(setup: Setup) -> None:
    job = setup.create()
    StandInTraining.mode = "out_of_memory"
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.FAILED
    job.refresh_from_db()
    assert job.failure_reason == "out_of_memory"
    assert job.status_message.startswith("Out of memory") and "lower batch_size" in job.status_message
    assert not CustomModel.objects.exists()


def test_cancelling_during_training_stops_the_trainer(setup: Setup) -> None:
    job = setup.create()
    StandInTraining.mode = "cancelled_from_the_job"
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.CANCELLED
    assert StandInTraining.cancels == 1
    job.refresh_from_db()
    assert job.status_message == "Cancelled while training." and setup.student.calls == 0
    assert not CustomModel.objects.exists()


def test_a_failing_teacher_fails_the_job_before_any_training(setup: Setup) -> None:
    job = setup.create()
    TicketTeacher.fail = True
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.FAILED
    job.refresh_from_db()
    assert job.failure_reason == "teacher" and "failed 8 of 8 calls" in job.status_message
    assert StandInTraining.starts == []


def test_a_fine_tuning_job_learns_the_references_without_a_teacher(setup: Setup) -> None:
    job = setup.create(kind="fine-tuning", teacher_deployment="", teacher_instructions="")
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
    job.refresh_from_db()
    assert statuses(job) == ["queued", "training", "evaluating", "registering", "succeeded"]
    assert TicketTeacher.asked == []
    rows = [json.loads(line) for line in (Path(job.work_dir) / "train.jsonl").read_text().splitlines()]
    assert all(json.loads(row["answer"]).keys() == {"category", "priority", "product"} for row in rows)
    assert "teacher" not in job.evaluation["models"] and "student_percent_of_teacher" not in job.evaluation


def test_the_task_delivered_while_a_lease_holds_the_job_looks_again_later(setup: Setup) -> None:
    """A killed worker's task is redelivered at once, while its lease still runs: it must not be dropped."""
    job = setup.create()
    assert tuning.claim(job.pk) is not None  # the killed worker's lease
    with pytest.raises(Retry):
        tasks.run_tuning_job(job.pk)
    tuning.cancel_tuning_job(TuningJob.objects.get())
    assert tasks.run_tuning_job(job.pk) == ""  # finished: nothing to look at again


def test_the_job_and_its_resume_are_celery_tasks_and_beat_runs_the_resume(settings: Any) -> None:
    from marketplace.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "learning.tasks.resume_tuning_jobs" in app.tasks
    assert "learning.tasks.resume_tuning_jobs" in scheduled


def test_an_object_store_out_of_reach_postpones_registering_and_a_later_run_registers(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = setup.create()
    store = get_store()
    put = store.put

    def refused(key: str, data: bytes) -> None:
        raise ConnectionError("the store is down")

    monkeypatch.setattr(store, "put", refused)
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.REGISTERING  # a finished run is not lost
    job.refresh_from_db()
    assert "waits for the platform's object store" in job.status_message
    assert job.lease_until is not None and not CustomModel.objects.exists()
    lapse_lease(job)
    assert tuning.unattended() == [job.pk]  # the minute's safety net takes it up again
    monkeypatch.setattr(store, "put", put)
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
    custom = CustomModel.objects.get()
    assert store.list("adapters/") == [custom.archive_key] and len(StandInTraining.starts) == 1


def test_another_organisation_cannot_register_a_tuning_runs_adapter_as_its_own(
    setup: Setup, settings: Any, client_for: Any, outsider: Any
) -> None:
    job = setup.create()
    assert tuning_run.run(job.pk, setup.parts()) == TuningStatus.SUCCEEDED
    job.refresh_from_db()
    adapter = Path(job.work_dir) / "run" / "adapter"
    settings.CUSTOM_MODEL_ROOTS = [settings.DATA_DIR]  # even roots that hold every run
    body = {"name": "taken", "source": "adapter", "path": str(adapter), "base": CHAT}
    answer = client_for(outsider).post("/api/custom-models/", body, format="json")
    assert answer.status_code == 400
    assert "holds this platform's tuning runs" in answer.json()["path"][0]
