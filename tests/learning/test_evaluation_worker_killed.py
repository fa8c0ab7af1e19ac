"""A Celery worker killed (SIGKILL) in the middle of an evaluation, for real: the items it stored stay,
its lease lapses, the periodic resume hands the evaluation to a new worker, which answers only what is
missing; no item is stored or counted twice. The engine is the stand-in (tests/learning/standin.py),
slowed so that the kill lands mid-run."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from learning import datasets, evaluations, tasks
from learning.choices import DatasetSource, EvaluationStatus
from learning.models import Evaluation, EvaluationItem
from learning.storage import FolderStore
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Quota
from tests.conftest import database_url_for_processes, make_user
from tests.learning.standin import StandIn, stand_in_engine
from tests.serving.gateway.conftest import CHAT, deploy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [f"Question number {n}?" for n in range(8)]


def start_worker(name: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "DATABASE_URL": database_url_for_processes(),
        "REDIS_URL": settings.REDIS_URL,  # the broker this process sends to
        "DATA_DIR": str(tmp_path),  # the folder store of this test
        "OBJECT_STORE_BUCKET": "",
    }
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "--app", "marketplace", "worker", "--pool", "solo",
         "--hostname", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(0.1)


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def test_a_worker_killed_mid_evaluation_is_resumed_without_double_counting(
    transactional_catalog: None, configured_store: FolderStore, tmp_path: Path
) -> None:
    connection = redis.Redis.from_url(settings.REDIS_URL)
    connection.flushdb()  # no task messages or limits of earlier tests
    with stand_in_engine(delay=0.4) as engine:
        owner = make_user("kit")
        organization = account_services.create_organization(slug="killed", name="Killed", owner=owner)
        Quota.objects.filter(organization=organization).update(requests_per_minute=10_000)
        deploy(organization, "small", CHAT, engine)
        records = [{"messages": [{"role": "user", "content": q}], "reference": "Paris"} for q in QUESTIONS]
        dataset = datasets.save(
            configured_store, organization_id=organization.pk, name="questions", records=records,
            source=DatasetSource.UPLOAD, heldout_fraction=0.0, seed=0,
        )  # fmt: skip
        first = start_worker("first", tmp_path)
        try:
            evaluation = evaluations.create_evaluation(  # on commit: run_evaluation goes to the worker
                organization=organization, user=owner, dataset=dataset, deployments=["small"],
                scorer_specs=[{"kind": "exact_match"}], part="all", concurrency=1,
            )  # fmt: skip
            items = EvaluationItem.objects.filter(evaluation=evaluation)
            wait_for(lambda: items.count() >= 3, 90, tmp_path / "first.log")
            os.killpg(first.pid, signal.SIGKILL)  # in the middle: items stored, one in flight
            first.wait(timeout=30)
        finally:
            stop(first)

        evaluation.refresh_from_db()
        assert evaluation.status == EvaluationStatus.RUNNING
        stored_before = set(items.values_list("item_id", flat=True))
        assert 3 <= len(stored_before) < len(QUESTIONS)

        # Its lease lapses (here at once instead of after LEASE_SECONDS); the periodic resume hands it on.
        Evaluation.objects.filter(pk=evaluation.pk).update(
            lease_until=timezone.now() - datetime.timedelta(seconds=1)
        )
        second = start_worker("second", tmp_path)
        try:
            assert tasks.resume_evaluations() == 1
            wait_for(
                lambda: Evaluation.objects.get(pk=evaluation.pk).status == EvaluationStatus.SUCCEEDED,
                90, tmp_path / "second.log",
            )  # fmt: skip
        finally:
            stop(second)

    assert sorted(items.values_list("item_id", flat=True)) == sorted(str(n) for n in range(1, 9))
    asked = Counter(StandIn.prompts)
    for item_id in stored_before:  # answered before the kill: never asked again
        assert asked[QUESTIONS[int(item_id) - 1]] == 1
    assert len(StandIn.prompts) <= len(QUESTIONS) + 1  # at most the one in flight at the kill, again
    assert evaluations.progress(Evaluation.objects.get(pk=evaluation.pk))["done"] == len(QUESTIONS)
    assert Evaluation.objects.get(pk=evaluation.pk).events.filter(message__startswith="Resumed: ").exists()
