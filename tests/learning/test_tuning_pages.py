"""The web UI's tuning job pages: the list, and a job's steps, progress, loss chart (drawn on the server)
and held-out evaluation, with the offer to deploy its student. Members read them, owners and admins also
cancel, and another organisation's job is a 404."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from learning import tuning_eval
from learning.models import TuningJob, TuningJobEvent, TuningKind, TuningStatus
from learning.storage import FolderStore
from learning.training.spec import TrainingSpec
from marketplace.accounts.models import Organization
from marketplace.catalog import custom_models
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.web.loss_chart import loss_chart
from tests.catalog.custom_model_files import write_adapter
from tests.learning.conftest import make_deployment
from tests.learning.ticket_teacher import ticket_dataset

BrowserFor = Callable[[AbstractUser | None], Client]
EVALUATION = {
    "records": 2, "truth": "reference", "student_percent_of_teacher": 83.3,
    "models": {
        "teacher": {"quality": 1.0, "json_validity": 1.0, "teacher_agreement": 1.0,
                    "field_accuracy": {"category": 1.0, "priority": 1.0, "product": 1.0}},
        "student": {"quality": 0.8333, "json_validity": 1.0, "teacher_agreement": 0.5,
                    "field_accuracy": {"category": 1.0, "priority": 0.5, "product": 1.0}},
        "base": {"quality": 0.0, "json_validity": 0.0, "teacher_agreement": 0.0,
                 "field_accuracy": {"category": 0.0, "priority": 0.0, "product": 0.0}},
    },
    "prompt_tokens": {"teacher_per_call": 260.0, "student_per_call": 40.0, "saved_per_call": 220.0},
}  # fmt: skip


def make_job(organization: Organization, configured_store: FolderStore, **fields: Any) -> TuningJob:
    job = TuningJob.objects.create(
        organization=organization, name="ticket-student", kind=TuningKind.DISTILLATION,
        teacher_deployment="teacher", student_base=ModelCard.objects.get(slug="smollm2-135m-instruct"),
        dataset=ticket_dataset(configured_store, organization.pk, 8),
        hyperparameters=TrainingSpec().to_dict(), status_message="Trained 3 steps.", **fields,
    )  # fmt: skip
    TuningJobEvent.objects.create(job=job, status=TuningStatus.QUEUED, message="Waiting for a worker.")
    return job


@pytest.fixture
def training(acme: Organization, configured_store: FolderStore) -> TuningJob:
    job = make_job(
        acme, configured_store, status=TuningStatus.TRAINING, loss_points=[[1, 2.5], [2, 1.25]],
        total_steps=4, progress={"done": 2, "total": 4},
    )  # fmt: skip
    TuningJobEvent.objects.create(job=job, status=TuningStatus.GENERATING, message="Teacher answering.")
    TuningJobEvent.objects.create(job=job, status=TuningStatus.TRAINING, message="Training.")
    return job


def test_the_list_shows_the_organisations_jobs(
    browser_for: BrowserFor, member: AbstractUser, training: TuningJob
) -> None:
    page = browser_for(member).get("/tuning-jobs/")
    assert page.status_code == 200
    assert b"ticket-student" in page.content and f"/tuning-jobs/{training.pk}/".encode() in page.content


def test_a_running_job_shows_its_steps_progress_and_loss_chart(
    browser_for: BrowserFor, owner: AbstractUser, training: TuningJob
) -> None:
    page = browser_for(owner).get(f"/tuning-jobs/{training.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="step-done"><strong>Teacher answering' in html
    assert 'class="step-current"><strong>Training' in html and "2 of 4" in html
    assert 'id="loss-chart"' in html and "Step 2: loss 1.2500" in html
    assert 'http-equiv="refresh"' in html and "Cancel</button>" in html


def test_the_loss_chart_spans_the_whole_run_and_puts_the_highest_loss_at_the_top() -> None:
    chart = loss_chart([[2, 1.25], [1, 2.5]], total_steps=4)
    assert chart is not None
    first, second = chart.points
    assert first.y == chart.top and second.y == (chart.top + chart.baseline) / 2
    assert second.x == chart.left + (chart.right_edge - chart.left) / 2  # step 2 of 4: half way
    assert chart.total_steps == 4 and chart.max_loss == "2.500" and chart.min_loss == "1.250"
    assert loss_chart([], 10) is None


def test_a_finished_job_shows_the_student_as_a_share_of_the_teacher_and_offers_to_deploy_it(
    browser_for: BrowserFor, owner: AbstractUser, member: AbstractUser, acme: Organization,
    configured_store: FolderStore, settings: Any, tmp_path: Path,
) -> None:  # fmt: skip
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path)]
    card = ModelCard.objects.get(slug="smollm2-135m-instruct")
    adapter = write_adapter(tmp_path / "adapter", card.huggingface_repo)
    custom = custom_models.register_adapter(
        organization=acme, user=owner, name="ticket-student", path=str(adapter), base=card
    )
    job = make_job(
        acme, configured_store, status=TuningStatus.SUCCEEDED, evaluation=EVALUATION, custom_model=custom,
        loss_points=[[1, 2.5], [2, 1.0]], total_steps=2,
    )  # fmt: skip
    html = browser_for(owner).get(f"/tuning-jobs/{job.pk}/").content.decode()
    assert "<strong>83.3%</strong> of the teacher" in html
    assert "priority 50%" in html and "220.0 saved" in html
    assert f'href="/deployments/new/?model={custom.card.slug}"' in html
    assert 'http-equiv="refresh"' not in html and "Cancel</button>" not in html
    member_html = browser_for(member).get(f"/tuning-jobs/{job.pk}/").content.decode()
    assert "83.3%" in member_html and "deploy-student" not in member_html


def test_a_member_cannot_cancel_from_the_page(
    browser_for: BrowserFor, member: AbstractUser, training: TuningJob
) -> None:
    client = browser_for(member)
    assert "Cancel</button>" not in client.get(f"/tuning-jobs/{training.pk}/").content.decode()
    assert client.post(f"/tuning-jobs/{training.pk}/cancel/").status_code == 403
    assert TuningJob.objects.get(pk=training.pk).status == TuningStatus.TRAINING


def test_an_owner_cancels_from_the_page(
    browser_for: BrowserFor, owner: AbstractUser, training: TuningJob
) -> None:
    answer = browser_for(owner).post(f"/tuning-jobs/{training.pk}/cancel/")
    assert answer.status_code == 302
    assert TuningJob.objects.get(pk=training.pk).status == TuningStatus.CANCELLED


def test_an_outsider_sees_nothing_of_another_organisations_jobs(
    browser_for: BrowserFor, outsider: AbstractUser, training: TuningJob
) -> None:
    client = browser_for(outsider)
    assert b"ticket-student" not in client.get("/tuning-jobs/").content
    assert client.get(f"/tuning-jobs/{training.pk}/").status_code == 404
    assert client.post(f"/tuning-jobs/{training.pk}/cancel/").status_code == 404
    assert TuningJob.objects.get(pk=training.pk).status == TuningStatus.TRAINING


@pytest.fixture
def prepared_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "engine" / "models" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("ENGINE_DIR", str(tmp_path / "engine"))


def form(dataset_id: int, **fields: str) -> dict[str, Any]:
    return {
        "name": "ticket-student", "kind": "distillation", "dataset": str(dataset_id),
        "student_base": "smollm2-135m-instruct", "teacher_deployment": "teacher", "teacher_instructions": "",
        "rank": "", "alpha": "", "learning_rate": "", "epochs": "2", "max_seq_length": "", **fields,
    }  # fmt: skip


def test_an_owner_starts_a_job_from_the_form(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore,
    prepared_student: None,
) -> None:  # fmt: skip
    make_deployment(acme, "teacher")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    client = browser_for(owner)
    page = client.get("/tuning-jobs/").content.decode()
    assert 'id="start-tuning-job"' in page and '<option value="smollm2-135m-instruct"' in page
    answer = client.post("/tuning-jobs/", form(dataset.pk))
    job = TuningJob.objects.get()
    assert answer.status_code == 302 and answer["Location"] == f"/tuning-jobs/{job.pk}/"
    assert (job.hyperparameters["epochs"], job.hyperparameters["rank"]) == (2, 16)


def test_the_form_names_the_evaluation_scorers_the_held_out_answers_also_get(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore,
    prepared_student: None,
) -> None:  # fmt: skip
    make_deployment(acme, "teacher")
    make_deployment(acme, "judge")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    client = browser_for(owner)
    page = client.get("/tuning-jobs/").content.decode()
    assert 'name="judge_deployment"' in page and 'name="regex_pattern"' in page
    chosen = {"json": "on", "judge": "on", "judge_deployment": "judge", "judge_rubric": "", "regex": "on",
              "regex_pattern": '"priority"'}  # fmt: skip
    answer = client.post("/tuning-jobs/", form(dataset.pk, **chosen))
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    assert TuningJob.objects.get().scorers == [
        {"kind": "regex", "pattern": '"priority"', "name": "regex"},
        {"kind": "json", "name": "json"},
        {"kind": "judge", "deployment": "judge", "name": "judge"},
    ]


def test_a_scorer_the_form_cannot_run_is_refused_beside_the_scorers(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore,
    prepared_student: None,
) -> None:  # fmt: skip
    make_deployment(acme, "teacher")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    answer = browser_for(owner).post("/tuning-jobs/", form(dataset.pk, regex="on", regex_pattern="("))
    assert answer.status_code == 400 and 'id="error-scorers"' in answer.content.decode()
    assert not TuningJob.objects.exists()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"rank": "0"}, "rank: A whole number from 1 to 256"),
        ({"learning_rate": "fast"}, "learning_rate: A number"),
        ({"teacher_deployment": ""}, "needs a teacher"),
        ({"name": "Not A Name"}, "lowercase letters"),
    ],
)
def test_a_bad_form_is_refused_beside_its_field_and_starts_nothing(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore,
    prepared_student: None, fields: dict[str, str], words: str,
) -> None:  # fmt: skip
    make_deployment(acme, "teacher")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    answer = browser_for(owner).post("/tuning-jobs/", form(dataset.pk, **fields))
    assert answer.status_code == 400 and words in answer.content.decode()
    assert not TuningJob.objects.exists()


def test_a_member_has_no_form_and_cannot_post_one(
    browser_for: BrowserFor, member: AbstractUser, acme: Organization, configured_store: FolderStore,
    prepared_student: None,
) -> None:  # fmt: skip
    make_deployment(acme, "teacher")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    client = browser_for(member)
    assert 'id="start-tuning-job"' not in client.get("/tuning-jobs/").content.decode()
    assert client.post("/tuning-jobs/", form(dataset.pk)).status_code == 403
    assert not TuningJob.objects.exists()


def test_an_outsiders_form_cannot_use_another_organisations_dataset(
    browser_for: BrowserFor, outsider: AbstractUser, globex: Organization, acme: Organization,
    configured_store: FolderStore, prepared_student: None,
) -> None:  # fmt: skip
    make_deployment(globex, "teacher")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    answer = browser_for(outsider).post("/tuning-jobs/", form(dataset.pk))
    assert (
        answer.status_code == 400
        and f"No dataset {dataset.pk} in &#x27;globex&#x27;" in answer.content.decode()
    )
    assert not TuningJob.objects.exists()


def test_on_a_cluster_the_form_asks_for_the_gpu_instance_type_and_refuses_one_without_gpus(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore,
    settings: Any,
) -> None:  # fmt: skip
    settings.SERVING_BACKEND = "kubernetes"
    make_deployment(acme, "teacher")
    dataset = ticket_dataset(configured_store, acme.pk, 8)
    client = browser_for(owner)
    page = client.get("/tuning-jobs/").content.decode()
    assert 'id="id-instance_type"' in page and '<option value="aws-g5-xlarge"' in page
    cpu = InstanceType.objects.filter(gpu_count=0).first()
    assert cpu is not None and f'<option value="{cpu.slug}"' not in page
    answer = client.post("/tuning-jobs/", form(dataset.pk, instance_type=cpu.slug))
    assert answer.status_code == 400 and 'id="error-instance_type"' in answer.content.decode()
    assert "needs a GPU instance" in answer.content.decode() and not TuningJob.objects.exists()


def test_on_this_machine_the_form_has_no_instance_type(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore
) -> None:
    assert 'id="id-instance_type"' not in browser_for(owner).get("/tuning-jobs/").content.decode()


def test_a_jobs_page_says_where_it_trains(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore
) -> None:
    here = make_job(acme, configured_store)
    assert (
        "Trains on this machine's CPU." in browser_for(owner).get(f"/tuning-jobs/{here.pk}/").content.decode()
    )
    there = make_job(acme, configured_store, instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"))
    html = browser_for(owner).get(f"/tuning-jobs/{there.pk}/").content.decode()
    assert "Trains on the cluster, as a Job on g5.xlarge (1 × NVIDIA A10G 24GB)." in html


def test_a_finished_job_sets_the_students_cost_beside_the_teachers(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore
) -> None:
    teacher = tuning_eval.cost_side(
        instance="g5.xlarge", hourly_usd=1.006, busy_seconds=36.0, tokens=9_000, calls=30, estimate=False
    )
    student = tuning_eval.cost_side(
        instance="g5.xlarge", hourly_usd=1.006, busy_seconds=3.6, tokens=1_200, calls=30, estimate=True
    )
    costs = tuning_eval.cost_report(teacher, student)
    job = make_job(
        acme, configured_store, status=TuningStatus.SUCCEEDED, evaluation={**EVALUATION, "costs": costs}
    )
    html = browser_for(owner).get(f"/tuning-jobs/{job.pk}/").content.decode()
    # 1.006 $/h over 36 s for 9,000 tokens: $0.001118 per 1,000; 300 tokens a call: $0.000335 a call.
    assert teacher["usd_per_1k_tokens"] == pytest.approx(0.00111778, rel=1e-4)
    assert "$0.001118" in html and "$0.000335" in html
    # The student: 1.006 $/h over 3.6 s for 1,200 tokens is $0.000838 per 1,000, 40 tokens a call: a tenth.
    assert costs["student_percent_of_teacher_per_call"] == 10.0 and "$0.000838" in html
    assert (
        f"<strong>{costs['student_percent_of_teacher_per_call']}%</strong> of a call to the teacher" in html
    )
    assert 'student <span class="muted">(estimate)</span>' in html
    assert f"({costs['student_throughput_ratio']}× the teacher's tokens per second)" in html


def test_a_job_on_this_machine_says_its_cpu_has_no_hourly_price(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore
) -> None:
    student = tuning_eval.cost_side(
        instance="Local CPU", hourly_usd=0.0, busy_seconds=4.0, tokens=800, calls=10, estimate=True
    )
    job = make_job(acme, configured_store, status=TuningStatus.SUCCEEDED,
                   evaluation={**EVALUATION, "costs": tuning_eval.cost_report(None, student)})  # fmt: skip
    html = browser_for(owner).get(f"/tuning-jobs/{job.pk}/").content.decode()
    assert "This machine's CPU has no hourly price" in html and 'id="cost-headline"' not in html
    assert "200.0" in html  # tokens a second


def test_the_scorers_a_job_named_are_shown_per_model(
    browser_for: BrowserFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore
) -> None:
    judge = {"scored": 2, "unscored": 0, "mean": 7.5, "ci95": [6.0, 9.0]}
    scored = {
        "teacher": {"judge": judge},
        "student": {"judge": {**judge, "mean": 6.5}},
        "base": {"judge": {}},
    }
    job = make_job(
        acme, configured_store, status=TuningStatus.SUCCEEDED, evaluation={**EVALUATION, "scorers": scored}
    )
    html = browser_for(owner).get(f"/tuning-jobs/{job.pk}/").content.decode()
    table = html.split('id="chosen-scorers"', 1)[1].split("</table>", 1)[0]
    assert '<th scope="col" class="num">judge</th>' in table
    assert "7.5 <span" in table and "6.5 <span" in table and "(6.0–9.0)" in table and "—" in table
