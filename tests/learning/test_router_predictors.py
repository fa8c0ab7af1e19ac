"""Predictors: stored and loaded without pickles, the one-prompt path agreeing with scikit-learn's,
gateway processes loading a version once, and the report's figures on hand-checked data."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser

from learning import predictors, router_report, router_service, routing
from learning.models import RouterVersion
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from tests.learning.routerdata import make_evaluation, prompts, router_fields

PAIRS = prompts(300)
TEXTS = [text for text, _ in PAIRS]
TARGETS = np.array([[1.0 if sums else 0.0, 1.0] for _, sums in PAIRS])


@pytest.fixture(scope="module")
def ngram() -> predictors.NgramPredictor:
    return predictors.NgramPredictor.fit(["small", "large"], TEXTS, TARGETS)


def test_the_ngram_predictor_tells_the_classes_apart(ngram: predictors.NgramPredictor) -> None:
    assert ngram.predict("What is 4 plus 5?")["small"] > 0.8
    assert ngram.predict("Write an essay about glaciers and its history.")["small"] < 0.3


def test_the_one_prompt_path_gives_what_the_vectorizer_gives(ngram: predictors.NgramPredictor) -> None:
    texts = [*TEXTS[:50], "Ünïcode ça va? 東京", "", "   ", "a", "x" * 5000, "What is 1 plus 2? " * 40]
    one = np.array([[ngram.predict(t)[n] for n in ngram.candidates] for t in texts])
    assert np.allclose(one, ngram.predict_many(texts), atol=1e-12)


def test_a_stored_ngram_predictor_predicts_the_same_after_loading(ngram: predictors.NgramPredictor) -> None:
    loaded = predictors.load(predictors.dump(ngram))
    assert isinstance(loaded, predictors.NgramPredictor)
    assert [loaded.predict(t) for t in TEXTS[:20]] == [ngram.predict(t) for t in TEXTS[:20]]


def test_a_stored_semantic_predictor_predicts_the_same_after_loading() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 8))
    semantic = predictors.SemanticPredictor.fit(["small", "large"], vectors, TARGETS[:50])
    loaded = predictors.load(predictors.dump(semantic))
    assert loaded.needs_embedding
    assert loaded.predict("", vectors[3]) == semantic.predict("", vectors[3])
    # Its own nearest neighbour (at distance ~0) outweighs the others.
    assert loaded.predict("", vectors[3]) == pytest.approx({"small": TARGETS[3][0], "large": 1.0}, abs=1e-3)


def test_the_semantic_one_prompt_path_gives_what_the_neighbours_model_gives() -> None:
    rng = np.random.default_rng(2)
    targets = rng.random((300, 2))
    semantic = predictors.SemanticPredictor.fit(["a", "b"], rng.normal(size=(300, 16)), targets)
    queries = rng.normal(size=(40, 16))
    one = np.array([[semantic.predict("", q)[n] for n in ("a", "b")] for q in queries])
    assert np.allclose(one, semantic.predict_many(queries), atol=1e-4)


def test_the_semantic_predictor_refuses_to_guess_without_an_embedding() -> None:
    semantic = predictors.SemanticPredictor.fit(["a", "b"], np.eye(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="embedding"):
        semantic.predict("hi")


def test_a_pickle_is_never_loaded() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array([{"kind": "ngram"}], dtype=object))
    with pytest.raises(predictors.PredictorError):
        predictors.load(buffer.getvalue())
    with pytest.raises(predictors.PredictorError):
        predictors.load(pickle.dumps({"kind": "ngram"}))


def test_bytes_that_are_no_predictor_are_refused() -> None:
    with pytest.raises(predictors.PredictorError):
        predictors.load(b"not a zip at all")


def test_gateway_processes_load_a_version_once_and_pick_up_a_newly_activated_one(
    acme: Organization, owner: AbstractUser, configured_store: FolderStore,
    monkeypatch: pytest.MonkeyPatch, ngram: predictors.NgramPredictor,
) -> None:  # fmt: skip
    make_evaluation(configured_store, acme, count=10)
    router = router_service.create_router(organization=acme, user=owner, **router_fields())
    assert routing.routes_of(acme.pk)["auto"].version is None
    versions = []
    for number in (1, 2):
        key = f"routers/test/{router.pk}-{number}.npz"
        configured_store.put(key, predictors.dump(ngram))
        versions.append(
            RouterVersion.objects.create(
                router=router,
                version=number,
                kind="ngram",
                candidates=["small", "large"],
                key=key,
                sha256="-",
            )
        )
    reads = []
    original = configured_store.get
    monkeypatch.setattr(configured_store, "get", lambda key: reads.append(key) or original(key))
    router_service.activate(router, versions[0])
    for _ in range(3):
        route = routing.routes_of(acme.pk)["auto"]
    assert route.version == 1 and len(reads) == 1
    router_service.activate(router, versions[1])
    assert routing.routes_of(acme.pk)["auto"].version == 2 and len(reads) == 2


def test_a_version_missing_from_the_store_routes_as_untrained(
    acme: Organization, owner: AbstractUser, configured_store: FolderStore
) -> None:
    make_evaluation(configured_store, acme, count=10)
    router = router_service.create_router(organization=acme, user=owner, **router_fields())
    version = RouterVersion.objects.create(
        router=router,
        version=9,
        kind="ngram",
        candidates=["small", "large"],
        key="routers/gone.npz",
        sha256="-",
    )
    router_service.activate(router, version)
    route = routing.routes_of(acme.pk)["auto"]
    assert route.version is None and route.predictor is None


# --- The report's figures, on data small enough to check by hand -------------------------------------------


def test_the_report_figures_on_a_hand_checked_example() -> None:
    # Four prompts; columns: cheap (1 USD per call), strong (4 USD, the fallback).
    true = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    predicted = np.array([[0.95, 1.0], [0.9, 1.0], [0.2, 1.0], [0.1, 1.0]])
    costs = np.array([[1.0, 4.0]] * 4)
    report = router_report.build(
        candidates=["cheap", "strong"], true=true, predicted=predicted, call_costs=costs,
        costs_per_1k=np.array([1.0, 4.0]), fallback=1, tau=0.1,
    )  # fmt: skip
    at = report["at_tau"]
    assert at["shares"] == {"cheap": 0.5, "strong": 0.5}  # 0.95 and 0.9 are within 10% of 1.0
    assert at["quality"] == 1.0 and at["quality_retained"] == 1.0
    assert at["cost_per_call_usd"] == 2.5 and at["cost_saved"] == 0.375  # (1 + 1 + 4 + 4) / 4 vs 4
    assert at["random_mix_quality"] == 0.75  # half-way in cost between cheap (0.5) and strong (1.0)
    assert report["baselines"]["always_cheapest"] == {"quality": 0.5, "cost_per_call_usd": 1.0}
    assert report["curve"][0]["tau"] == 0.0 and report["curve"][0]["shares"]["strong"] == 1.0
    assert report["curve"][-1]["shares"]["cheap"] == 1.0  # τ = 100%: anything goes, so the cheapest
    gap = report["gap_recovered"]
    # A perfect ordering recovers the gap linearly up to 50% of calls to the strong one, then stays at 1.
    assert gap["cpt50"] == 0.25 and gap["cpt80"] == 0.4
    assert gap["apgr"] == pytest.approx(0.75, abs=0.01)


def test_the_confidence_intervals_hold_the_estimate_and_a_random_router_recovers_half_the_gap() -> None:
    rng = np.random.default_rng(3)
    true = np.column_stack([rng.integers(0, 2, 400).astype(float), np.ones(400)])
    report = router_report.build(
        candidates=["cheap", "strong"], true=true, predicted=rng.random((400, 2)),
        call_costs=np.array([[1.0, 3.0]] * 400), costs_per_1k=np.array([1.0, 3.0]), fallback=1, tau=0.2,
    )  # fmt: skip
    at = report["at_tau"]
    low, high = at["quality_retained_ci95"]
    assert low <= at["quality_retained"] <= high and low < high
    low, high = at["cost_saved_ci95"]
    assert low <= at["cost_saved"] <= high
    assert report["gap_recovered"]["apgr"] == pytest.approx(0.5, abs=0.08)


def test_with_the_cheapest_also_the_strongest_there_is_no_gap_to_report() -> None:
    report = router_report.build(
        candidates=["cheap", "dear"], true=np.ones((5, 2)), predicted=np.ones((5, 2)),
        call_costs=np.array([[1.0, 2.0]] * 5), costs_per_1k=np.array([1.0, 2.0]), fallback=1, tau=0.1,
    )  # fmt: skip
    assert report["gap_recovered"]["apgr"] is None and "no gap" in report["gap_recovered"]["note"]
