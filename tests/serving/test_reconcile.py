"""Provision, scale, delete and reconcile against the stateful fake Kubernetes API: idempotent tasks,
recovery from a worker that died between steps, and statuses explained in words from pods and events."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import manifests, services, tasks
from serving.backends.kubernetes import KubernetesBackend
from serving.models import Deployment

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _seam(settings: Any, monkeypatch: Any, kubernetes_backend: KubernetesBackend) -> None:
    """The tasks reach the cluster through get_backend: point it at the fake."""
    settings.SERVING_BACKEND = "kubernetes"
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: kubernetes_backend)
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)


@pytest.fixture
def deployment(acme: Organization, owner: User) -> Deployment:
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    return services.create_deployment(
        organization=acme, user=owner, name="chat", card=card,
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        scaling=services.Scaling(min_replicas=1, max_replicas=1), engine_options={},
    )  # fmt: skip


def name_of(deployment: Deployment) -> str:
    return manifests.object_name(services.spec_for(deployment))


def pod_labels(deployment: Deployment) -> dict[str, str]:
    return manifests.labels(services.spec_for(deployment))


def reconcile(deployment: Deployment) -> Deployment:
    tasks.reconcile_once()
    deployment.refresh_from_db()
    return deployment


def age(deployment: Deployment, seconds: float) -> None:
    """Pretend the deployment's last change was `seconds` ago."""
    past = timezone.now() - timezone.timedelta(seconds=seconds)
    Deployment.objects.filter(pk=deployment.pk).update(status_changed_at=past, updated_at=past)


def test_provision_applies_every_object_and_moves_to_provisioning(deployment, fake_kubernetes) -> None:
    assert tasks.provision_deployment.apply(args=[deployment.pk]).get() == "applied"
    name = name_of(deployment)
    assert fake_kubernetes.get("apps/v1", "deployments", name) is not None
    assert fake_kubernetes.get("v1", "services", name) is not None
    assert fake_kubernetes.get("policy/v1", "poddisruptionbudgets", name) is not None
    deployment.refresh_from_db()
    assert deployment.status == "provisioning"
    assert [e.status for e in deployment.events.order_by("id")] == ["pending", "provisioning"]


def test_every_task_run_twice_is_harmless(deployment, fake_kubernetes) -> None:
    for _ in range(2):
        tasks.provision_deployment.apply(args=[deployment.pk]).get()
    kinds = [("apps/v1", "deployments"), ("v1", "services"), ("policy/v1", "poddisruptionbudgets")]
    assert [len(fake_kubernetes.list(gv, plural)) for gv, plural in kinds] == [1, 1, 1]
    events = deployment.events.count()
    for _ in range(2):
        tasks.scale_deployment.apply(args=[deployment.pk]).get()
        tasks.reconcile_once()
    assert deployment.events.count() == events + 1  # one "waiting" message from the first reconcile only
    services.delete_deployment(deployment)
    for _ in range(2):
        tasks.delete_deployment.apply(args=[deployment.pk]).get()
    assert fake_kubernetes.list("apps/v1", "deployments") == []
    assert reconcile(deployment).status == "deleted"
    assert reconcile(deployment).status == "deleted"


