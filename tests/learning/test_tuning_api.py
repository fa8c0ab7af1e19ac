"""/api/tuning-jobs/: owners and admins start and cancel distillation and fine-tuning jobs; members read
them; outsiders see nothing. Every field is checked before anything is written, and a refusal is a 400
naming the field. Nothing here trains: creating a job only hands it to a worker on commit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from learning import datasets
from learning.choices import DatasetSource
from learning.models import Dataset, TuningJob, TuningJobEvent, TuningStatus
from learning.storage import FolderStore, s3_client
from marketplace.accounts.models import Organization
from marketplace.catalog import custom_models
from serving.choices import DeploymentStatus
from serving.local import engine_env
from tests.catalog.custom_model_files import write_model
from tests.learning.conftest import make_deployment
from tests.learning.ticket_teacher import ticket_dataset

URL = "/api/tuning-jobs/"
STUDENT = engine_env.CHAT  # the catalog's SmolLM2 135M Instruct
ClientFor = Callable[[AbstractUser | None], APIClient]


@pytest.fixture(autouse=True)
def prepared_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine folder where the student's weights are 'prepared' (creating a job only looks for the
    folder's config.json; nothing here loads them)."""
    folder = tmp_path / "engine" / "models" / STUDENT
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    monkeypatch.setenv("ENGINE_DIR", str(tmp_path / "engine"))


@pytest.fixture
def dataset(acme: Organization, configured_store: FolderStore) -> Dataset:
    make_deployment(acme, "teacher")
    return ticket_dataset(configured_store, acme.pk, 8)


def start(client: APIClient, chosen: Dataset, **fields: Any) -> Any:
    body = {
        "organization": "acme", "name": "ticket-student", "kind": "distillation", "dataset": chosen.pk,
        "student_base": STUDENT, "teacher_deployment": "teacher", **fields,
    }  # fmt: skip
    return client.post(URL, body, format="json")


def test_an_owner_starts_a_distillation_job_with_default_hyperparameters(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as handed_on:
        answer = start(client_for(owner), dataset, teacher_instructions="Answer as JSON.")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert (body["status"], body["status_message"]) == ("queued", "Waiting for a worker.")
    assert (body["student_base"], body["teacher_deployment"], body["custom_model"]) == (
        STUDENT,
        "teacher",
        None,
    )
    assert body["hyperparameters"]["rank"] == 16 and body["hyperparameters"]["alpha"] == 32
    assert body["hyperparameters"]["learning_rate"] == 2e-4 and body["hyperparameters"]["epochs"] == 1
    assert body["hyperparameters"]["max_seq_length"] == 512
    assert body["teacher_instructions"] == "Answer as JSON." and body["loss_points"] == []
    assert [event["status"] for event in body["events"]] == ["queued"]
    assert len(handed_on) == 1  # the run goes to a worker once the row is committed


def test_hyperparameters_given_replace_only_their_defaults(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    answer = start(client_for(owner), dataset, hyperparameters={"rank": 8, "epochs": 3})
    assert answer.status_code == 201, answer.content
    spec = answer.json()["hyperparameters"]
    assert (spec["rank"], spec["epochs"], spec["alpha"]) == (8, 3, 32)


def test_a_fine_tuning_job_learns_references_and_has_no_teacher(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    answer = start(client, dataset, kind="fine-tuning", teacher_deployment="")
    assert answer.status_code == 201, answer.content
    assert answer.json()["kind"] == "fine-tuning"
    refused = start(client, dataset, kind="fine-tuning", name="other")
    assert refused.status_code == 400 and "teacher_deployment" in refused.json()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Not A Name"}, "name"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"kind": "pretraining"}, "kind"),
        ({"dataset": 999999}, "dataset"),
        ({"dataset": "first"}, "dataset"),
        ({"student_base": "no-such-model"}, "student_base"),
        ({"student_base": "all-minilm-l6-v2"}, "student_base"),  # embeddings: no text to learn
        ({"student_base": "yi-1.5-34b-chat"}, "student_base"),  # not CPU-capable
        ({"teacher_deployment": ""}, "teacher_deployment"),
        ({"teacher_deployment": "nowhere"}, "teacher_deployment"),
        ({"hyperparameters": {"rank": 0}}, "hyperparameters"),
        ({"hyperparameters": {"rank": True}}, "hyperparameters"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters"),
        ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters"),
        ({"hyperparameters": {"epochs": 1000}}, "hyperparameters"),
        ({"hyperparameters": {"max_seq_length": 8}}, "hyperparameters"),
        ({"hyperparameters": {"warmup": 10}}, "hyperparameters"),
        ({"hyperparameters": [16]}, "hyperparameters"),
        ({"hyperparameters": None}, "hyperparameters"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"concurrency": 99}, "concurrency"),
        ({"teacher_instructions": ["Be brief."]}, "teacher_instructions"),
        ({"kind": "fine-tuning", "teacher_deployment": "", "teacher_instructions": "Be brief."},
         "teacher_instructions"),
    ],
)  # fmt: skip
def test_a_bad_field_is_refused_naming_it_and_nothing_is_written(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset, fields: dict[str, Any], field: str
) -> None:
    answer = start(client_for(owner), dataset, **fields)
    assert answer.status_code == 400 and field in answer.json(), answer.content
    assert not TuningJob.objects.exists() and not TuningJobEvent.objects.exists()


def test_the_hyperparameter_refusal_names_the_hyperparameter(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    answer = start(client_for(owner), dataset, hyperparameters={"rank": 0})
    [message] = answer.json()["hyperparameters"]
    assert message.startswith("rank: A whole number from 1 to 256")


def test_a_teacher_that_is_not_ready_is_refused(
    client_for: ClientFor, owner: AbstractUser, acme: Organization, dataset: Dataset
) -> None:
    make_deployment(acme, "warming").__class__.objects.filter(name="warming").update(
        status=DeploymentStatus.PROVISIONING
    )
    answer = start(client_for(owner), dataset, teacher_deployment="warming")
    assert answer.status_code == 400
    assert "not ready" in answer.json()["teacher_deployment"][0]


def test_a_student_whose_weights_are_not_here_is_refused(
    client_for: ClientFor,
    owner: AbstractUser,
    dataset: Dataset,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("ENGINE_DIR", str(tmp_path / "elsewhere"))
    answer = start(client_for(owner), dataset)
    assert answer.status_code == 400 and "not on this machine" in answer.json()["student_base"][0]


def records(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"Ticket {n}"}], "reference": f"Answer {n}", **extra}
        for n in range(count)
    ]


