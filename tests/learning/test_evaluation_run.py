"""Running an evaluation through the gateway's own path, against a stand-in engine over real HTTP:
every item answered and scored once, tokens metered to the organisation, resumable, cancellable, and a
second run of the same evaluation harmless."""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from learning import datasets, evaluations, scorers
from learning.capture import QUEUE_KEY
from learning.choices import DatasetSource, EvaluationStatus
from learning.models import Dataset, Evaluation, EvaluationItem, InvocationLogSettings
from learning.storage import FolderStore
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from serving import tasks as serving_tasks
from serving.models import UsageRecord
from tests.conftest import make_user
from tests.learning import standin
from tests.learning.standin import StandIn, stand_in_engine
from tests.serving.gateway.conftest import CHAT, EMBED, deploy

pytestmark = pytest.mark.usefixtures("transactional_catalog")  # the run reads the rows from its own thread

QUESTIONS = [
    ("Capital of France?", "Paris"),
    ("Capital of Peru?", "Lima"),
    ("Which country has Paris? France.", "France"),
    ("Name a colour.", "Blue"),
]


@dataclass
class Setup:
    organization: Organization
    owner: Any
    dataset: Dataset


@pytest.fixture
def engine() -> Iterator[str]:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # limits and usage of earlier tests
    with stand_in_engine() as url:
        yield url


@pytest.fixture
def setup(engine: str, configured_store: FolderStore) -> Setup:
    owner = make_user("eva")
    organization = account_services.create_organization(slug="evals", name="Evals", owner=owner)
    Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
    deploy(organization, "small", CHAT, engine)
    deploy(organization, "other", CHAT, engine)
    deploy(organization, "minilm", EMBED, engine)
    records = [
        {"messages": [{"role": "user", "content": q}], "reference": a, "metadata": {}} for q, a in QUESTIONS
    ]
    dataset = datasets.save(
        configured_store, organization_id=organization.pk, name="capitals", records=records,
        source=DatasetSource.UPLOAD, heldout_fraction=0.5, seed=0,
    )  # fmt: skip
    return Setup(organization, owner, dataset)


SCORERS = [
    {"kind": "exact_match"},
    {"kind": "similarity", "deployment": "minilm"},
    {"kind": "judge", "deployment": "small"},
]


def create(setup: Setup, **fields: Any) -> Evaluation:
    options: dict[str, Any] = {
        "deployments": ["small", "other"], "scorer_specs": SCORERS, "part": "all", **fields,
    }  # fmt: skip
    return evaluations.create_evaluation(
        organization=setup.organization, user=setup.owner, dataset=setup.dataset, **options
    )


def answers_asked() -> list[str]:
    return [p for p in StandIn.prompts if "Rate the assistant's answer" not in p]


def test_every_item_is_answered_scored_and_metered_once(setup: Setup) -> None:
    evaluation = create(setup)
    assert evaluations.run_blocking(evaluation.pk) == EvaluationStatus.SUCCEEDED
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.SUCCEEDED
    assert evaluation.status_message == "Answered and scored 8 items."
    items = {(i.deployment, i.item_id): i for i in EvaluationItem.objects.filter(evaluation=evaluation)}
    assert len(items) == 8 and len(answers_asked()) == 8
    france = next(i for i in items.values() if i.deployment == "small" and i.answer == "Paris")
    assert france.scores == {"exact_match": 1.0, "similarity": 1.0, "judge": 7.0}
    assert france.notes == {"judge": "Correct and short."}
    assert (france.prompt_tokens, france.completion_tokens, france.scoring_tokens) == (10, 2, 16)
    serving_tasks.flush_usage()
    calls = UsageRecord.objects.filter(organization=setup.organization)
    assert calls.count() == 8 * 3  # an answer, a judgement and an embedding per item
    assert {c.model for c in calls} == {"small", "other", "minilm"}


