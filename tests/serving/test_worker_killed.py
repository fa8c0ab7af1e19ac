"""A Celery worker killed (SIGKILL) in the middle of provisioning, for real: the row stays PENDING and
nothing half-done is left as if it were done; the reconciler notices the lost task and provisions again.
The cluster is the stateful fake API server, which holds the worker's request until the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from marketplace.accounts import services as account_services
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import services, tasks
from serving.choices import DeploymentStatus
from serving.models import Deployment
from tests.conftest import database_url_for_processes, make_user
from tests.serving.conftest import backend_for
from tests.serving.fake_kubernetes import FakeKubernetes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def kubeconfig_for(url: str, path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{url}'}}}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
        "users: [{name: fake, user: {token: fake}}]\n"
    )
    return path


def test_a_worker_killed_mid_provision_is_recovered_by_the_reconciler(
    transactional_catalog: None, settings: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    fake = FakeKubernetes().start()
    reached, release = fake.hold_next("PATCH", "deployments")
    environment = {
        **os.environ,
        "DATABASE_URL": database_url_for_processes(),
        "REDIS_URL": settings.REDIS_URL,  # the broker this process sends to
        "SERVING_BACKEND": "kubernetes",
        "KUBECONFIG": str(kubeconfig_for(fake.url, tmp_path / "kubeconfig")),
        "KUBERNETES_NAMESPACE": "marketplace-serving",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "--app", "marketplace", "worker", "--pool", "solo",
         "--hostname", f"killed-{os.getpid()}@%h", "--loglevel", "INFO"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        owner = make_user("kim")
        organization = account_services.create_organization(slug="kill", name="Kill", owner=owner)
        card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
        subscribe(organization=organization, card=card, license_sha256=None, user=owner)
        deployment = services.create_deployment(  # on commit: provision_deployment goes to the worker
            organization=organization, user=owner, name="chat", card=card,
            instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
            scaling=services.Scaling(min_replicas=1, max_replicas=1), engine_options={},
        )  # fmt: skip
        assert reached.wait(timeout=90), (tmp_path / "worker.log").read_text()[-3000:]
        os.killpg(worker.pid, signal.SIGKILL)  # in the middle of applying the Deployment object
        worker.wait(timeout=30)
        release.set()

        deployment.refresh_from_db()
        assert deployment.status == DeploymentStatus.PENDING
        assert fake.get("apps/v1", "deployments", f"kill-chat-{deployment.pk}") is None

        # The reconciler, some seconds later, sees a row whose objects never appeared.
        backend = backend_for(fake.url)
        monkeypatch.setattr(tasks, "get_backend", lambda name=None: backend)
        monkeypatch.setattr(
            tasks.provision_deployment, "delay", lambda pk: tasks.provision_deployment.apply(args=[pk])
        )
        past = timezone.now() - tasks.LOST_TASK_GRACE - timedelta(seconds=1)
        Deployment.objects.filter(pk=deployment.pk).update(status_changed_at=past, updated_at=past)
        assert tasks.reconcile_once()["reapplied"] == 1
        deployment.refresh_from_db()
        assert deployment.status == DeploymentStatus.PROVISIONING
        assert fake.get("apps/v1", "deployments", f"kill-chat-{deployment.pk}") is not None
    finally:
        release.set()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        fake.stop()
