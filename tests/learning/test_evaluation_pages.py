"""The web UI's dataset and evaluation pages: owners upload and start, members see names, counts and
results but no prompts or answers, outsiders see nothing of another organisation; the results show a
quality-against-cost chart and the answers side by side."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.utils import timezone

from learning import datasets, evaluations
from learning.choices import DatasetSource, EvaluationStatus
from learning.models import Dataset, Evaluation, EvaluationItem
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from marketplace.web.quality_chart import quality_cost_chart
from tests.learning.conftest import make_deployment

BrowserFor = Callable[[AbstractUser | None], Client]


@pytest.fixture
def dataset(acme: Organization, configured_store: FolderStore) -> Dataset:
    make_deployment(acme, "small")
    make_deployment(acme, "large")
    records = [
        {"messages": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris"},
        {"messages": [{"role": "user", "content": "Capital of Peru?"}], "reference": "Lima"},
    ]
    return datasets.save(
        configured_store, organization_id=acme.pk, name="capitals", records=records,
        source=DatasetSource.UPLOAD, heldout_fraction=0.0, seed=0,
    )  # fmt: skip


@pytest.fixture
def evaluation(dataset: Dataset, acme: Organization, owner: AbstractUser) -> Evaluation:
    started = evaluations.create_evaluation(
        organization=acme, user=owner, dataset=dataset, deployments=["small", "large"],
        scorer_specs=[{"kind": "exact_match"}], part="all",
    )  # fmt: skip
    for deployment, answer, score in (("small", "Paris", 1.0), ("large", "Lyon", 0.0)):
        EvaluationItem.objects.create(
            evaluation=started, deployment=deployment, item_id="1", started_at=timezone.now(),
            latency_ms=200, status_code=200, answer=answer, prompt_tokens=10, completion_tokens=2,
            scores={"exact_match": score},
        )  # fmt: skip
    return started


def upload(client: Client, text: str, name: str = "support") -> Any:
    handle = io.BytesIO(text.encode())
    handle.name = "data.jsonl"
    return client.post("/datasets/", {"name": name, "file": handle})


def test_an_owner_uploads_a_dataset_and_reads_its_records(
    browser_for: BrowserFor, owner: AbstractUser, configured_store: FolderStore
) -> None:
    client = browser_for(owner)
    line = json.dumps({"messages": [{"role": "user", "content": "Hello there"}]})
    answer = upload(client, "\n".join([line] * 3))
    assert answer.status_code == 302
    page = client.get(answer["Location"])
    assert b"Hello there" in page.content and b"download" in page.content.lower()


def test_a_bad_upload_shows_each_line_and_stores_nothing(
    browser_for: BrowserFor, owner: AbstractUser, configured_store: FolderStore
) -> None:
    text = '{"messages": []}\n{"messages": [{"role": "user", "content": "ok"}]}\n{'
    answer = upload(browser_for(owner), text)
    assert answer.status_code == 400
    assert b"Line 1: messages: must be a non-empty list" in answer.content
    assert b"Line 3: line: is not JSON" in answer.content
    assert not Dataset.objects.exists() and configured_store.list("") == []


def test_a_member_sees_the_dataset_but_not_its_records_and_cannot_upload(
    browser_for: BrowserFor, member: AbstractUser, dataset: Dataset
) -> None:
    client = browser_for(member)
    assert b"capitals" in client.get("/datasets/").content
    page = client.get(f"/datasets/{dataset.pk}/")
    assert page.status_code == 200 and b"Capital of France" not in page.content
    assert upload(client, '{"messages": [{"role": "user", "content": "x"}]}').status_code == 403


def test_an_owner_starts_an_evaluation_from_the_form(
    browser_for: BrowserFor, owner: AbstractUser, dataset: Dataset
) -> None:
    form = {
        "dataset": dataset.pk, "part": "all", "deployments": ["small", "large"], "exact_match": "on",
        "judge": "on", "judge_deployment": "large", "judge_rubric": "Grade {answer} from 1 to 10 as JSON.",
    }  # fmt: skip
    answer = browser_for(owner).post("/evaluations/", form)
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    evaluation = Evaluation.objects.get()
    assert evaluation.deployments == ["small", "large"] and evaluation.total_items == 4
    assert evaluation.scorers[1]["rubric"] == "Grade {answer} from 1 to 10 as JSON."


def test_a_form_without_deployments_or_scorers_is_refused_naming_them(
    browser_for: BrowserFor, owner: AbstractUser, dataset: Dataset
) -> None:
    answer = browser_for(owner).post("/evaluations/", {"dataset": dataset.pk})
    assert answer.status_code == 400, answer.content.decode()[-3000:]
    assert b'id="error-deployments"' in answer.content and b'id="error-scorers"' in answer.content
    assert not Evaluation.objects.exists()


def test_the_results_page_shows_scores_a_chart_and_answers_side_by_side(
    browser_for: BrowserFor, owner: AbstractUser, evaluation: Evaluation
) -> None:
    page = browser_for(owner).get(f"/evaluations/{evaluation.pk}/").content.decode()
    assert 'id="quality-cost"' in page and page.count("<circle") == 2
    assert 'id="side-by-side"' in page and "Lyon" in page and "Capital of France?" in page
    assert "1 of 4 items done" not in page and "2 of 4 items done" in page


def test_a_member_sees_results_but_no_answers_and_cannot_cancel(
    browser_for: BrowserFor, member: AbstractUser, evaluation: Evaluation
) -> None:
    client = browser_for(member)
    page = client.get(f"/evaluations/{evaluation.pk}/").content.decode()
    assert 'id="results"' in page and "Lyon" not in page and "Capital of France?" not in page
    assert client.post(f"/evaluations/{evaluation.pk}/cancel/").status_code == 403
    assert Evaluation.objects.get(pk=evaluation.pk).status == EvaluationStatus.PENDING


def test_a_members_cancel_is_refused_with_who_can_cancel_it(
    browser_for: BrowserFor, member: AbstractUser, evaluation: Evaluation
) -> None:
    answer = browser_for(member).post(f"/evaluations/{evaluation.pk}/cancel/")
    assert answer.status_code == 403
    assert answer.content.decode().endswith("cancels evaluations; ask one of them.")


def test_an_owner_cancels_from_the_page(
    browser_for: BrowserFor, owner: AbstractUser, evaluation: Evaluation
) -> None:
    assert browser_for(owner).post(f"/evaluations/{evaluation.pk}/cancel/").status_code == 302
    assert Evaluation.objects.get(pk=evaluation.pk).status == EvaluationStatus.CANCELLED


def test_an_outsider_sees_nothing_of_another_organisations_datasets_and_evaluations(
    browser_for: BrowserFor, outsider: AbstractUser, evaluation: Evaluation
) -> None:
    client = browser_for(outsider)
    assert b"capitals" not in client.get("/datasets/").content
    assert b"capitals" not in client.get("/evaluations/").content
    assert client.get(f"/datasets/{evaluation.dataset_id}/").status_code == 404
    assert client.get(f"/evaluations/{evaluation.pk}/").status_code == 404
    assert client.post(f"/evaluations/{evaluation.pk}/cancel/").status_code == 404
    assert Evaluation.objects.get(pk=evaluation.pk).status == EvaluationStatus.PENDING


def test_anonymous_visitors_are_sent_to_sign_in(browser_for: BrowserFor) -> None:
    for url in ("/datasets/", "/evaluations/"):
        assert browser_for(None).get(url).status_code == 302


def test_the_chart_puts_cheaper_left_and_better_up() -> None:
    def summary(name: str, cost: float, mean: float | None) -> dict[str, Any]:
        return {"deployment": name, "cost_usd": cost, "scores": {"judge": {"mean": mean}}}

    chart = quality_cost_chart(
        [summary("small", 0.01, 6.0), summary("large", 0.04, 8.0), summary("new", 0.0, None)], "judge"
    )
    small, large = chart.points
    assert small.x < large.x and small.y > large.y  # svg y grows downwards
    assert large.x == chart.right_edge and large.y == chart.top
    assert chart.missing == ["new"]