def test_an_evaluations_own_calls_stay_out_of_the_invocation_log(setup: Setup) -> None:
    """Its answers and judgements are the platform's, not the organisation's traffic: logged, they would
    flow back into datasets made from logs."""
    InvocationLogSettings.objects.create(organization=setup.organization, enabled=True, sample_rate=1.0)
    assert evaluations.run_blocking(create(setup).pk) == EvaluationStatus.SUCCEEDED
    assert redis.Redis.from_url(settings.REDIS_URL).llen(QUEUE_KEY) == 0


def test_results_and_progress_read_from_the_items(setup: Setup) -> None:
    evaluation = create(setup)
    evaluations.run_blocking(evaluation.pk)
    evaluation.refresh_from_db()
    progress = evaluations.progress(evaluation)
    assert (progress["done"], progress["total"], progress["errors"]) == (8, 8, 0)
    assert progress["tokens"] == 8 * (12 + 16)
    small, _ = evaluations.results(evaluation)
    assert small["deployment"] == "small" and small["items"] == 4
    assert small["scores"]["exact_match"]["mean"] == 0.25  # only Paris matches
    assert small["scores"]["judge"] == {"scored": 4, "unscored": 0, "mean": 7.0, "ci95": [7.0, 7.0]}


def test_running_a_finished_evaluation_again_changes_nothing(setup: Setup) -> None:
    evaluation = create(setup)
    evaluations.run_blocking(evaluation.pk)
    asked = len(StandIn.prompts)
    assert evaluations.run_blocking(evaluation.pk) == ""
    assert len(StandIn.prompts) == asked
    assert EvaluationItem.objects.filter(evaluation=evaluation).count() == 8


def test_a_run_resumes_after_a_lost_worker_answering_only_what_is_missing(setup: Setup) -> None:
    evaluation = create(setup, deployments=["small"], part="all")
    evaluations.run_blocking(evaluation.pk)
    kept = EvaluationItem.objects.filter(evaluation=evaluation, item_id__in=["1", "2"])
    kept_ids = set(kept.values_list("pk", flat=True))
    EvaluationItem.objects.filter(evaluation=evaluation).exclude(pk__in=kept_ids).delete()
    # As a worker killed in the middle leaves it: RUNNING, its lease lapsed.
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.RUNNING, lease_until=timezone.now() - datetime.timedelta(seconds=1)
    )
    StandIn.prompts.clear()
    assert evaluation.pk in evaluations.unattended()
    assert evaluations.run_blocking(evaluation.pk) == EvaluationStatus.SUCCEEDED
    assert sorted(answers_asked()) == sorted(q for q, _ in QUESTIONS[2:])
    items = EvaluationItem.objects.filter(evaluation=evaluation)
    assert items.count() == 4 and kept_ids <= set(items.values_list("pk", flat=True))
    events = Evaluation.objects.get(pk=evaluation.pk).events
    assert events.filter(message__startswith="Resumed: 2 of 4 answers were already stored").exists()


def test_an_evaluation_held_by_a_live_worker_is_not_run_twice(setup: Setup) -> None:
    evaluation = create(setup)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.RUNNING, lease_until=timezone.now() + datetime.timedelta(seconds=60)
    )
    assert evaluations.run_blocking(evaluation.pk) == ""
    assert StandIn.prompts == [] and evaluation.pk not in evaluations.unattended()


def test_a_cancelled_evaluation_stops_after_the_items_in_flight(setup: Setup, monkeypatch: Any) -> None:
    monkeypatch.setattr(evaluations, "RENEW_SECONDS", 0.2)
    StandIn.delay = 0.3
    evaluation = create(setup, concurrency=1)
    runner = threading.Thread(target=evaluations.run_blocking, args=(evaluation.pk,))
    runner.start()
    deadline = time.monotonic() + 30
    while not EvaluationItem.objects.filter(evaluation=evaluation).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert evaluations.cancel_evaluation(evaluation)
    runner.join(timeout=30)
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.CANCELLED
    assert evaluation.status_message.startswith("Cancelled with ")
    assert 1 <= EvaluationItem.objects.filter(evaluation=evaluation).count() < 8


