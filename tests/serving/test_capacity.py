"""Capacity for platform admins: the cluster's GPUs per model (read from the fake Kubernetes API's
nodes by the worker) against quotas, reservations, running and waiting replicas (serving/capacity.py,
/api/capacity/)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone

from marketplace.accounts.models import Quota
from serving import capacity
from serving.backends.base import NodeState
from serving.backends.local import LocalBackend
from serving.choices import DeploymentStatus
from tests.web.conftest import make_deployment

pytestmark = pytest.mark.django_db

A10G = "NVIDIA A10G 24GB"
L4 = "NVIDIA L4 24GB"


@pytest.fixture
def cluster(fake_kubernetes, kubernetes_backend, monkeypatch, settings):
    """Two A10G nodes of 4 GPUs, a cordoned L4 node, and a CPU-only node; the platform on Kubernetes.
    Nothing has read the nodes yet: a test runs the worker's `remember_nodes` when it wants them."""
    settings.SERVING_BACKEND = "kubernetes"
    monkeypatch.setattr(capacity, "get_backend", lambda name=None: kubernetes_backend)
    fake_kubernetes.add_node("gpu-a", gpu_product="NVIDIA-A10G", gpus=4, cpu="47900m")
    fake_kubernetes.add_node("gpu-b", gpu_product="NVIDIA-A10G", gpus=4, cpu="48")
    fake_kubernetes.add_node("gpu-c", gpu_product="NVIDIA-L4", gpus=1, unschedulable=True)
    fake_kubernetes.add_node("system", cpu="4")
    cache.delete(capacity.NODES_KEY)
    yield fake_kubernetes
    cache.delete(capacity.NODES_KEY)


@pytest.fixture
def fleet(acme, globex, cluster):
    """Quotas that promise 12 A10Gs of 8, one running deployment, and one that waits for GPUs."""
    Quota.objects.filter(organization=acme).update(gpus_per_model={A10G: 8})
    Quota.objects.filter(organization=globex).update(gpus_per_model={A10G: 4})
    make_deployment(acme, name="chat", ready_replicas=2, desired_replicas=2, min_replicas=2, max_replicas=2,
                    reserved_gpus=2, gpu_model=A10G)  # fmt: skip
    make_deployment(
        globex, name="big", instance_type="aws-g5-12xlarge", status=DeploymentStatus.PROVISIONING,
        status_message="No node has 4 free NVIDIA A10G GPUs.", ready_replicas=0, desired_replicas=2,
        min_replicas=2, max_replicas=2, reserved_gpus=8, gpu_model=A10G,
    )  # fmt: skip


def test_the_kubernetes_backend_reads_nodes_with_their_gpus_and_product_label(cluster, kubernetes_backend):
    nodes = {node.name: node for node in kubernetes_backend.nodes()}
    assert nodes["gpu-a"] == NodeState("gpu-a", gpu_product="NVIDIA-A10G", gpus=4, cpu_cores=47.9)
    assert nodes["gpu-c"].schedulable is False and nodes["gpu-c"].gpus == 1
    assert nodes["system"] == NodeState("system", cpu_cores=4)
    assert [call.path for call in cluster.calls("GET", "nodes")] == ["/api/v1/nodes"]


def test_gpus_per_model_show_quota_oversubscription_and_replicas_that_do_not_fit(fleet) -> None:
    capacity.remember_nodes()
    measured = capacity.current()
    a10g, l4 = measured.models
    assert (a10g.gpu_model, a10g.nodes, a10g.on_nodes, a10g.used_by_replicas) == (A10G, 2, 8, 2)
    assert (a10g.promised_by_quotas, a10g.oversubscribed) == (12, True)
    assert a10g.reserved_by_deployments == 10
    assert (a10g.waiting_replicas, a10g.waiting_gpus, a10g.free, a10g.waiting_without_room) == (2, 8, 6, 2)
    assert (l4.gpu_model, l4.on_nodes, l4.unschedulable, l4.free) == (L4, 1, 1, 0)
    [waiting] = measured.waiting
    assert (waiting.organization, waiting.name, waiting.gpus) == ("globex", "big", 8)
    assert waiting.message == "No node has 4 free NVIDIA A10G GPUs."
    assert measured.total_gpus == 9


