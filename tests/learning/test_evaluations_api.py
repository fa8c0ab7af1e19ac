"""/api/evaluations/: owners and admins start, cancel and delete evaluations and read the answers side
by side; members read progress and results only; outsiders nothing. Refusals name the field."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.core.paginator import UnorderedObjectListWarning
from rest_framework.test import APIClient

from learning import datasets
from learning.choices import DatasetSource, EvaluationStatus
from learning.models import Dataset, Evaluation, EvaluationItem
from learning.storage import FolderStore, get_store
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

URL = "/api/evaluations/"
ClientFor = Callable[[AbstractUser | None], APIClient]


@pytest.fixture
def dataset(acme: Organization, configured_store: FolderStore) -> Dataset:
    make_deployment(acme, "small")
    make_deployment(acme, "large")
    records = [
        {"messages": [{"role": "user", "content": f"Question {n}?"}], "reference": f"Answer {n}"}
        for n in range(6)
    ]
    return datasets.save(
        configured_store, organization_id=acme.pk, name="support", records=records,
        source=DatasetSource.UPLOAD, heldout_fraction=0.5, seed=1,
    )  # fmt: skip


def start(client: APIClient, chosen: Dataset, **fields: Any) -> Any:
    body = {
        "organization": "acme", "dataset": chosen.pk, "deployments": ["small", "large"],
        "scorers": [{"kind": "exact_match"}, {"kind": "judge", "deployment": "large"}], **fields,
    }  # fmt: skip
    return client.post(URL, body, format="json")


def test_an_owner_starts_an_evaluation_of_the_heldout_part(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as handed_on:
        answer = start(client_for(owner), dataset)
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert (body["status"], body["status_message"]) == ("pending", "Waiting for a worker.")
    assert body["part"] == "heldout" and body["progress"]["total"] == 3 * 2
    assert [s["name"] for s in body["scorers"]] == ["exact_match", "judge"]
    assert body["prices"]["small"]["replicas"] == 1
    assert len(handed_on) == 1  # the run goes to a worker once the row is committed


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"deployments": ["small", "nowhere"]}, "deployments"),
        ({"deployments": []}, "deployments"),
        ({"scorers": [{"kind": "judge", "deployment": "nowhere"}]}, "scorers"),
        ({"scorers": [{"kind": "regex", "pattern": "("}]}, "scorers[0].pattern"),
        ({"scorers": "exact"}, "scorers"),
        ({"scorers": [{"kind": ["exact_match"]}]}, "scorers[0].kind"),
        ({"scorers": [{"kind": "regex", "pattern": "a\x00"}]}, "scorers[0].pattern"),
        ({"scorers": [{"kind": "json", "schema": {"title": "\x00"}}]}, "scorers[0].schema"),
        ({"concurrency": 99}, "concurrency"),
        ({"part": "everything"}, "part"),
        ({"dataset": 999999}, "dataset"),
    ],
)
def test_a_bad_request_is_refused_naming_the_field(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset, fields: dict[str, Any], field: str
) -> None:
    answer = start(client_for(owner), dataset, **fields)
    assert answer.status_code == 400 and field in answer.json(), answer.content
    assert not Evaluation.objects.exists()


def test_a_member_cannot_start_cancel_or_read_answers_but_reads_results(
    client_for: ClientFor, owner: AbstractUser, member: AbstractUser, dataset: Dataset
) -> None:
    evaluation = start(client_for(owner), dataset).json()
    client = client_for(member)
    assert start(client, dataset).status_code == 403
    detail = client.get(f"{URL}{evaluation['id']}/")
    assert detail.status_code == 200
    assert [r["deployment"] for r in detail.json()["results"]] == ["small", "large"]
    assert client.get(f"{URL}{evaluation['id']}/items/").status_code == 403
    assert client.post(f"{URL}{evaluation['id']}/cancel/").status_code == 403


def test_answers_side_by_side_per_record(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    evaluation = Evaluation.objects.get(pk=start(client, dataset).json()["id"])
    record = datasets.in_part(datasets.load(get_store(), dataset), "heldout")[0]
    EvaluationItem.objects.create(
        evaluation=evaluation, deployment="small", item_id=record["id"], started_at=evaluation.created_at,
        latency_ms=120, status_code=200, answer="Answer", scores={"exact_match": 0.0, "judge": 6.0},
    )  # fmt: skip
    page = client.get(f"{URL}{evaluation.pk}/items/", {"limit": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2
    first = page["results"][0]
    assert first["messages"] == record["messages"] and first["reference"] == record["reference"]
    assert first["answers"]["small"]["scores"] == {"exact_match": 0.0, "judge": 6.0}
    assert first["answers"]["large"] is None


def test_cancelling_keeps_what_is_done_and_cannot_be_repeated(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    evaluation = start(client, dataset).json()
    answer = client.post(f"{URL}{evaluation['id']}/cancel/")
    assert answer.status_code == 200 and answer.json()["status"] == EvaluationStatus.CANCELLED
    assert answer.json()["status_message"] == "Cancelled with 0 of 6 items answered; their results are kept."
    assert client.post(f"{URL}{evaluation['id']}/cancel/").status_code == 409


def test_a_running_evaluation_is_cancelled_before_it_is_deleted_and_holds_its_dataset(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    evaluation = start(client, dataset).json()
    assert client.delete(f"{URL}{evaluation['id']}/").status_code == 409
    assert client.delete(f"/api/datasets/{dataset.pk}/").status_code == 409
    client.post(f"{URL}{evaluation['id']}/cancel/")
    assert client.delete(f"{URL}{evaluation['id']}/").status_code == 204
    assert client.delete(f"/api/datasets/{dataset.pk}/").status_code == 204


def test_an_outsider_sees_nothing_and_cannot_use_anothers_dataset(
    client_for: ClientFor, owner: AbstractUser, outsider: AbstractUser, globex: Organization, dataset: Dataset
) -> None:
    evaluation = start(client_for(owner), dataset).json()
    client = client_for(outsider)
    assert client.get(URL).json()["results"] == []
    for suffix in ("", "items/"):
        assert client.get(f"{URL}{evaluation['id']}/{suffix}").status_code == 404
    assert client.post(f"{URL}{evaluation['id']}/cancel/").status_code == 404
    assert client.delete(f"{URL}{evaluation['id']}/").status_code == 404
    make_deployment(globex, "small")
    theirs = start(client, dataset, organization="globex", deployments=["small"])
    assert theirs.status_code == 400 and "dataset" in theirs.json()
    assert Evaluation.objects.count() == 1


def test_the_schema_names_the_evaluation_status_apart_from_other_statuses(
    client_for: ClientFor, owner: AbstractUser
) -> None:
    schema = client_for(owner).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert schema["components"]["schemas"]["EvaluationStatusEnum"]["enum"] == [
        "pending", "running", "succeeded", "failed", "cancelled",
    ]  # fmt: skip


def test_the_list_is_newest_first_in_a_defined_order(
    client_for: ClientFor, owner: AbstractUser, dataset: Dataset
) -> None:
    client = client_for(owner)
    ids = [start(client, dataset).json()["id"] for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnorderedObjectListWarning)  # pages of an unordered list may skip rows
        listed = client.get(URL).json()["results"]
    assert [e["id"] for e in listed] == ids[::-1]
