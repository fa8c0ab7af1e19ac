"""/api/routers/ and /api/feedback/: what owners, members, API keys and outsiders may do, and every
malformed request answered 400 naming the field, with nothing written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.utils import timezone
from rest_framework.test import APIClient

from learning import router_service, router_training
from learning.models import Feedback, Router, RouterTraining, RouterVersion, TrainingStatus
from learning.storage import FolderStore
from learning.tasks import train_router
from marketplace.accounts import services as account_services
from marketplace.accounts.models import ApiKey, Organization
from serving.models import UsageRecord
from tests.learning.conftest import make_deployment
from tests.learning.routerdata import Setup, make_evaluation, router_fields

Client = Callable[[AbstractUser | None], APIClient]


@pytest.fixture
def setup(acme: Organization, globex: Organization, configured_store: FolderStore) -> Setup:
    make_deployment(acme, "embedder")
    make_deployment(globex, "theirs")
    return make_evaluation(configured_store, acme)


@pytest.fixture
def router(setup: Setup, owner: AbstractUser) -> Router:
    return router_service.create_router(organization=setup.organization, user=owner, **router_fields())


def trained(router: Router, setup: Setup, owner: AbstractUser) -> RouterVersion:
    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    train_router.apply(args=[training.pk])
    return RouterVersion.objects.get(training=training)


# --- Creating and validating -------------------------------------------------------------------------------


def test_an_owner_creates_an_untrained_router_that_says_the_fallback_answers(
    client_for: Client, owner: AbstractUser, setup: Setup
) -> None:
    response = client_for(owner).post("/api/routers/", router_fields(), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "untrained: fallback answers"
    assert body["active_version"] is None
    # The evaluation measured both: 1 USD/h vs 10 USD/h for the same tokens and time.
    costs = {c["deployment"]: c["cost_per_1k_tokens_in_use"] for c in body["candidates"]}
    assert costs["large"] == pytest.approx(10 * costs["small"], rel=1e-3)


def test_a_cost_override_is_used_instead_of_the_measured_cost(
    client_for: Client, owner: AbstractUser, setup: Setup
) -> None:
    fields = router_fields(candidates=[{"deployment": "small", "cost_per_1k_tokens": 0.5}, "large"])
    body = client_for(owner).post("/api/routers/", fields, format="json").json()
    assert body["candidates"][0]["cost_per_1k_tokens_in_use"] == 0.5


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"candidates": ["small", "nowhere"]}, "candidates"),
        ({"candidates": ["small", "theirs"]}, "candidates"),  # another organisation's deployment
        ({"candidates": ["small"], "fallback": "small"}, "candidates"),
        ({"candidates": ["small", "small"], "fallback": "small"}, "candidates"),
        ({"candidates": "small,large"}, "candidates"),
        (
            {"candidates": [{"deployment": "small", "cost_per_1k_tokens": -1}, "large"]},
            "candidates[0].cost_per_1k_tokens",
        ),
        (
            {"candidates": [{"deployment": "small", "cost_per_1k_tokens": 10**400}, "large"]},
            "candidates[0].cost_per_1k_tokens",
        ),
        ({"candidates": [{"deployment": "small", "colour": "red"}, "large"]}, "candidates[0].colour"),
        ({"candidates": [42, "large"]}, "candidates[0].deployment"),
        ({"candidates": ["sm\x00all", "large"]}, "candidates[0].deployment"),
        ({"fallback": "embedder"}, "fallback"),
        ({"quality_difference": 1.5}, "quality_difference"),
        ({"quality_difference": -0.1}, "quality_difference"),
        ({"quality_difference": "lots"}, "quality_difference"),
        ({"name": "small"}, "name"),  # a deployment's name
        ({"name": "Not A Label"}, "name"),
        ({"mode": "sometimes"}, "mode"),
        ({"shadow_rate": 2}, "shadow_rate"),
        ({"embedding_deployment": "nowhere"}, "embedding_deployment"),
        ({"judge_deployment": "theirs"}, "judge_deployment"),
        ({"judge_rubric": "Grade it."}, "judge_rubric"),
    ],
)
def test_a_malformed_router_is_refused_naming_the_field_and_nothing_is_written(
    client_for: Client, owner: AbstractUser, setup: Setup, fields: dict[str, Any], field: str
) -> None:
    response = client_for(owner).post("/api/routers/", router_fields(**fields), format="json")
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not Router.objects.exists()


def test_a_second_router_of_the_same_name_is_refused(
    client_for: Client, owner: AbstractUser, router: Router
) -> None:
    response = client_for(owner).post("/api/routers/", router_fields(), format="json")
    assert response.status_code == 400
    assert "already has a router named auto" in response.json()["name"][0]


def test_a_member_reads_routers_but_cannot_create_change_or_delete_them(
    client_for: Client, member: AbstractUser, router: Router
) -> None:
    client = client_for(member)
    assert [r["name"] for r in client.get("/api/routers/").json()["results"]] == ["auto"]
    assert client.post("/api/routers/", router_fields(name="other"), format="json").status_code == 403
    assert (
        client.patch(f"/api/routers/{router.pk}/", {"quality_difference": 0.2}, format="json").status_code
        == 403
    )
    assert client.delete(f"/api/routers/{router.pk}/").status_code == 403
    assert Router.objects.get(pk=router.pk).quality_difference == 0.1


def test_an_owner_changes_tau_and_the_mode(client_for: Client, owner: AbstractUser, router: Router) -> None:
    response = client_for(owner).patch(
        f"/api/routers/{router.pk}/", {"quality_difference": 0.25, "mode": "active"}, format="json"
    )
    assert response.status_code == 200
    router.refresh_from_db()
    assert (router.quality_difference, router.mode) == (0.25, "active")


def test_changing_the_fallback_to_a_non_candidate_is_refused(
    client_for: Client, owner: AbstractUser, router: Router
) -> None:
    response = client_for(owner).patch(f"/api/routers/{router.pk}/", {"fallback": "embedder"}, format="json")
    assert response.status_code == 400 and "fallback" in response.json()
    assert Router.objects.get(pk=router.pk).fallback == "large"


# --- Training, versions, activation, report ----------------------------------------------------------------


def test_train_starts_a_training_and_a_worker_writes_a_version_per_kind(
    client_for: Client, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    response = client_for(owner).post(
        f"/api/routers/{router.pk}/train/",
        {"evaluation": setup.evaluation.pk, "scorer": "exact_match"},
        format="json",
    )
    assert response.status_code == 202, response.json()
    training = RouterTraining.objects.get(pk=response.json()["id"])
    assert training.status == TrainingStatus.PENDING
    train_router.apply(args=[training.pk])
    trainings = client_for(owner).get(f"/api/routers/{router.pk}/trainings/").json()
    assert trainings[0]["status"] == "succeeded" and trainings[0]["progress"] == 1.0
    versions = client_for(owner).get(f"/api/routers/{router.pk}/versions/").json()
    assert [(v["version"], v["kind"]) for v in versions] == [(1, "ngram")]
    assert versions[0]["summary"]["quality_retained"] >= 0.95


@pytest.mark.parametrize(
    ("body", "field"),
    [({"scorer": "exact_match"}, "evaluation"), ({"evaluation": "x", "scorer": "exact_match"}, "evaluation"),
     ({"evaluation": 999999, "scorer": "exact_match"}, "evaluation"), ({"evaluation": 0}, "scorer")],
)  # fmt: skip
def test_a_malformed_training_request_is_refused_naming_the_field(
    client_for: Client, owner: AbstractUser, router: Router, body: dict[str, Any], field: str
) -> None:
    response = client_for(owner).post(f"/api/routers/{router.pk}/train/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.json()
    assert not RouterTraining.objects.exists()


def test_a_second_training_while_one_is_pending_is_refused(
    client_for: Client, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    body = {"evaluation": setup.evaluation.pk, "scorer": "exact_match"}
    assert client_for(owner).post(f"/api/routers/{router.pk}/train/", body, format="json").status_code == 202
    second = client_for(owner).post(f"/api/routers/{router.pk}/train/", body, format="json")
    assert second.status_code == 400 and "already under way" in second.json()["router"][0]


def test_the_report_of_an_untrained_router_says_the_fallback_answers(
    client_for: Client, member: AbstractUser, router: Router
) -> None:
    body = client_for(member).get(f"/api/routers/{router.pk}/report/").json()
    assert body["trained"] is False and body["state"] == "untrained: fallback answers"


def test_activating_a_version_makes_the_report_and_the_state_show_it(
    client_for: Client, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    version = trained(router, setup, owner)
    client = client_for(owner)
    response = client.post(f"/api/routers/{router.pk}/activate/", {"version": version.version}, format="json")
    assert response.status_code == 200
    assert response.json()["active_version"] == {"version": 1, "kind": "ngram"}
    assert response.json()["state"].startswith("shadow: the fallback answers")
    report = client.get(f"/api/routers/{router.pk}/report/").json()
    assert report["trained"] is True and report["active"] is True
    assert report["at_router_tau"]["quality_retained"] >= 0.95
    assert {"curve", "baselines", "gap_recovered", "at_tau"} <= set(report)
    assert len(report["curve"]) == 21
    back = client.post(f"/api/routers/{router.pk}/activate/", {"version": None}, format="json")
    assert back.json()["state"] == "untrained: fallback answers"


def test_the_report_follows_a_changed_tau_on_its_curve(
    client_for: Client, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    trained(router, setup, owner)
    router_service.update_router(router, quality_difference=1.0)
    report = client_for(owner).get(f"/api/routers/{router.pk}/report/?version=1").json()
    assert report["at_router_tau"]["tau"] == 1.0
    assert report["at_router_tau"]["shares"]["small"] == 1.0  # any quality will do: always the cheapest


@pytest.mark.parametrize("body", [{"version": 7}, {"version": "one"}, {}, {"version": 10**20}])
def test_activating_an_unknown_or_malformed_version_is_refused(
    client_for: Client, owner: AbstractUser, router: Router, body: dict[str, Any]
) -> None:
    response = client_for(owner).post(f"/api/routers/{router.pk}/activate/", body, format="json")
    assert response.status_code == 400 and "version" in response.json()


def test_a_report_of_a_malformed_or_missing_version_is_refused(
    client_for: Client, owner: AbstractUser, router: Router
) -> None:
    assert client_for(owner).get(f"/api/routers/{router.pk}/report/?version=x").status_code == 400
    assert client_for(owner).get(f"/api/routers/{router.pk}/report/?version=5").status_code == 404
    assert client_for(owner).get(f"/api/routers/{router.pk}/report/?version={10**20}").status_code == 404


def test_a_member_can_neither_train_nor_activate(
    client_for: Client, member: AbstractUser, router: Router, setup: Setup
) -> None:
    client = client_for(member)
    body = {"evaluation": setup.evaluation.pk, "scorer": "exact_match"}
    assert client.post(f"/api/routers/{router.pk}/train/", body, format="json").status_code == 403
    assert (
        client.post(f"/api/routers/{router.pk}/activate/", {"version": None}, format="json").status_code
        == 403
    )


# --- Outsiders ---------------------------------------------------------------------------------------------


def test_an_outsider_sees_none_of_the_routers(
    client_for: Client, outsider: AbstractUser, router: Router
) -> None:
    assert client_for(outsider).get("/api/routers/").json()["results"] == []


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None), ("patch", "", {"quality_difference": 0.5}), ("put", "", router_fields()),
        ("delete", "", None), ("post", "train/", {"evaluation": 1, "scorer": "exact_match"}),
        ("get", "trainings/", None), ("get", "versions/", None), ("post", "activate/", {"version": None}),
        ("get", "report/", None),
    ],
)  # fmt: skip
def test_an_outsider_can_neither_see_nor_touch_a_router(
    client_for: Client, outsider: AbstractUser, router: Router, method: str, suffix: str, body: Any
) -> None:
    response = getattr(client_for(outsider), method)(
        f"/api/routers/{router.pk}/{suffix}", body, format="json"
    )
    assert response.status_code == 404
    router.refresh_from_db()
    assert router.quality_difference == 0.1 and not RouterTraining.objects.exists()


def test_an_outsider_cannot_create_a_router_in_another_organisation_or_over_its_deployments(
    client_for: Client, outsider: AbstractUser, setup: Setup
) -> None:
    client = client_for(outsider)
    into_acme = client.post("/api/routers/", router_fields(organization="acme"), format="json")
    assert into_acme.status_code in (400, 404) and "organization" in str(into_acme.json())
    over_acme = client.post("/api/routers/", router_fields(), format="json")
    assert over_acme.status_code == 400 and "No deployment named" in over_acme.json()["candidates"][0]
    assert not Router.objects.exists()


def test_an_api_key_limited_to_other_names_does_not_see_the_router(
    acme: Organization, router: Router
) -> None:
    _, limited = account_services.create_api_key(
        organization=acme, name="small only", created_by=None, expires_at=None, allowed_deployments=["small"]
    )
    key, routed = account_services.create_api_key(
        organization=acme, name="router", created_by=None, expires_at=None, allowed_deployments=["small"]
    )
    # Set directly: whether a key's service accepts a router's name is the accounts side's to decide.
    ApiKey.objects.filter(pk=key.pk).update(allowed_deployments=["auto"])
    for secret, seen in ((limited, []), (routed, ["auto"])):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert [r["name"] for r in client.get("/api/routers/").json()["results"]] == seen


# --- Feedback ----------------------------------------------------------------------------------------------


def usage(organization: Organization, request_id: str, model: str = "auto") -> UsageRecord:
    deployment = organization.deployments.filter(name="large").first()
    return UsageRecord.objects.create(
        request_id=request_id, organization=organization, deployment=deployment, model=model,
        route="chat.completions", status_code=200, router="auto" if model == "auto" else "",
        router_choice="large" if model == "auto" else "", created_at=timezone.now(),
    )  # fmt: skip


def test_an_app_rates_an_answer_and_a_later_rating_replaces_it(
    api_key_client: Callable[[Organization], tuple[APIClient, str]], acme: Organization, setup: Setup
) -> None:
    usage(acme, "req-1")
    client, _ = api_key_client(acme)
    first = client.post(
        "/api/feedback/", {"request_id": "req-1", "score": 0.2, "text": "Wrong."}, format="json"
    )
    assert first.status_code == 201, first.json()
    assert first.json()["deployment"] == "large" and first.json()["router"] == "auto"
    again = client.post("/api/feedback/", {"request_id": "req-1", "score": 0.9}, format="json")
    assert again.status_code == 200
    feedback = Feedback.objects.get()
    assert (feedback.score, feedback.text, feedback.api_key is not None) == (0.9, "", True)


def test_a_signed_in_member_rates_an_answer(client_for: Client, member: AbstractUser, setup: Setup) -> None:
    usage(setup.organization, "req-2", model="large")
    response = client_for(member).post("/api/feedback/", {"request_id": "req-2", "score": 1}, format="json")
    assert response.status_code == 201
    assert Feedback.objects.get().created_by == member


@pytest.mark.parametrize(
    ("body", "field"),
    [({"request_id": "req-1", "score": 1.5}, "score"), ({"request_id": "req-1", "score": "good"}, "score"),
     ({"score": 0.5}, "request_id"), ({"request_id": "a b/c", "score": 0.5}, "request_id"),
     ({"request_id": "req-1", "score": 0.5, "text": "x" * 2001}, "text")],
)  # fmt: skip
def test_malformed_feedback_is_refused_naming_the_field(
    client_for: Client, member: AbstractUser, setup: Setup, body: dict[str, Any], field: str
) -> None:
    usage(setup.organization, "req-1")
    response = client_for(member).post("/api/feedback/", body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not Feedback.objects.exists()


def test_feedback_on_an_unknown_request_is_not_found(
    client_for: Client, member: AbstractUser, setup: Setup
) -> None:
    response = client_for(member).post("/api/feedback/", {"request_id": "nope", "score": 0.5}, format="json")
    assert response.status_code == 404 and "No request nope" in response.json()["detail"]


def test_an_outsider_cannot_rate_or_see_ratings_of_another_organisations_answers(
    client_for: Client, outsider: AbstractUser, member: AbstractUser, setup: Setup
) -> None:
    usage(setup.organization, "req-3")
    client_for(member).post("/api/feedback/", {"request_id": "req-3", "score": 0.5}, format="json")
    client = client_for(outsider)
    assert (
        client.post("/api/feedback/", {"request_id": "req-3", "score": 0.0}, format="json").status_code == 404
    )
    assert client.get("/api/feedback/").json()["results"] == []
    assert Feedback.objects.get().score == 0.5


def test_a_key_limited_to_other_names_cannot_rate_a_routed_answer(acme: Organization, setup: Setup) -> None:
    usage(acme, "req-4")
    _, secret = account_services.create_api_key(
        organization=acme, name="small only", created_by=None, expires_at=None, allowed_deployments=["small"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert (
        client.post("/api/feedback/", {"request_id": "req-4", "score": 1}, format="json").status_code == 404
    )


def test_listing_routers_costs_the_same_queries_however_many_there_are(
    client_for: Client, owner: AbstractUser, router: Router, setup: Setup, django_assert_max_num_queries: Any
) -> None:
    version = trained(router, setup, owner)
    router_service.activate(router, version)
    client = client_for(owner)
    with django_assert_max_num_queries(8) as one:
        client.get("/api/routers/")
    for number in range(5):
        router_service.create_router(
            organization=setup.organization, user=owner, **router_fields(name=f"auto-{number}")
        )
    Router.objects.update(active_version=version)  # each reads its version: no query per router
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert len(client.get("/api/routers/").json()["results"]) == 6


def test_the_report_shows_the_other_kind_trained_on_the_same_split(
    client_for: Client, owner: AbstractUser, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def embed(batch: list[str]) -> list[list[float]]:
        return [[float(any(c.isdigit() for c in text)), 1.0] for text in batch]

    monkeypatch.setattr(router_training, "gateway_embedder", lambda organization, deployment: embed)
    router = router_service.create_router(
        organization=setup.organization, user=owner, **router_fields(embedding_deployment="embedder")
    )
    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    train_router.apply(args=[training.pk])
    report = client_for(owner).get(f"/api/routers/{router.pk}/report/?version=1").json()
    assert report["kind"] == "ngram"
    assert [(other["version"], other["kind"]) for other in report["same_split"]] == [(2, "semantic")]
    assert len(report["same_split"][0]["curve"]) == 21


def test_a_daily_shadow_token_cap_beyond_what_can_be_stored_is_refused_naming_the_field(
    client_for: Client, owner: AbstractUser, setup: Setup
) -> None:
    fields = router_fields(shadow_tokens_per_day=10**10)
    response = client_for(owner).post("/api/routers/", fields, format="json")
    assert response.status_code == 400 and "shadow_tokens_per_day" in response.json(), response.content
    assert not Router.objects.exists()


def key_client(organization: Organization, names: list[str] | None) -> APIClient:
    key, secret = account_services.create_api_key(
        organization=organization, name="key", created_by=None, expires_at=None
    )
    # Set directly: whether a key's service accepts a router's name is the accounts side's to decide.
    ApiKey.objects.filter(pk=key.pk).update(allowed_deployments=names or [])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_a_key_limited_to_a_router_lists_the_ratings_of_calls_through_it_and_only_those(
    acme: Organization, setup: Setup
) -> None:
    usage(acme, "req-5")  # through the router auto, answered by large
    usage(acme, "req-6", model="large")  # large called directly
    whole = key_client(acme, None)
    for request_id in ("req-5", "req-6"):
        rated = whole.post("/api/feedback/", {"request_id": request_id, "score": 1}, format="json")
        assert rated.status_code == 201
    routed, direct = key_client(acme, ["auto"]), key_client(acme, ["large"])
    assert [f["request_id"] for f in routed.get("/api/feedback/").json()["results"]] == ["req-5"]
    assert [f["request_id"] for f in direct.get("/api/feedback/").json()["results"]] == ["req-6"]


def test_a_router_of_the_same_name_created_meanwhile_is_a_400_naming_name_not_a_500(
    client_for: Client, owner: AbstractUser, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = router_service.measured_costs

    def meanwhile(organization: Organization, names: list[str]) -> dict[str, float]:
        # Another request creates the same name between this one's checks and its insert.
        Router.objects.create(organization=organization, name="auto", candidates=[], fallback="")
        return measured(organization, names)

    monkeypatch.setattr(router_service, "measured_costs", meanwhile)
    response = client_for(owner).post("/api/routers/", router_fields(), format="json")
    assert response.status_code == 400 and "already has a router named auto" in response.json()["name"][0]
    assert Router.objects.count() == 1
