"""The kubernetes backend against a stateful fake API server: apply, scale, delete, observe, errors."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from serving import manifests
from serving.backends.base import PermanentBackendError, TransientBackendError
from serving.backends.kubernetes import KEDA_MISSING, KubernetesBackend
from serving.spec import Autoscaling, ClusterSettings, DeploymentSpec, InstanceSpec, ModelSpec, StoreSpec
from tests.serving.conftest import backend_for
from tests.serving.fake_kubernetes import NAMESPACE, FakeKubernetes

ROOT = Path(__file__).resolve().parents[2]
KINDS = [
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("policy/v1", "poddisruptionbudgets"),
    ("autoscaling/v2", "horizontalpodautoscalers"),
    ("keda.sh/v1alpha1", "scaledobjects"),
    ("networking.k8s.io/v1", "networkpolicies"),
]
# What every deployment has, whatever its autoscaling policy.
ALWAYS = {"networkpolicies", "deployments", "services", "poddisruptionbudgets"}


def make_spec(
    deployment_id: int = 7,
    name: str = "chat",
    *,
    policy: str = "fixed",
    min_replicas: int = 1,
    max_replicas: int = 3,
    generation: int = 1,
) -> DeploymentSpec:
    return DeploymentSpec(
        deployment_id=deployment_id,
        name=name,
        organization="acme",
        generation=generation,
        model=ModelSpec(
            slug="qwen2-5-7b-instruct",
            huggingface_repo="Qwen/Qwen2.5-7B-Instruct",
            revision="",
            gated=False,
            parameters=7_600_000_000,
            gpu_memory_gb=18,
            context_length=32768,
        ),
        instance=InstanceSpec(
            slug="g6-xlarge",
            gpu_count=1,
            gpu_memory_gb=24,
            gpu_product="NVIDIA-L4",
            vcpu=4,
            memory_gb=16,
            node_labels={"node.kubernetes.io/instance-type": "g6.xlarge"},
        ),
        autoscaling=Autoscaling(policy=policy, min_replicas=min_replicas, max_replicas=max_replicas),
        tensor_parallel_size=1,
    )


@contextmanager
def fake_cluster(**options: Any) -> Iterator[FakeKubernetes]:
    """A fake configured unlike the fixture's (no KEDA, other namespaces, an older server)."""
    fake = FakeKubernetes(**options).start()
    try:
        yield fake
    finally:
        fake.stop()


def stored(fake: FakeKubernetes, deployment_id: int = 7) -> dict[str, list[str]]:
    """Names of the stored objects of one deployment, by plural."""
    found: dict[str, list[str]] = {}
    for group_version, plural in KINDS:
        for obj in fake.list(group_version, plural):
            if obj["metadata"]["labels"].get(manifests.DEPLOYMENT_ID_LABEL) == str(deployment_id):
                found.setdefault(plural, []).append(obj["metadata"]["name"])
    return found


# apply and scale


