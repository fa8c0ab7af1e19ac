"""A quieter console: periodic work (reconcile, usage flush) logs only when it changed something or
failed. Celery's own per-task lines ("Task … received", "… succeeded in", beat's "Sending due task")
are raised to WARNING; the tasks say themselves what they changed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import after_setup_logger
from django.contrib.auth.models import User

from marketplace import celery as celery_config
from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import manifests, services, tasks
from serving.backends.kubernetes import KubernetesBackend
from serving.gateway import metering
from serving.models import Deployment
from tests.serving.fake_kubernetes import FakeKubernetes


@pytest.fixture
def celery_levels() -> Iterator[None]:
    """Put Celery's loggers back as they were: other tests share the process."""
    saved = {name: logging.getLogger(name).level for name in celery_config.QUIET_LOGGERS}
    beat = logging.getLogger(celery_config.BEAT_LOGGER)
    saved_filters = list(beat.filters)
    for name in saved:
        logging.getLogger(name).setLevel(logging.NOTSET)
    beat.filters = []
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        beat.filters = saved_filters


def beat_line(message: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord(celery_config.BEAT_LOGGER, logging.INFO, "beat.py", 1, message, args, None)


@pytest.mark.usefixtures("celery_levels")
def test_celery_per_task_lines_are_quiet_once_a_worker_or_beat_sets_up_logging() -> None:
    after_setup_logger.send(sender=None, logger=logging.getLogger(), loglevel=logging.INFO, logfile=None,
                            format="", colorize=False)  # fmt: skip
    for name in celery_config.QUIET_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING, name
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.ERROR), name  # failures still show
    beat = logging.getLogger(celery_config.BEAT_LOGGER)
    assert not beat.filter(beat_line("Scheduler: Sending due task %s (%s)", "flush-usage", "flush_usage"))
    assert beat.filter(beat_line("beat: Starting..."))  # beat's other lines stay


@pytest.mark.usefixtures("celery_levels")
def test_debug_log_level_keeps_every_celery_line() -> None:
    after_setup_logger.send(sender=None, logger=logging.getLogger(), loglevel=logging.DEBUG, logfile=None,
                            format="", colorize=False)  # fmt: skip
    for name in celery_config.QUIET_LOGGERS:
        assert logging.getLogger(name).level == logging.NOTSET, name
    beat = logging.getLogger(celery_config.BEAT_LOGGER)
    assert beat.filter(beat_line("Scheduler: Sending due task %s (%s)", "flush-usage", "flush_usage"))


# The tasks' own lines.


@pytest.fixture
def kubernetes_seam(settings: Any, monkeypatch: Any, kubernetes_backend: KubernetesBackend) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: kubernetes_backend)
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)


@pytest.fixture
def deployment(acme: Organization, owner: User, kubernetes_seam: None) -> Deployment:
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    return services.create_deployment(
        organization=acme, user=owner, name="chat", card=card,
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        scaling=services.Scaling(min_replicas=1, max_replicas=1), engine_options={},
    )  # fmt: skip


def task_lines(caplog: Any) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "serving.tasks"]


@pytest.mark.django_db
def test_a_reconcile_pass_that_changes_a_deployment_logs_what_changed(
    deployment: Deployment, fake_kubernetes: FakeKubernetes, caplog: Any
) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    spec = services.spec_for(deployment)
    fake_kubernetes.set_deployment_status(manifests.object_name(spec), replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{manifests.object_name(spec)}-6d4cf56db6-x7k2p", manifests.labels(spec))
    with caplog.at_level(logging.INFO, logger="serving.tasks"):
        tasks.reconcile.apply().get()
    assert task_lines(caplog) == ["reconcile: 1 changed"]


@pytest.mark.django_db
def test_a_reconcile_pass_that_changes_nothing_logs_nothing(
    deployment: Deployment, fake_kubernetes: FakeKubernetes, caplog: Any
) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    spec = services.spec_for(deployment)
    fake_kubernetes.set_deployment_status(manifests.object_name(spec), replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{manifests.object_name(spec)}-6d4cf56db6-x7k2p", manifests.labels(spec))
    tasks.reconcile.apply().get()  # the deployment becomes ready
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="serving.tasks"):
        counts = tasks.reconcile.apply().get()
    assert counts["observed"] == 1  # the pass ran and looked at the deployment
    assert task_lines(caplog) == []


def test_a_flush_that_writes_records_logs_how_many_and_an_empty_one_is_silent(
    monkeypatch: Any, caplog: Any, settings: Any
) -> None:
    written = iter([3, 0])
    monkeypatch.setattr(metering, "flush_usage", lambda connection: next(written))
    with caplog.at_level(logging.INFO, logger="serving.tasks"):
        assert tasks.flush_usage.apply().get() == 3
        assert tasks.flush_usage.apply().get() == 0
    assert task_lines(caplog) == ["flush_usage: wrote 3 usage records"]
