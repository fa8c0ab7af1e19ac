"""The semantic predictor's embeddings and the samples' judgements go through the gateway's own path as
the organisation, against a stand-in engine over real HTTP: metered like any call, never logged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from learning import router_service, router_training, routing
from learning.models import RouterSample, RouterVersion, SampleStatus, TrainingStatus
from learning.storage import FolderStore
from learning.tasks import score_router_samples, train_router
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Quota
from serving import tasks as serving_tasks
from serving.models import UsageRecord
from tests.conftest import make_user
from tests.learning.routerdata import make_evaluation, router_fields
from tests.learning.standin import stand_in_engine
from tests.serving.gateway.conftest import CHAT, EMBED, deploy

pytestmark = pytest.mark.usefixtures("transactional_catalog")  # the gateway reads rows from its own thread


@pytest.fixture
def engine() -> Iterator[str]:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # limits and usage of earlier tests
    with stand_in_engine() as url:
        yield url


def test_training_embeds_prompts_and_samples_are_judged_through_the_gateway(
    engine: str, configured_store: FolderStore
) -> None:
    owner = make_user("rita")
    organization = account_services.create_organization(slug="routing", name="Routing", owner=owner)
    Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
    for name, model in (("small", CHAT), ("large", CHAT), ("minilm", EMBED)):
        deploy(organization, name, model, engine)
    setup = make_evaluation(configured_store, organization, count=60)
    router = router_service.create_router(
        organization=organization, user=owner,
        **router_fields(embedding_deployment="minilm", judge_deployment="large"),
    )  # fmt: skip
    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    train_router.apply(args=[training.pk])
    training.refresh_from_db()
    assert training.status == TrainingStatus.SUCCEEDED, training.status_message
    semantic = RouterVersion.objects.get(training=training, kind="semantic")
    assert semantic.report["heldout_items"] > 0
    routing.record_sample(router.pk, "req-1", "What is 2 + 2?", {
        "small": {"text": "4", "prompt_tokens": 5, "completion_tokens": 1, "latency_ms": 9, "status": 200},
        "large": {"text": "Four", "prompt_tokens": 5, "completion_tokens": 1, "latency_ms": 9, "status": 200},
    })  # fmt: skip
    score_router_samples.apply(args=[[RouterSample.objects.get().pk]])
    sample = RouterSample.objects.get()
    assert sample.status == SampleStatus.SCORED
    assert sample.scores == {"small": 0.6667, "large": 0.6667}  # the stand-in judge's 7 of 1–10
    serving_tasks.flush_usage()
    calls = UsageRecord.objects.filter(organization=organization)
    assert calls.filter(model="minilm").count() == -(-60 // router_training.EMBED_BATCH)  # one call a batch
    assert calls.filter(model="large").count() == 2  # a judgement per answer