def test_apply_creates_deployment_service_autoscaler_and_pdb_with_our_labels(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(policy="queue_depth")
    kubernetes_backend.apply(spec)

    name = manifests.object_name(spec)
    assert stored(fake_kubernetes) == {
        "networkpolicies": [name],
        "deployments": [name],
        "services": [name],
        "poddisruptionbudgets": [name],
        "scaledobjects": [name],
    }
    for group_version, plural in KINDS:
        for obj in fake_kubernetes.list(group_version, plural):
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "model-marketplace"


def test_apply_is_server_side_apply_with_our_field_manager(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.apply(make_spec(policy="queue_depth"))

    patches = fake_kubernetes.calls("PATCH")
    assert len(patches) == 5  # NetworkPolicy, Deployment, Service, PodDisruptionBudget, ScaledObject
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == ["model-marketplace"]
        assert request.query["force"][0].lower() == "true"


def test_applying_twice_is_harmless(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(policy="queue_depth")
    kubernetes_backend.apply(spec)
    first = fake_kubernetes.get("apps/v1", "deployments", manifests.object_name(spec))

    kubernetes_backend.apply(spec)

    second = fake_kubernetes.get("apps/v1", "deployments", manifests.object_name(spec))
    assert first is not None and second is not None
    assert len(fake_kubernetes.objects) == 5
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert second["metadata"]["generation"] == first["metadata"]["generation"]


def test_apply_after_a_spec_change_updates_in_place(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(min_replicas=1)
    kubernetes_backend.apply(spec)
    before = fake_kubernetes.get("apps/v1", "deployments", manifests.object_name(spec))

    kubernetes_backend.apply(
        replace(spec, generation=2, autoscaling=replace(spec.autoscaling, min_replicas=2))
    )

    after = fake_kubernetes.get("apps/v1", "deployments", manifests.object_name(spec))
    assert before is not None and after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"]["replicas"] == 2
    assert after["metadata"]["annotations"][manifests.GENERATION_ANNOTATION] == "2"


def test_switching_policy_fixed_to_queue_depth_and_back_creates_then_removes_the_autoscaler(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(policy="fixed")
    kubernetes_backend.apply(spec)
    assert "scaledobjects" not in stored(fake_kubernetes)

    kubernetes_backend.apply(replace(spec, autoscaling=replace(spec.autoscaling, policy="queue_depth")))
    assert stored(fake_kubernetes)["scaledobjects"] == [manifests.object_name(spec)]

    kubernetes_backend.apply(spec)
    assert "scaledobjects" not in stored(fake_kubernetes)
    assert set(stored(fake_kubernetes)) == ALWAYS


def test_the_network_policy_is_applied_before_any_pod_can_exist(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.apply(make_spec())
    plurals = [request.path.rsplit("/", 2)[-2] for request in fake_kubernetes.calls("PATCH")]
    assert plurals[:2] == ["networkpolicies", "deployments"]
    name = manifests.object_name(make_spec())
    policy = fake_kubernetes.get("networking.k8s.io/v1", "networkpolicies", name)
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": manifests.selector_labels(make_spec())}


def test_turning_network_policies_off_removes_the_deployments_policy(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.apply(make_spec())
    without = backend_for(fake_kubernetes.url, ClusterSettings(namespace=NAMESPACE, network_policy=False))
    without.apply(make_spec())
    assert set(stored(fake_kubernetes)) == {"deployments", "services", "poddisruptionbudgets"}


def test_the_platforms_settings_reach_the_network_policy_and_the_engine(settings: Any) -> None:
    settings.ENGINE_MEDIA_DOMAINS = ["images.example.com"]
    settings.GATEWAY_NAMESPACE = "marketplace"
    settings.GATEWAY_POD_LABELS = {"app.kubernetes.io/instance": "prod"}
    settings.PROMETHEUS_NAMESPACE = "observability"
    settings.PROMETHEUS_POD_LABELS = {"app": "prom"}
    settings.NETWORK_POLICY_ENABLED = False
    from serving.backends.kubernetes import cluster_settings

    cluster = cluster_settings()
    assert cluster.media_domains == ("images.example.com",)
    assert (cluster.gateway_namespace, cluster.gateway_pod_labels) == (
        "marketplace",
        {"app.kubernetes.io/instance": "prod"},
    )
    assert (cluster.prometheus_namespace, cluster.prometheus_pod_labels) == ("observability", {"app": "prom"})
    assert cluster.network_policy is False


def test_switching_from_keda_to_an_hpa_removes_the_scaled_object(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(policy="kv_cache")
    kubernetes_backend.apply(spec)
    without_keda = backend_for(fake_kubernetes.url, ClusterSettings(namespace=NAMESPACE, keda=False))

    without_keda.apply(spec)

    objects = stored(fake_kubernetes)
    assert "scaledobjects" not in objects
    assert objects["horizontalpodautoscalers"] == [manifests.object_name(spec)]


def test_removing_a_stale_hpa_spares_the_one_keda_made(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    """KEDA copies the ScaledObject's labels onto its own HPA: only ours, by name, may go."""
    spec = make_spec(policy="queue_depth")
    keda_hpa = f"keda-hpa-{manifests.object_name(spec)}"
    fake_kubernetes.add_object(
        "autoscaling/v2",
        "horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": keda_hpa, "labels": manifests.labels(spec)},
        },
    )

    kubernetes_backend.apply(spec)

    assert stored(fake_kubernetes)["horizontalpodautoscalers"] == [keda_hpa]


def test_scale_applies_the_new_bounds(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(policy="queue_depth", max_replicas=2)
    kubernetes_backend.apply(spec)

    kubernetes_backend.scale(replace(spec, autoscaling=replace(spec.autoscaling, max_replicas=5)))

    scaled = fake_kubernetes.get("keda.sh/v1alpha1", "scaledobjects", manifests.object_name(spec))
    assert scaled is not None
    assert scaled["spec"]["maxReplicaCount"] == 5


# delete


def test_delete_removes_everything_of_the_deployment_and_nothing_else(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.apply(make_spec(7, "chat", policy="queue_depth"))
    kubernetes_backend.apply(make_spec(8, "embed", policy="fixed"))

    kubernetes_backend.delete(7)

    assert stored(fake_kubernetes, 7) == {}
    assert set(stored(fake_kubernetes, 8)) == ALWAYS


def test_deleting_again_is_fine(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.apply(make_spec(policy="queue_depth"))
    kubernetes_backend.delete(7)

    kubernetes_backend.delete(7)

    assert stored(fake_kubernetes) == {}


def test_delete_without_keda_installed_is_fine() -> None:
    with fake_cluster(crds_installed=False) as fake:
        backend = backend_for(fake.url)
        backend.apply(make_spec(policy="fixed"))
        backend.delete(7)
        assert stored(fake) == {}


def test_delete_falls_back_to_one_by_one_where_services_cannot_be_deleted_by_collection() -> None:
    with fake_cluster(no_delete_collection={"services"}) as fake:
        backend = backend_for(fake.url)
        backend.apply(make_spec())
        backend.delete(7)
        assert stored(fake) == {}


# observe


def test_observe_makes_one_list_call_per_kind_whatever_the_number_of_deployments(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    for deployment_id in range(1, 6):
        spec = make_spec(deployment_id, f"model-{deployment_id}", policy="queue_depth")
        kubernetes_backend.apply(spec)
        fake_kubernetes.add_pod(f"{manifests.object_name(spec)}-5d9f7c6b8-abcde", manifests.labels(spec))
    fake_kubernetes.reset_requests()

    seen = kubernetes_backend.observe()

    paths = sorted(request.path for request in fake_kubernetes.requests)
    assert paths == sorted(
        f"{prefix}/namespaces/{NAMESPACE}/{plural}"
        for prefix, plural in [
            ("/apis/apps/v1", "deployments"),
            ("/api/v1", "pods"),
            ("/api/v1", "events"),
            ("/api/v1", "services"),
            ("/apis/policy/v1", "poddisruptionbudgets"),
            ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
            ("/apis/keda.sh/v1alpha1", "scaledobjects"),
        ]
    )
    assert seen.api_calls == 7
    assert set(seen.observations) == {1, 2, 3, 4, 5}


def test_observe_lists_only_our_objects_except_events(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.observe()

    for request in fake_kubernetes.requests:
        selector = request.query.get("labelSelector")
        if request.path.endswith("/events"):
            assert selector is None  # events carry no labels
        else:
            assert selector == [manifests.MANAGED_SELECTOR]


def test_observe_reports_replicas_generation_pods_events_and_ready_endpoints(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec(min_replicas=2, generation=3)
    name = manifests.object_name(spec)
    kubernetes_backend.apply(spec)
    fake_kubernetes.set_deployment_status(
        name,
        replicas=2,
        ready_replicas=1,
        conditions=[{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}],
    )
    fake_kubernetes.add_pod(f"{name}-5d9f7c6b8-aaaaa", manifests.labels(spec), pod_ip="10.1.2.3")
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    fake_kubernetes.add_pod(
        f"{name}-5d9f7c6b8-bbbbb",
        manifests.labels(spec),
        phase="Pending",
        ready=False,
        conditions=[unschedulable],
        container_statuses=[],
    )
    fake_kubernetes.add_event(f"{name}-5d9f7c6b8-bbbbb", "FailedScheduling", message, count=4)
    fake_kubernetes.add_event(
        f"{name}-5d9f7c6b8", "FailedCreate", "exceeded quota", involved_kind="ReplicaSet"
    )
    fake_kubernetes.add_event("someone-elses-pod", "BackOff", "not ours")

    observation = kubernetes_backend.observe().observations[7]

    assert (observation.desired_replicas, observation.ready_replicas) == (2, 1)
    assert observation.generation == 3
    assert observation.conditions["Available"] == ("False", "MinimumReplicasUnavailable", "")
    assert {pod.name: pod.ready for pod in observation.pods} == {
        f"{name}-5d9f7c6b8-aaaaa": True,
        f"{name}-5d9f7c6b8-bbbbb": False,
    }
    pending = next(pod for pod in observation.pods if not pod.ready)
    assert pending.unschedulable_message == message
    assert observation.endpoints == ["http://10.1.2.3:8000"]
    assert sorted((event.reason, event.count) for event in observation.events) == [
        ("FailedCreate", 1),
        ("FailedScheduling", 4),
    ]


def test_observe_reads_why_an_engine_container_keeps_dying(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    spec = make_spec()
    kubernetes_backend.apply(spec)
    container: dict[str, Any] = {
        "name": "vllm",
        "ready": False,
        "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
    }
    fake_kubernetes.add_pod(
        "acme-chat-5d9f7c6b8-ccccc", manifests.labels(spec), ready=False, container_statuses=[container]
    )

    (pod,) = kubernetes_backend.observe().observations[7].pods

    (state,) = pod.containers
    assert (
        state.waiting_reason,
        state.last_terminated_reason,
        state.last_exit_code,
        state.restart_count,
    ) == (
        "CrashLoopBackOff",
        "OOMKilled",
        137,
        4,
    )


def test_observe_finds_objects_left_without_a_deployment(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    kubernetes_backend.apply(make_spec(9, "orphan", policy="queue_depth"))
    fake_kubernetes.objects.pop(("apps/v1", "deployments", NAMESPACE, "acme-orphan-9"))

    seen = kubernetes_backend.observe()

    assert 9 in seen.owned_ids
    assert 9 not in seen.observations


def test_observe_without_keda_installed_sees_no_scaled_objects() -> None:
    with fake_cluster(crds_installed=False) as fake:
        backend = backend_for(fake.url)
        backend.apply(make_spec())
        seen = backend.observe()
    assert (seen.api_calls, set(seen.observations)) == (7, {7})


# errors


def test_keda_missing_is_a_permanent_error_that_says_so() -> None:
    with fake_cluster(crds_installed=False) as fake, pytest.raises(PermanentBackendError) as error:
        backend_for(fake.url).apply(make_spec(policy="queue_depth"))
    assert str(error.value) == KEDA_MISSING
    assert KEDA_MISSING == "KEDA is not installed in the cluster: install it or set KEDA_ENABLED=False"


@pytest.mark.parametrize("status", [503, 500, 429, 409])
def test_an_overloaded_or_conflicting_api_is_a_transient_error(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend, status: int
) -> None:
    fake_kubernetes.fail_next(status)

    with pytest.raises(TransientBackendError):
        kubernetes_backend.apply(make_spec())


def test_a_retry_after_a_transient_error_converges(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    fake_kubernetes.fail_next(503, times=2)
    with pytest.raises(TransientBackendError):
        kubernetes_backend.apply(make_spec())
    with pytest.raises(TransientBackendError):
        kubernetes_backend.apply(make_spec())

    kubernetes_backend.apply(make_spec())

    assert set(stored(fake_kubernetes)) == ALWAYS


def test_observe_during_an_outage_is_a_transient_error(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    fake_kubernetes.fail_next(503)

    with pytest.raises(TransientBackendError, match="listing Deployments"):
        kubernetes_backend.observe()


def test_an_unreachable_api_is_a_transient_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = backend_for(f"http://127.0.0.1:{port}")

    with pytest.raises(TransientBackendError, match="cannot be reached"):
        backend.observe()


@pytest.mark.parametrize(("status", "words"), [(403, "not allowed"), (401, "credentials"), (422, "refused")])
def test_a_refusal_is_a_permanent_error_for_a_person(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend, status: int, words: str
) -> None:
    fake_kubernetes.fail_next(status)

    with pytest.raises(PermanentBackendError, match=words):
        kubernetes_backend.apply(make_spec())


def test_a_missing_namespace_is_a_permanent_error_naming_it() -> None:
    with (
        fake_cluster(namespaces={"default"}) as fake,
        pytest.raises(PermanentBackendError, match=f"namespace {NAMESPACE} does not exist"),
    ):
        backend_for(fake.url).apply(make_spec())


def test_scale_to_zero_without_keda_is_a_permanent_error(fake_kubernetes: FakeKubernetes) -> None:
    backend = backend_for(fake_kubernetes.url, ClusterSettings(namespace=NAMESPACE, keda=False))

    with pytest.raises(PermanentBackendError, match="needs KEDA"):
        backend.apply(make_spec(policy="scale_to_zero", min_replicas=0))
    assert fake_kubernetes.requests == []


# configuration


def test_from_settings_uses_the_kubeconfig_and_namespace(
    fake_kubernetes: FakeKubernetes, settings: Any, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake_kubernetes.url}'}}}}]\n"
        "users: [{name: fake, user: {token: secret}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    settings.KUBECONFIG = str(kubeconfig)
    settings.KUBERNETES_NAMESPACE = "team-a"

    backend = KubernetesBackend.from_settings()
    backend.observe()

    assert backend.cluster.namespace == "team-a"
    assert {request.path.split("/namespaces/")[1].split("/")[0] for request in fake_kubernetes.requests} == {
        "team-a"
    }


def test_from_settings_outside_a_cluster_without_kubeconfig_is_a_permanent_error(settings: Any) -> None:
    settings.KUBECONFIG = ""

    with pytest.raises(PermanentBackendError, match="Set KUBECONFIG"):
        KubernetesBackend.from_settings()


def test_only_the_kubernetes_backend_imports_the_kubernetes_client() -> None:
    importing = re.compile(r"^\s*(import kubernetes\b|from kubernetes\b)", re.MULTILINE)
    found = {
        path.relative_to(ROOT).as_posix()
        for folder in ("marketplace", "serving")
        for path in (ROOT / folder).rglob("*.py")
        if importing.search(path.read_text(encoding="utf-8"))
    }
    assert found == {"serving/backends/kubernetes.py"}


def test_an_object_store_models_key_secret_is_applied_and_deleted_with_the_deployment(
    fake_kubernetes: FakeKubernetes, kubernetes_backend: KubernetesBackend
) -> None:
    store = StoreSpec(
        uri="s3://weights/tuned/",
        endpoint_url="",
        region="",
        access_key_id="AKID",
        secret_access_key="s3cr3t",
    )
    spec = make_spec()
    spec = replace(spec, model=replace(spec.model, store=store))
    kubernetes_backend.apply(spec)
    kubernetes_backend.apply(make_spec(8, "other"))
    secrets = {obj["metadata"]["name"]: obj for obj in fake_kubernetes.list("v1", "secrets")}
    assert list(secrets) == [manifests.weights_secret_name(spec)]
    kubernetes_backend.delete(7)
    assert fake_kubernetes.list("v1", "secrets") == [] and stored(fake_kubernetes, 7) == {}
    assert set(stored(fake_kubernetes, 8)) == ALWAYS