@pytest.mark.parametrize(
    ("kind", "rows", "heldout", "words"),
    [
        ("distillation", records(4), 0.0, "held-out fraction above 0"),
        ("fine-tuning", [{**row, "reference": None} for row in records(4)], 0.5, "no reference answer"),
        (
            "distillation",
            [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                           {"role": "user", "content": "Help"}], "reference": None}] * 4,
            0.5,
            "several turns",
        ),
    ],
)  # fmt: skip
def test_a_dataset_the_student_cannot_learn_from_is_refused_saying_why(
    client_for: ClientFor, owner: AbstractUser, acme: Organization, configured_store: FolderStore,
    kind: str, rows: list[dict[str, Any]], heldout: float, words: str,
) -> None:  # fmt: skip
    make_deployment(acme, "teacher")
    chosen = datasets.save(
        configured_store, organization_id=acme.pk, name="odd", records=rows, source=DatasetSource.UPLOAD,
        heldout_fraction=heldout, seed=0,
    )  # fmt: skip
    teacher = "teacher" if kind == "distillation" else ""
    answer = start(client_for(owner), chosen, kind=kind, teacher_deployment=teacher)
    assert answer.status_code == 400 and words in answer.json()["dataset"][0], answer.content
    assert not TuningJob.objects.exists()