def test_a_deployment_that_fails_is_stored_as_errors_and_not_scored(setup: Setup) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    deploy(setup.organization, "broken", CHAT, closed)
    evaluation = create(setup, deployments=["small", "broken"], scorer_specs=[{"kind": "exact_match"}])
    evaluations.run_blocking(evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.SUCCEEDED
    assert "4 calls failed" in evaluation.status_message
    broken = EvaluationItem.objects.filter(evaluation=evaluation, deployment="broken")
    assert broken.count() == 4
    assert all(i.error and i.scores == {"exact_match": None} for i in broken)
    small, failed = evaluations.results(evaluation)
    assert (small["errors"], failed["errors"]) == (0, 4)
    assert failed["scores"]["exact_match"]["mean"] is None


def test_a_judgement_that_is_not_json_is_counted_not_guessed(setup: Setup, monkeypatch: Any) -> None:
    monkeypatch.setattr(standin, "JUDGE_VERDICT", "I would give it an eight.")
    evaluation = create(setup, deployments=["small"], scorer_specs=[{"kind": "judge", "deployment": "small"}])
    evaluations.run_blocking(evaluation.pk)
    evaluation.refresh_from_db()
    assert "4 judgements could not be parsed" in evaluation.status_message
    [small] = evaluations.results(evaluation)
    assert small["scores"]["judge"] == {"scored": 0, "unscored": 4, "mean": None, "ci95": None}


def test_an_item_whose_scoring_raises_is_stored_as_an_error_and_the_run_goes_on(
    setup: Setup, monkeypatch: Any
) -> None:
    async def broken(self: Any, item: Any, ask: Any) -> Any:
        if "Peru" in item.messages[-1]["content"]:
            raise ValueError("a scorer bug")
        return scorers.Score(1.0)

    monkeypatch.setattr(scorers.ExactMatch, "score", broken)
    evaluation = create(setup, deployments=["small"], scorer_specs=[{"kind": "exact_match"}])
    assert evaluations.run_blocking(evaluation.pk) == EvaluationStatus.SUCCEEDED
    items = EvaluationItem.objects.filter(evaluation=evaluation)
    assert items.count() == 4
    [failed] = items.exclude(error="")
    assert failed.error == "The item could not be answered or scored (ValueError)."


def test_an_answer_or_judgement_holding_a_nul_character_is_stored_without_it(
    setup: Setup, monkeypatch: Any
) -> None:
    monkeypatch.setattr(standin, "JUDGE_VERDICT", '{"score": 7, "reason": "Correct\\u0000 and short."}')
    evaluation = create(setup, deployments=["small"], scorer_specs=[{"kind": "judge", "deployment": "small"}])
    assert evaluations.run_blocking(evaluation.pk) == EvaluationStatus.SUCCEEDED
    notes = EvaluationItem.objects.filter(evaluation=evaluation).values_list("notes", flat=True)
    assert [note["judge"] for note in notes] == ["Correct and short."] * 4


@pytest.mark.parametrize(
    ("stored", "problem"),
    [(None, "are missing from the object store"), (b"not gzip", "cannot be read (BadGzipFile)")],
    ids=["missing", "unreadable"],
)
def test_a_dataset_whose_stored_records_are_gone_or_unreadable_fails_the_evaluation_once(
    setup: Setup, configured_store: FolderStore, stored: bytes | None, problem: str
) -> None:
    if stored is None:
        configured_store.delete(setup.dataset.key)
    else:
        configured_store.put(setup.dataset.key, stored)
    evaluation = create(setup)
    assert evaluations.run_blocking(evaluation.pk) == EvaluationStatus.FAILED
    evaluation.refresh_from_db()
    assert problem in evaluation.status_message and "upload it again" in evaluation.status_message
    assert evaluation.pk not in evaluations.unattended()
