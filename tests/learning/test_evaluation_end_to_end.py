"""An evaluation on this machine, for real: four chat calls to the SmolLM2 deployment are logged, made into
a dataset through /api/datasets/from-logs/, and the deployment answers that dataset again through a real
Celery worker and the gateway's own path; MiniLM scores similarity to the logged answer, and SmolLM2
judges itself (only the plumbing is judged here: a 135M model's verdicts are not a quality signal).
The two engines are real vLLM processes, each bound to a core of its own (tests/engines.py)."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from learning import evaluations, writer
from learning.capture import QUEUE_KEY
from learning.choices import EvaluationStatus
from learning.models import Dataset, Evaluation, EvaluationItem, InvocationLogSettings
from learning.storage import FolderStore
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Quota
from serving.gateway import openai_api, pipeline, upstream
from tests.conftest import make_user
from tests.learning.test_evaluation_worker_killed import start_worker, stop
from tests.serving.gateway.conftest import (
    CHAT,
    EMBED,
    deploy,
)

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "What is 2 + 2?",
    "Name a primary colour.",
    "What do bees make?",
]


@pytest.fixture(scope="module")
def bound_engines(real_engines: dict[str, str]) -> dict[str, str]:
    """SmolLM2 on core 0 and MiniLM on core 1, shared with the run's other end-to-end tests."""
    return real_engines


def test_an_evaluation_of_the_smollm2_deployment_runs_end_to_end(
    bound_engines: dict[str, str], transactional_catalog: None, configured_store: FolderStore, tmp_path: Path
) -> None:
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.flushdb()
    owner = make_user("edna")
    organization = account_services.create_organization(slug="real-evals", name="Real Evals", owner=owner)
    Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
    deploy(organization, "tiny-chat", CHAT, bound_engines[CHAT])
    deploy(organization, "minilm", EMBED, bound_engines[EMBED])
    InvocationLogSettings.objects.create(organization=organization, enabled=True)

    # Real traffic, logged: four calls through the gateway's path, the writer moving them to the store.
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)

    async def ask(question: str) -> int:
        # As the playground calls (an evaluation's own calls are kept out of the log).
        caller = await pipeline.services().directory.person(organization.pk)
        payload = {"model": "tiny-chat", "messages": [{"role": "user", "content": question}],
                   "max_tokens": 32, "temperature": 0}  # fmt: skip
        return (await openai_api.invoke_as(caller, "chat.completions", payload)).status_code

    async def ask_all() -> list[int]:
        try:
            return list(await asyncio.gather(*(ask(q) for q in QUESTIONS)))
        finally:
            await pipeline.drain()  # metering and capture run after each answer, off its path
            await upstream.close_clients()

    assert asyncio.run(ask_all()) == [200] * len(QUESTIONS)
    assert connection.llen(QUEUE_KEY) == len(QUESTIONS)
    writer.write_queued(connection, configured_store)
    client = APIClient()
    client.force_authenticate(owner)
    made = client.post(
        "/api/datasets/from-logs/",
        {"organization": "real-evals", "name": "traffic", "since": since.isoformat(),
         "until": (since + datetime.timedelta(minutes=10)).isoformat(), "heldout_fraction": 0.0},
        format="json",
    )  # fmt: skip
    assert made.status_code == 201, made.content
    dataset = Dataset.objects.get(pk=made.json()["id"])
    assert dataset.records == len(QUESTIONS)

    worker = start_worker("evaluator", tmp_path)
    try:
        evaluation = evaluations.create_evaluation(
            organization=organization, user=owner, dataset=dataset, deployments=["tiny-chat"], part="all",
            scorer_specs=[
                {"kind": "similarity", "deployment": "minilm"},
                {"kind": "judge", "deployment": "tiny-chat"},
            ],
            max_tokens=48, concurrency=2,
        )  # fmt: skip
        deadline = time.monotonic() + 150
        while Evaluation.objects.get(pk=evaluation.pk).status != EvaluationStatus.SUCCEEDED:
            assert time.monotonic() < deadline, (tmp_path / "evaluator.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        stop(worker)

    evaluation.refresh_from_db()
    items = list(EvaluationItem.objects.filter(evaluation=evaluation))
    assert len(items) == len(QUESTIONS) and all(not item.error and item.answer for item in items)
    assert all(item.completion_tokens > 0 and item.scoring_tokens > 0 for item in items)
    assert all(-1.0 <= item.scores["similarity"] <= 1.0 for item in items)  # type: ignore[operator]
    judged = [item.scores["judge"] for item in items]
    assert all(score is None or 1 <= score <= 10 for score in judged)  # a verdict, or counted unparseable
    [summary] = evaluations.results(evaluation)
    assert summary["scores"]["similarity"]["scored"] == len(QUESTIONS)
    assert summary["scores"]["judge"]["scored"] + summary["scores"]["judge"]["unscored"] == len(QUESTIONS)
    assert summary["latency_ms"]["p50"] > 0 and summary["tokens_per_second"] > 0
    progress = evaluations.progress(evaluation)
    assert (progress["done"], progress["total"]) == (len(QUESTIONS), len(QUESTIONS))
    print(f"\nEvaluation of SmolLM2 on {len(QUESTIONS)} logged calls: {evaluation.status_message} {summary}")