def test_two_jobs_cannot_make_the_same_model(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    assert start(client, dataset).status_code == 201
    again = start(client, dataset)
    assert again.status_code == 400 and "already makes a model named" in again.json()["name"][0]


def test_a_member_reads_jobs_but_cannot_start_or_cancel_one(
    client_for: ClientFor, owner: AbstractUser, member: AbstractUser, dataset: Dataset
) -> None:
    job = start(client_for(owner), dataset).json()
    client = client_for(member)
    assert start(client, dataset, name="mine").status_code == 403
    assert [row["id"] for row in client.get(URL).json()["results"]] == [job["id"]]
    assert client.get(f"{URL}{job['id']}/").json()["name"] == "ticket-student"
    assert client.post(f"{URL}{job['id']}/cancel/").status_code == 403
    assert TuningJob.objects.get().status == TuningStatus.QUEUED


def test_cancelling_a_queued_job_stops_it_once(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    job = start(client, dataset).json()
    answer = client.post(f"{URL}{job['id']}/cancel/")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert answer.json()["status_message"] == "Cancelled while queued."
    assert client.post(f"{URL}{job['id']}/cancel/").status_code == 409


def test_an_outsider_sees_nothing_and_cannot_use_anothers_teacher_or_dataset(
    client_for: ClientFor, owner: AbstractUser, outsider: AbstractUser, globex: Organization, dataset: Dataset
) -> None:
    job = start(client_for(owner), dataset).json()
    client = client_for(outsider)
    assert client.get(URL).json()["results"] == []
    assert client.get(f"{URL}{job['id']}/").status_code == 404
    assert client.post(f"{URL}{job['id']}/cancel/").status_code == 404
    refused = start(client, dataset, name="theirs")  # acme is not theirs: as if it did not exist
    assert refused.status_code == 400 and "organization" in refused.json()
    theirs = start(client, dataset, organization="globex", name="theirs")
    assert theirs.status_code == 400 and "teacher_deployment" in theirs.json()  # acme's teacher is not theirs
    make_deployment(globex, "teacher")
    theirs = start(client, dataset, organization="globex", name="theirs")
    assert theirs.status_code == 400 and "dataset" in theirs.json()
    assert TuningJob.objects.get().status == TuningStatus.QUEUED


def test_an_outsider_cannot_train_on_anothers_custom_model(
    client_for: ClientFor, owner: AbstractUser, outsider: AbstractUser, globex: Organization,
    dataset: Dataset, configured_store: FolderStore, settings: Any, tmp_path: Path,
) -> None:  # fmt: skip
    from tests.catalog.custom_model_files import write_model

    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path / "models")]
    registered = client_for(owner).post(
        "/api/custom-models/",
        {
            "organization": "acme",
            "name": "tiny",
            "source": "path",
            "path": str(write_model(tmp_path / "models" / "t")),
        },
        format="json",
    )
    assert registered.status_code == 201, registered.content
    make_deployment(globex, "teacher")
    theirs = ticket_dataset(configured_store, globex.pk, 4)
    answer = start(
        client_for(outsider), theirs, organization="globex", student_base=registered.json()["slug"]
    )
    assert answer.status_code == 400 and "No model with the slug" in answer.json()["student_base"][0]


def test_the_list_costs_the_same_queries_for_one_job_or_several(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    start(client, dataset, name="first")
    with CaptureQueriesContext(connection) as one:
        assert client.get(URL).status_code == 200
    for name in ("second", "third"):
        start(client, dataset, name=name)
    with CaptureQueriesContext(connection) as three:
        assert len(client.get(URL).json()["results"]) == 3
    assert len(three.captured_queries) == len(one.captured_queries)


def test_a_student_read_from_an_object_store_trains_here_once_copied_and_not_on_a_cluster(
    client_for: ClientFor, owner: AbstractUser, acme: Organization, dataset: Dataset, s3_server: str,
    settings: Any, tmp_path: Path,
) -> None:  # fmt: skip
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = [s3_server]
    store = s3_client(s3_server, "us-east-1", "AKIDSTUDENT", "student-secret")
    store.create_bucket(Bucket="students")
    for path in write_model(tmp_path / "stored").iterdir():
        store.upload_file(str(path), "students", f"tiny/{path.name}")
    custom = custom_models.register_from_store(
        organization=acme, user=owner, name="stored", uri="s3://students/tiny", endpoint_url=s3_server,
        access_key_id="AKIDSTUDENT", secret_access_key="student-secret",
    )  # fmt: skip
    client = client_for(owner)
    refused = start(client, dataset, student_base=custom.card.slug)
    assert refused.status_code == 400 and "deploy it once" in refused.json()["student_base"][0]
    custom_models.copy_store_weights(custom, lambda done, total: None)  # what deploying it does here
    assert start(client, dataset, student_base=custom.card.slug).status_code == 201
    settings.SERVING_BACKEND = "kubernetes"
    on_cluster = start(client, dataset, student_base=custom.card.slug, name="cluster-student",
                       instance_type="aws-g5-xlarge")  # fmt: skip
    assert on_cluster.status_code == 400 and "object store" in on_cluster.json()["student_base"][0]
