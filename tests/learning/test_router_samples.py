"""Shadow-call samples: stored once per request with every answer, queued for judging after commit,
and judged by the router's judge into 0..1 targets (a stand-in judge with known verdicts)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.utils import timezone

from learning import router_service, router_training, routing, tasks
from learning.models import InvocationLogSettings, Router, RouterSample, SampleStatus
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment
from tests.learning.routerdata import router_fields

ANSWERS = {
    "small": {
        "text": "4, wrong",
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "latency_ms": 30,
        "status": 200,
    },
    "large": {
        "text": "4, right",
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "latency_ms": 90,
        "status": 200,
    },
}


@pytest.fixture
def router(acme: Organization, owner: AbstractUser) -> Router:
    for name in ("small", "large", "judge"):
        make_deployment(acme, name)
    return router_service.create_router(
        organization=acme, user=owner, **router_fields(judge_deployment="judge", mode="shadow")
    )


def stand_in_judge(asked: list[dict[str, Any]]) -> Any:
    """Scores 10 an answer that says "right", 1 anything else, as the judge deployment would."""

    async def ask(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        asked.append(payload)
        score = 10 if "4, right" in payload["messages"][0]["content"] else 1
        verdict = json.dumps({"score": score, "reason": "Checked."})
        return 200, {"choices": [{"message": {"content": verdict}}], "usage": {"total_tokens": 50}}

    return ask


def test_a_sample_is_stored_once_and_queued_for_judging_after_commit(
    router: Router, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    queued: list[list[int]] = []
    monkeypatch.setattr(tasks.score_router_samples, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        routing.record_sample(router.pk, "req-1", "What is 2 + 2?", ANSWERS)
        routing.record_sample(router.pk, "req-1", "What is 2 + 2?", ANSWERS)
    sample = RouterSample.objects.get()
    assert sample.answers["large"]["text"] == "4, right" and sample.status == SampleStatus.PENDING
    assert queued == [[sample.pk], [sample.pk]]  # the second record re-queues the same pending sample


def test_the_judge_turns_answers_into_targets_from_0_to_1(router: Router) -> None:
    routing.record_sample(router.pk, "req-1", "What is 2 + 2?", ANSWERS)
    sample = RouterSample.objects.get()
    asked: list[dict[str, Any]] = []
    assert router_training.score_samples([sample.pk], invoke=stand_in_judge(asked)) == 1
    sample.refresh_from_db()
    assert sample.status == SampleStatus.SCORED
    assert sample.scores == {"small": 0.0, "large": 1.0}
    assert {payload["model"] for payload in asked} == {"judge"}
    assert "What is 2 + 2?" in asked[0]["messages"][0]["content"]


def test_a_scored_sample_is_not_judged_again(router: Router) -> None:
    routing.record_sample(router.pk, "req-1", "What is 2 + 2?", ANSWERS)
    sample = RouterSample.objects.get()
    router_training.score_samples([sample.pk], invoke=stand_in_judge([]))
    asked: list[dict[str, Any]] = []
    assert router_training.score_samples([sample.pk], invoke=stand_in_judge(asked)) == 0
    assert asked == []


def test_an_answer_that_failed_is_left_unscored_saying_why(router: Router) -> None:
    answers = {**ANSWERS, "small": {"text": "", "status": 503}}
    routing.record_sample(router.pk, "req-2", "What is 2 + 2?", answers)
    sample = RouterSample.objects.get()
    router_training.score_samples([sample.pk], invoke=stand_in_judge([]))
    sample.refresh_from_db()
    assert sample.scores["small"] is None and sample.notes["small"] == "The deployment did not answer."
    assert sample.scores["large"] == 1.0


def test_a_router_without_a_judge_leaves_its_samples_failed_saying_what_to_set(router: Router) -> None:
    Router.objects.filter(pk=router.pk).update(judge_deployment="")
    routing.record_sample(router.pk, "req-3", "Hi", ANSWERS)
    sample = RouterSample.objects.get()
    router_training.score_samples([sample.pk], invoke=stand_in_judge([]))
    sample.refresh_from_db()
    assert sample.status == SampleStatus.FAILED and "set judge_deployment" in sample.notes[""]


def test_an_unparseable_judgement_is_not_guessed(router: Router) -> None:
    async def rambling(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"choices": [{"message": {"content": "Pretty good, I think."}}]}

    routing.record_sample(router.pk, "req-4", "Hi", ANSWERS)
    sample = RouterSample.objects.get()
    router_training.score_samples([sample.pk], invoke=rambling)
    sample.refresh_from_db()
    assert sample.status == SampleStatus.FAILED
    assert sample.scores == {"small": None, "large": None}
    assert sample.notes["small"].startswith("Unparseable judgement")


def test_personal_data_in_a_sample_is_masked_as_the_organisation_masks_its_logs(router: Router) -> None:
    text = "Mail ann@example.com, card 4111 1111 1111 1111"
    answers = {**ANSWERS, "small": {**ANSWERS["small"], "text": text}}
    routing.record_sample(router.pk, "req-5", "I am ann@example.com; what is 2 + 2?", answers)
    sample = RouterSample.objects.get()
    assert sample.prompt == "I am [EMAIL]; what is 2 + 2?"
    assert sample.answers["small"]["text"] == "Mail [EMAIL], card [CARD]"
    assert sample.answers["large"]["text"] == "4, right"


def test_a_sample_keeps_personal_data_when_the_organisation_turned_masking_off(router: Router) -> None:
    InvocationLogSettings.objects.create(organization=router.organization, mask_personal_data=False)
    routing.record_sample(router.pk, "req-6", "I am ann@example.com", ANSWERS)
    assert RouterSample.objects.get().prompt == "I am ann@example.com"


def test_a_sample_the_judge_could_not_judge_for_now_stays_pending_for_a_retry(router: Router) -> None:
    async def busy(route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 503, {"error": {"message": "No ready replica."}}

    routing.record_sample(router.pk, "req-7", "What is 2 + 2?", ANSWERS)
    sample = RouterSample.objects.get()
    with pytest.raises(router_training.JudgeUnavailable, match="answered 503"):
        router_training.score_samples([sample.pk], invoke=busy)
    sample.refresh_from_db()
    assert sample.status == SampleStatus.PENDING and sample.scores == {}
    assert router_training.score_samples([sample.pk], invoke=stand_in_judge([])) == 1  # the retry


def test_the_judging_task_retries_while_the_judge_is_unavailable() -> None:
    retried = tasks.score_router_samples.autoretry_for
    assert any(issubclass(router_training.JudgeUnavailable, error) for error in retried)


def test_samples_left_pending_are_queued_again_by_the_periodic_resume(
    router: Router, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    routing.record_sample(router.pk, "old", "What is 2 + 2?", ANSWERS)
    routing.record_sample(router.pk, "new", "What is 3 + 3?", ANSWERS)
    RouterSample.objects.filter(request_id="old").update(
        created_at=timezone.now() - datetime.timedelta(hours=1)
    )
    queued: list[list[int]] = []
    monkeypatch.setattr(tasks.score_router_samples, "delay", queued.append)
    assert tasks.resume_router_samples() == 1
    assert queued == [[RouterSample.objects.get(request_id="old").pk]]
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "learning.tasks.resume_router_samples" in scheduled


def test_samples_are_kept_as_long_as_the_organisations_invocation_logs_and_no_longer(
    router: Router, globex: Organization
) -> None:
    InvocationLogSettings.objects.create(organization=router.organization, retention_days=7)
    for name in ("small", "large"):
        make_deployment(globex, name)
    theirs = router_service.create_router(organization=globex, user=None, **router_fields())
    for owner_router, request_id, age_days in ((router, "old", 8), (router, "recent", 6), (theirs, "g", 8)):
        routing.record_sample(owner_router.pk, request_id, "What is 2 + 2?", ANSWERS)
        RouterSample.objects.filter(request_id=request_id).update(
            created_at=timezone.now() - datetime.timedelta(days=age_days)
        )
    assert tasks.expire_invocation_logs() >= 1
    # Globex keeps the default 30 days.
    assert sorted(RouterSample.objects.values_list("request_id", flat=True)) == ["g", "recent"]