def test_ready_when_a_replica_is_available(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{name}-6d4cf56db6-x7k2p", pod_labels(deployment), pod_ip="10.1.2.3")
    deployment = reconcile(deployment)
    assert (deployment.status, deployment.ready_replicas, deployment.desired_replicas) == ("ready", 1, 1)
    assert deployment.endpoints == ["http://10.1.2.3:8000"]
    assert deployment.status_message == "Ready: 1 of 1 replicas serving."


@pytest.mark.parametrize(
    ("container_status", "words"),
    [
        ({"state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}},
         "The engine image cannot be pulled (ImagePullBackOff)"),
        ({"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 5,
          "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}},
         "The engine keeps crashing (exit code 1) after 5 restarts"),
        ({"state": {"running": {}}, "restartCount": 1,
          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}},
         "The engine ran out of memory and was killed (OOMKilled)"),
    ],
)  # fmt: skip
def test_pod_failures_are_explained(deployment, fake_kubernetes, container_status, words) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=0)
    fake_kubernetes.add_pod(
        f"{name}-abc-1", pod_labels(deployment), ready=False,
        container_statuses=[{"name": "engine", "ready": False, "restartCount": 0, **container_status}],
    )  # fmt: skip
    deployment = reconcile(deployment)
    assert deployment.status == "failed"
    assert deployment.status_message.startswith(words)
    assert deployment.events.first().message == deployment.status_message


def test_no_free_gpus_waits_then_fails_with_the_reason(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=0)
    fake_kubernetes.add_pod(f"{name}-abc-1", pod_labels(deployment), phase="Pending", ready=False,
                            container_statuses=[])  # fmt: skip
    fake_kubernetes.add_event(
        f"{name}-abc-1", "FailedScheduling",
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available.",
    )  # fmt: skip
    deployment = reconcile(deployment)
    assert deployment.status == "provisioning"
    assert "Waiting for a node with free GPUs on g5.xlarge: 3 of 3 nodes lack enough free GPUs" in (
        deployment.status_message
    )
    age(deployment, 3600)
    deployment = reconcile(deployment)
    assert deployment.status == "failed"
    assert deployment.status_message.startswith("No node can take a replica on g5.xlarge")


def test_startup_probe_failures_are_explained(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=0)
    fake_kubernetes.add_pod(f"{name}-abc-1", pod_labels(deployment), ready=False)
    fake_kubernetes.add_event(
        f"{name}-abc-1", "Unhealthy", "Startup probe failed: connection refused", count=5
    )
    deployment = reconcile(deployment)
    assert deployment.status == "failed"
    assert "did not become healthy within its startup time" in deployment.status_message


def test_a_lost_provision_task_is_recovered_by_the_reconciler(deployment, fake_kubernetes) -> None:
    # The worker died before applying anything: the row is PENDING and the cluster has nothing.
    age(deployment, 60)
    sent: list[int] = []
    tasks.provision_deployment.delay = lambda deployment_id: sent.append(deployment_id)  # type: ignore[method-assign]
    try:
        assert tasks.reconcile_once()["reapplied"] == 1
    finally:
        del tasks.provision_deployment.delay
    assert sent == [deployment.pk]


def test_a_worker_killed_after_apply_but_before_the_status_change_is_recovered(
    deployment, fake_kubernetes
) -> None:
    backend = tasks.get_backend("kubernetes")
    backend.apply(services.spec_for(deployment))  # the task's first step ran; then the worker died
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{name}-abc-1", pod_labels(deployment))
    assert reconcile(deployment).status == "ready"


def test_a_rollout_is_updating_until_the_new_generation_runs(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{name}-abc-1", pod_labels(deployment))
    assert reconcile(deployment).status == "ready"
    deployment = services.update_deployment(deployment, engine_options={"max_model_len": 4096})
    assert deployment.status == "updating"
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1, updated_replicas=0)
    assert reconcile(deployment).status == "updating"
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1, updated_replicas=1)
    deployment = reconcile(deployment)
    assert (deployment.status, deployment.observed_generation) == ("ready", 2)
    applied = fake_kubernetes.get("apps/v1", "deployments", name)
    assert "4096" in applied["spec"]["template"]["spec"]["containers"][0]["args"]


