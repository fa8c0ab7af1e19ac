"""A distillation job on this machine, for real, end to end: a real Celery worker takes the job; the
teacher answers through the gateway's own path (metered); SmolLM2-135M learns its answers with a LoRA
adapter trained by TRL on CPU in the engine's environment; the student, the teacher and the untrained base
answer the held-out tickets and are scored with the task scorers; the adapter is registered as the
organisation's custom model, and the job's page offers to deploy it.

The teacher is the stand-in task teacher (tests/learning/ticket_teacher.py): deterministic code that
answers support tickets as JSON the way a large model given the instructions would, deployed as a
deployment of the organisation; no model larger than 135M runs here. One small real training (a dozen
tickets, a few steps) keeps the module near two minutes; the adapter served by vLLM through the gateway
is tests/learning/test_cpu_trainer.py's."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from learning.models import TuningJob, TuningStatus
from learning.storage import FolderStore
from learning.training import cpu_trainer, tickets
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Quota
from serving import tasks as serving_tasks
from serving.local import engine_env
from serving.models import UsageRecord
from tests.conftest import make_user
from tests.learning.test_evaluation_worker_killed import start_worker, stop
from tests.learning.ticket_teacher import TicketTeacher, ticket_dataset, ticket_teacher
from tests.serving.gateway.conftest import CHAT, deploy

pytestmark = pytest.mark.slow

TICKETS = 16  # 12 to train on, 4 held out
HYPERPARAMETERS = {"learning_rate": 2e-3, "epochs": 3, "batch_size": 4, "max_seq_length": 256}


@pytest.fixture(scope="module")
def prepared_engine() -> None:
    directory = engine_env.engine_dir()
    if engine_env.model_path(directory, CHAT) is None or not engine_env.engine_python(directory).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")


def test_a_distillation_job_trains_evaluates_and_registers_a_student_for_real(
    prepared_engine: None, transactional_catalog: None, configured_store: FolderStore, tmp_path: Path
) -> None:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    owner = make_user("dina")
    organization = account_services.create_organization(slug="distillers", name="Distillers", owner=owner)
    Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
    dataset = ticket_dataset(configured_store, organization.pk, TICKETS, heldout_fraction=0.25)
    client = APIClient()
    client.force_authenticate(owner)
    worker = start_worker("tuner", tmp_path)
    try:
        with ticket_teacher() as url:
            deploy(organization, "teacher", CHAT, url)
            created = client.post(
                "/api/tuning-jobs/",
                {"name": "ticket-student", "kind": "distillation", "dataset": dataset.pk,
                 "student_base": CHAT, "teacher_deployment": "teacher",
                 "teacher_instructions": tickets.INSTRUCTIONS, "hyperparameters": HYPERPARAMETERS,
                 "max_tokens": 48},
                format="json",
            )  # fmt: skip
            assert created.status_code == 201, created.content
            deadline = time.monotonic() + 900
            while (job := TuningJob.objects.get(pk=created.json()["id"])).status not in (
                TuningStatus.SUCCEEDED, TuningStatus.FAILED, TuningStatus.CANCELLED,
            ):  # fmt: skip
                assert time.monotonic() < deadline, (tmp_path / "tuner.log").read_text()[-3000:]
                time.sleep(1)
    finally:
        stop(worker)
    assert job.status == TuningStatus.SUCCEEDED, (
        f"{job.status_message}\n{(tmp_path / 'tuner.log').read_text()[-3000:]}"
    )
    events = [event.status for event in job.events.all()]
    assert events == ["queued", "generating", "training", "evaluating", "registering", "succeeded"]

    # 1. The teacher answered every ticket once, with its instructions, and each call was metered.
    assert len(TicketTeacher.asked) == TICKETS
    serving_tasks.flush_usage()
    assert UsageRecord.objects.filter(organization=organization, model="teacher").count() == TICKETS

    # 2. A real training: a loss point per optimizer step, going down, and a whole adapter of the spec.
    assert job.total_steps == 9 and [step for step, _ in job.loss_points] == list(range(1, 10))
    losses = [loss for _, loss in job.loss_points]
    assert losses[-1] < losses[0] / 2, losses
    adapter = Path(job.work_dir) / "run" / cpu_trainer.ADAPTER
    assert all((adapter / name).is_file() for name in cpu_trainer.ADAPTER_FILES)

    # 3. Student against teacher and base on the held-out tickets, with the task scorers.
    report = job.evaluation
    models = report["models"]
    print("\nheld-out report:", report)  # the figures a person reads on the job's page
    assert report["records"] == 4 and report["truth"] == "reference"
    assert models["teacher"]["quality"] == 1.0
    assert models["student"]["json_validity"] > models["base"]["json_validity"]
    assert models["student"]["quality"] > models["base"]["quality"]
    assert report["student_percent_of_teacher"] == round(100 * models["student"]["quality"], 1)
    assert report["prompt_tokens"]["saved_per_call"] > 100
    # What the tokens cost: the teacher's calls measured, the student's held-out answers timed for real.
    costs = report["costs"]
    assert costs["teacher"]["busy_seconds"] > 0 and costs["teacher"]["estimate"] is False
    assert costs["student"]["tokens_per_second"] > 0 and costs["student"]["estimate"] is True
    assert costs["student"]["tokens_per_call"] < costs["teacher"]["tokens_per_call"]

    # 4. Registered once, as an adapter on the base it was trained on.
    assert job.custom_model is not None and job.custom_model.base is not None
    assert job.custom_model.base.slug == CHAT and job.custom_model.lora_rank == 16
    assert f"{report['student_percent_of_teacher']:g}% of the teacher" in job.custom_model.card.summary

    # 5. The job's page shows the steps, the loss chart, the score and the offer to deploy.
    browser = Client()
    browser.force_login(owner)
    html = browser.get(f"/tuning-jobs/{job.pk}/").content.decode()
    assert 'id="loss-chart"' in html and f"{report['student_percent_of_teacher']}%</strong>" in html
    assert f"/deployments/new/?model={job.custom_model.card.slug}" in html