def test_a_failed_deployment_with_no_replica_waits_for_nothing(acme, cluster) -> None:
    make_deployment(acme, name="broken", status=DeploymentStatus.FAILED, desired_replicas=1, min_replicas=1,
                    max_replicas=1, reserved_gpus=1, gpu_model=A10G)  # fmt: skip
    assert capacity.current().waiting == []


def test_on_this_machine_the_one_node_has_cpu_cores_and_no_gpu(acme, settings) -> None:
    settings.SERVING_BACKEND = "local"
    make_deployment(acme, name="tiny", model="smollm2-135m-instruct", instance_type="local-cpu",
                    ready_replicas=1, desired_replicas=1)  # fmt: skip
    measured = capacity.measure(LocalBackend(connection=None), "local")  # type: ignore[arg-type]
    [node] = measured.nodes
    assert node.gpus == 0 and node.cpu_cores == len(os.sched_getaffinity(0))
    assert measured.models == []
    assert measured.cpu is not None
    assert (measured.cpu["used_by_replicas"], measured.cpu["gpus"]) == (1, 0)
    assert measured.cpu["cores"] == len(os.sched_getaffinity(0))


# /api/capacity/


def test_a_platform_admin_reads_capacity_per_gpu_model(client_for, platform_admin, fleet) -> None:
    capacity.remember_nodes()
    answer = client_for(platform_admin).get("/api/capacity/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    a10g = body["gpu_models"][0]
    assert (a10g["gpu_model"], a10g["on_nodes"], a10g["promised_by_quotas"]) == (A10G, 8, 12)
    assert a10g["oversubscribed"] is True and a10g["waiting_without_room"] == 2
    assert body["waiting"][0]["name"] == "big"


@pytest.mark.parametrize("who", ["owner", "member", "outsider"])
def test_no_one_but_a_platform_admin_reads_capacity(client_for, request, fleet, who: str) -> None:
    answer = client_for(request.getfixturevalue(who)).get("/api/capacity/")
    assert answer.status_code == 403
    assert "platform admin" in answer.json()["detail"]


def test_an_api_key_does_not_read_capacity(api_key_client, acme, fleet) -> None:
    client, _ = api_key_client(acme)
    assert client.get("/api/capacity/").status_code == 403


def test_an_unreachable_cluster_still_shows_what_the_database_knows_and_says_why(
    client_for, platform_admin, fleet, cluster: Any
) -> None:
    cluster.fail_next(503, times=10)
    capacity.remember_nodes()
    body = client_for(platform_admin).get("/api/capacity/").json()
    assert "nodes could not be read" in body["nodes_error"] and "list` on nodes" in body["nodes_error"]
    a10g = body["gpu_models"][0]
    assert (a10g["on_nodes"], a10g["promised_by_quotas"], a10g["waiting_gpus"]) == (0, 12, 8)


# Who reads the nodes: the worker, which holds the cluster credentials; web pods hold none.


def test_the_page_and_api_read_the_nodes_the_worker_read_and_call_no_kubernetes_api(
    client_for, platform_admin, fleet, cluster: Any
) -> None:
    capacity.remember_nodes()
    calls = len(cluster.requests)
    body = client_for(platform_admin).get("/api/capacity/").json()
    assert len(cluster.requests) == calls
    assert body["gpu_models"][0]["on_nodes"] == 8 and body["nodes_error"] == ""
    assert body["nodes_read_at"] is not None


def test_the_nodes_the_worker_reads_are_a_scheduled_celery_task(settings) -> None:
    from marketplace.celery import app
    from serving import tasks

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "serving.tasks.remember_nodes" in scheduled and "serving.tasks.remember_nodes" in app.tasks
    assert tasks.remember_nodes.name == "serving.tasks.remember_nodes"


def test_before_the_worker_read_the_nodes_capacity_says_so(client_for, platform_admin, fleet) -> None:
    body = client_for(platform_admin).get("/api/capacity/").json()
    assert "has not read them yet" in body["nodes_error"]
    assert body["gpu_models"][0]["promised_by_quotas"] == 12


def test_nodes_the_worker_read_long_ago_are_not_shown_as_current(client_for, platform_admin, fleet) -> None:
    snapshot = capacity.remember_nodes()
    snapshot["read_at"] = (timezone.now() - timedelta(minutes=30)).isoformat()
    cache.set(capacity.NODES_KEY, snapshot)
    body = client_for(platform_admin).get("/api/capacity/").json()
    assert "30 minutes ago" in body["nodes_error"]
    assert body["gpu_models"][0]["on_nodes"] == 0
