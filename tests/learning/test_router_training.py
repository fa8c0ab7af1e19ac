"""Training a router through its Celery task, on an evaluation with a known ground truth (see
tests/learning/routerdata.py): a small candidate right on arithmetic and wrong on essays, a large one
right on both and ten times the cost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from learning import router_service, router_training, routing
from learning.evaluations import Refused
from learning.models import (
    Feedback,
    Router,
    RouterSample,
    RouterTraining,
    RouterVersion,
    SampleStatus,
    TrainingStatus,
)
from learning.storage import FolderStore
from learning.tasks import train_router
from marketplace.accounts.models import Organization
from serving.models import UsageRecord
from tests.learning.conftest import make_deployment
from tests.learning.routerdata import Setup, make_evaluation, router_fields


@pytest.fixture
def setup(acme: Organization, configured_store: FolderStore) -> Setup:
    return make_evaluation(configured_store, acme)


@pytest.fixture
def router(setup: Setup, owner: AbstractUser) -> Router:
    return router_service.create_router(organization=setup.organization, user=owner, **router_fields())


def train(router: Router, setup: Setup, owner: AbstractUser, **kwargs: Any) -> RouterTraining:
    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    train_router.apply(args=[training.pk], kwargs=kwargs)
    training.refresh_from_db()
    return training


def words_embedder(texts: list[str]) -> Any:
    """A stand-in embedding: whether the prompt has digits and its length in words (a semantic model
    would tell sums from essays as well)."""

    async def embed(batch: list[str]) -> list[list[float]]:
        return [[float(any(c.isdigit() for c in t)), len(t.split()) / 20] for t in batch]

    return embed


def test_the_trained_router_keeps_95_percent_of_the_large_quality_sending_most_prompts_to_the_small(
    router: Router, setup: Setup, owner: AbstractUser
) -> None:
    training = train(router, setup, owner)
    assert training.status == TrainingStatus.SUCCEEDED, training.status_message
    version = RouterVersion.objects.get(router=router, kind="ngram")
    at_tau = version.report["at_tau"]
    assert at_tau["quality_retained"] >= 0.95
    assert at_tau["shares"]["small"] >= 0.5
    assert at_tau["cost_saved"] > 0.4


def test_routing_the_held_out_prompts_through_the_activated_version_matches_the_ground_truth(
    router: Router, setup: Setup, owner: AbstractUser
) -> None:
    train(router, setup, owner)
    router_service.activate(router, RouterVersion.objects.get(router=router, kind="ngram"))
    router_service.update_router(router, mode="active")
    route = routing.routes_of(setup.organization.pk)["auto"]
    heldout = [(text, sums) for text, sums in setup.prompts if router_training.is_heldout(text)]
    choices = [routing.decide(route, text, lambda name: True).deployment for text, _ in heldout]
    quality = np.mean(
        [
            1.0 if sums or chosen == "large" else 0.0
            for (_, sums), chosen in zip(heldout, choices, strict=True)
        ]
    )
    assert route.version is not None
    assert quality >= 0.95
    assert choices.count("small") / len(choices) >= 0.5


def test_both_predictor_kinds_are_reported_on_the_same_held_out_split(
    setup: Setup, owner: AbstractUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = router_service.create_router(
        organization=setup.organization, user=owner, **router_fields(embedding_deployment="small")
    )
    monkeypatch.setattr(router_training, "gateway_embedder", lambda org, deployment: words_embedder([]))
    training = train(router, setup, owner)
    assert training.status == TrainingStatus.SUCCEEDED, training.status_message
    reports = {v.kind: v.report for v in RouterVersion.objects.filter(training=training)}
    assert set(reports) == {"ngram", "semantic"}
    assert reports["ngram"]["heldout_items"] == reports["semantic"]["heldout_items"] > 0
    assert reports["semantic"]["at_tau"]["quality_retained"] >= 0.95
    assert reports["semantic"]["at_tau"]["shares"]["small"] >= 0.5


def test_a_second_run_of_the_same_training_writes_no_second_version(
    router: Router, setup: Setup, owner: AbstractUser
) -> None:
    training = train(router, setup, owner)
    RouterTraining.objects.filter(pk=training.pk).update(status=TrainingStatus.RUNNING, lease_until=None)
    assert train_router.apply(args=[training.pk]).get() == TrainingStatus.SUCCEEDED
    assert RouterVersion.objects.filter(router=router).count() == 1
    assert train_router.apply(args=[training.pk]).get() == ""  # finished: left alone


def test_retraining_numbers_the_new_version_next(router: Router, setup: Setup, owner: AbstractUser) -> None:
    train(router, setup, owner)
    train(router, setup, owner)
    assert sorted(RouterVersion.objects.filter(router=router).values_list("version", flat=True)) == [1, 2]
    first, second = RouterVersion.objects.filter(router=router).order_by("version")
    assert (
        first.report["at_tau"] == second.report["at_tau"]
    )  # the same data, the same split, the same figures


def test_too_few_items_fail_the_training_saying_how_many_there_are(
    acme: Organization, configured_store: FolderStore, owner: AbstractUser
) -> None:
    small = make_evaluation(configured_store, acme, count=8)
    router = router_service.create_router(organization=acme, user=owner, **router_fields())
    training = train(router, small, owner)
    assert training.status == TrainingStatus.FAILED
    assert "Too few items: 8 prompts" in training.status_message
    assert "evaluate a larger dataset" in training.status_message


def test_an_evaluation_without_every_candidate_is_refused_naming_the_missing_one(
    acme: Organization, configured_store: FolderStore, owner: AbstractUser
) -> None:
    only_small = make_evaluation(configured_store, acme, count=20, deployments=("small",))
    make_deployment(acme, "large")
    router = router_service.create_router(organization=acme, user=owner, **router_fields())
    with pytest.raises(Refused, match="did not run large") as refused:
        router_training.start_training(
            router=router, evaluation=only_small.evaluation, scorer="exact_match", user=owner
        )
    assert refused.value.field == "evaluation"


def test_an_unknown_scorer_is_refused(router: Router, setup: Setup, owner: AbstractUser) -> None:
    with pytest.raises(Refused) as refused:
        router_training.start_training(router=router, evaluation=setup.evaluation, scorer="judge", user=owner)
    assert refused.value.field == "scorer"


def test_judged_samples_with_feedback_become_training_targets(
    router: Router, setup: Setup, owner: AbstractUser
) -> None:
    RouterSample.objects.bulk_create(
        RouterSample(
            router=router, request_id=f"r{i}", prompt=f"Name the capital of country number {i}.",
            answers={"small": {"prompt_tokens": 5, "completion_tokens": 5}, "large": {}},
            scores={"small": 1.0, "large": 1.0}, status=SampleStatus.SCORED,
        )
        for i in range(12)
    )  # fmt: skip
    Feedback.objects.create(organization=setup.organization, request_id="r0", score=0.0, deployment="small")
    examples = router_training.sample_examples(router, ["small", "large"])
    by_text = {e.text: e.targets for e in examples}
    assert len(examples) == 12
    assert by_text["Name the capital of country number 0."] == [0.0, 1.0]  # the app's rating wins
    training = train(router, setup, owner)
    version = RouterVersion.objects.get(training=training)
    assert version.report["from_samples"] == 12


def test_a_rating_posted_before_its_call_was_metered_still_replaces_the_served_answers_score(
    router: Router, setup: Setup
) -> None:
    RouterSample.objects.create(
        router=router, request_id="early", prompt="Name the capital of France.",
        answers={"small": {}, "large": {}}, scores={"small": 1.0, "large": 1.0}, status=SampleStatus.SCORED,
    )  # fmt: skip
    # Rated from the sample alone: the call's usage record was not flushed yet, so who served is unknown.
    Feedback.objects.create(organization=setup.organization, request_id="early", score=0.0, router="auto")
    UsageRecord.objects.create(
        request_id="early", organization=setup.organization, deployment=setup.organization.deployments.get(
        name="small"), model="auto", route="chat.completions", status_code=200, router="auto",
        router_choice="small", created_at=timezone.now(),
    )  # fmt: skip
    (example,) = router_training.sample_examples(router, ["small", "large"])
    assert example.targets == [0.0, 1.0]


def test_a_training_under_way_is_looked_for_with_the_router_locked(
    router: Router, setup: Setup, owner: AbstractUser
) -> None:
    # Two requests at once would both find none under way and both start one; with the router's row
    # locked first, the second waits for the first to commit and then finds it.
    with CaptureQueriesContext(connection) as queries:
        router_training.start_training(
            router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
        )
    sql = [query["sql"] for query in queries.captured_queries]
    locked = next(i for i, q in enumerate(sql) if '"learning_router"' in q and "FOR UPDATE" in q)
    looked = next(i for i, q in enumerate(sql) if '"learning_routertraining"' in q and "SELECT" in q)
    assert locked < looked