def test_objects_with_no_row_are_deleted(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    Deployment.objects.filter(pk=deployment.pk).delete()  # e.g. removed from the database by hand
    assert tasks.reconcile_once()["orphans"] == 1
    assert fake_kubernetes.list("apps/v1", "deployments") == []


def test_reconcile_makes_one_list_call_per_kind(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    fake_kubernetes.reset_requests()
    calls = tasks.reconcile_once()["api_calls"]
    lists = fake_kubernetes.calls("GET")
    assert len(lists) == calls == 7
    assert len({call.path for call in lists}) == 7


def test_a_permanent_api_refusal_fails_the_deployment_and_logs_the_reason(
    deployment, fake_kubernetes, caplog
) -> None:
    fake_kubernetes.fail_next(403, message="deployments.apps is forbidden")
    assert tasks.provision_deployment.apply(args=[deployment.pk]).get() == "failed"
    deployment.refresh_from_db()
    # The tenant reads what happened and what to do; the cluster's details are for platform admins.
    assert (deployment.status, deployment.status_message) == ("failed", tasks.PLATFORM_FAILURE)
    assert "forbidden" in caplog.text


def test_transient_api_errors_are_retried(deployment, fake_kubernetes) -> None:
    fake_kubernetes.fail_next(503, times=2)
    # Run in process, Celery performs the retries inline (without the backoff sleep); the third goes through.
    assert tasks.provision_deployment.apply(args=[deployment.pk]).get() == "applied"
    # The NetworkPolicy is applied first, so the injected failures hit it: three tries, then the rest.
    policy_patches = [c for c in fake_kubernetes.calls("PATCH") if "/networkpolicies/" in c.path]
    assert len(policy_patches) == 3
    assert len([c for c in fake_kubernetes.calls("PATCH") if "/deployments/" in c.path]) == 1


def test_manifests_endpoint_and_command_print_exactly_what_is_applied(
    deployment, fake_kubernetes, client_for, member, capsys
) -> None:
    import yaml

    response = client_for(member).get(f"/api/deployments/{deployment.pk}/manifests/")
    assert response.status_code == 200 and response["Content-Type"] == "application/yaml"
    printed = list(yaml.safe_load_all(response.content))
    assert [o["kind"] for o in printed] == ["NetworkPolicy", "Deployment", "Service", "PodDisruptionBudget"]
    call_command("deployment_manifests", "acme", "chat")
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == printed
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    applied = fake_kubernetes.get("apps/v1", "deployments", name_of(deployment))
    assert applied["spec"]["template"] == printed[1]["spec"]["template"]


QUOTA_MESSAGE = (
    'pods "acme-chat-abc" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, '
    "used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8"
)


def test_a_replica_the_controller_cannot_create_is_explained(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": QUOTA_MESSAGE}
    fake_kubernetes.set_deployment_status(
        name_of(deployment), replicas=0, ready_replicas=0, conditions=[failure]
    )
    deployment = reconcile(deployment)
    # The controller keeps retrying: provisioning, with the reason, until the grace period is over.
    assert deployment.status == "provisioning"
    assert "ResourceQuota has no room for them" in deployment.status_message
    age(deployment, 3600)
    deployment = reconcile(deployment)
    assert deployment.status == "failed"
    assert deployment.status_message.startswith(
        "Kubernetes cannot create the replicas: the serving namespace"
    )
    # The controller's own text (other tenants' usage of the namespace) is not shown.
    assert "used: requests.nvidia.com/gpu=8" not in deployment.status_message


def test_a_rollout_past_its_deadline_is_explained(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    deadline = {
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": f'ReplicaSet "{name}-abc" has timed out progressing.',
    }  # fmt: skip
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=0, conditions=[deadline])
    deployment = reconcile(deployment)
    assert deployment.status == "failed"
    assert deployment.status_message.startswith("The rollout made no progress within its deadline")
    assert "has timed out progressing" not in deployment.status_message  # the controller's text stays there


def test_a_stuck_change_keeps_serving_and_says_so(deployment, fake_kubernetes) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = name_of(deployment)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{name}-6d4cf56db6-x7k2p", pod_labels(deployment), pod_ip="10.1.2.3")
    assert reconcile(deployment).status == "ready"
    services.update_deployment(deployment, engine_options={"max_model_len": 4096})
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": ""}
    fake_kubernetes.set_deployment_status(name, replicas=2, ready_replicas=1, updated_replicas=0,
                                          conditions=[deadline])  # fmt: skip
    deployment = reconcile(deployment)
    assert deployment.status == "updating" and deployment.endpoints == ["http://10.1.2.3:8000"]
    assert deployment.status_message.startswith("1 of 1 replicas still serve, but the change is stuck.")


def test_a_permanent_refusal_with_a_reason_tenants_may_read_says_it(
    acme, owner, monkeypatch, settings
) -> None:
    from tests.serving.conftest import backend_for
    from tests.serving.fake_kubernetes import FakeKubernetes

    fake = FakeKubernetes(crds_installed=False).start()  # a cluster without KEDA
    host = fake.url.split("//")[1]
    try:
        backend = backend_for(fake.url)
        monkeypatch.setattr(tasks, "get_backend", lambda name=None: backend)
        card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
        subscribe(organization=acme, card=card, license_sha256=None, user=owner)
        deployment = services.create_deployment(
            organization=acme, user=owner, name="chat", card=card,
            instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
            scaling=services.Scaling(min_replicas=1, max_replicas=2, policy="queue_depth"), engine_options={},
        )  # fmt: skip
        assert tasks.provision_deployment.apply(args=[deployment.pk]).get() == "failed"
    finally:
        fake.stop()
    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert "KEDA is not installed in the cluster: install it or set KEDA_ENABLED=False" in (
        deployment.status_message
    )
    assert host not in deployment.status_message  # no host of the cluster
