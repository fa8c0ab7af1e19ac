"""The Kubernetes objects of a deployment, built by pure functions: names, labels, engine arguments,
scheduling, autoscalers, and the validation matrix against the Kubernetes and KEDA schemas."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from serving import manifests
from serving.choices import AutoscalingPolicy
from serving.spec import (
    AdapterSpec,
    Autoscaling,
    ClusterSettings,
    DeploymentSpec,
    InstanceSpec,
    ModelSpec,
    StoreSpec,
    media_domain_args,
)
from tests.engines import VllmArgumentParser

KUBERNETES_VERSIONS = ("1.29", "1.37")
POLICIES = tuple(AutoscalingPolicy.values)

L4 = InstanceSpec(
    slug="g6-xlarge",
    gpu_count=1,
    gpu_memory_gb=24,
    gpu_product="NVIDIA-L4",
    vcpu=4,
    memory_gb=16,
    node_labels={"node.kubernetes.io/instance-type": "g6.xlarge", "nvidia.com/gpu.product": "NVIDIA-L4"},
)
A100X8 = InstanceSpec(
    slug="p4d-24xlarge",
    gpu_count=8,
    gpu_memory_gb=40,
    gpu_product="NVIDIA-A100-SXM4-40GB",
    vcpu=96,
    memory_gb=1152,
    node_labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
)
QWEN_7B = ModelSpec(
    slug="qwen2-5-7b-instruct",
    huggingface_repo="Qwen/Qwen2.5-7B-Instruct",
    revision="",
    gated=False,
    parameters=7_600_000_000,
    gpu_memory_gb=16,
    context_length=131072,
)
LLAMA_70B = ModelSpec(
    slug="llama-3-3-70b-instruct",
    huggingface_repo="meta-llama/Llama-3.3-70B-Instruct",
    revision="6f6073b423013f6a7d4d9f39144961bfbfbc386b",
    gated=True,
    parameters=70_600_000_000,
    gpu_memory_gb=141,
    context_length=131072,
)
LLAMA_8B = ModelSpec(
    slug="llama-3-1-8b-instruct",
    huggingface_repo="meta-llama/Llama-3.1-8B-Instruct",
    revision="",
    gated=True,
    parameters=8_000_000_000,
    gpu_memory_gb=16,
    context_length=131072,
)
BGE_M3 = ModelSpec(
    slug="bge-m3",
    huggingface_repo="BAAI/bge-m3",
    revision="",
    gated=False,
    parameters=568_000_000,
    gpu_memory_gb=2,
    context_length=8192,
)


def make_spec(
    *,
    model: ModelSpec = QWEN_7B,
    instance: InstanceSpec = L4,
    policy: str = AutoscalingPolicy.FIXED,
    tp: int = 1,
    name: str = "chat",
    organization: str = "acme",
    options: dict[str, Any] | None = None,
    min_replicas: int = 1,
    target: float = 5.0,
) -> DeploymentSpec:
    return DeploymentSpec(
        deployment_id=42,
        name=name,
        organization=organization,
        generation=3,
        model=model,
        instance=instance,
        autoscaling=Autoscaling(
            policy=policy,
            min_replicas=min_replicas,
            max_replicas=4,
            target=target,
            idle_seconds=600,
            scale_up_window_seconds=30,
            scale_down_window_seconds=420,
        ),
        tensor_parallel_size=tp,
        engine_options=options or {},
    )


def pod_spec(spec: DeploymentSpec, cluster: ClusterSettings | None = None) -> dict[str, Any]:
    return manifests.build_deployment(spec, cluster or ClusterSettings())["spec"]["template"]["spec"]


def container(spec: DeploymentSpec, cluster: ClusterSettings | None = None) -> dict[str, Any]:
    (vllm,) = pod_spec(spec, cluster)["containers"]
    return vllm


def env_names(spec: DeploymentSpec) -> set[str]:
    return {entry["name"] for entry in container(spec)["env"]}


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's values, decoded from its `data`."""
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# Names and labels


def test_object_name_joins_organization_name_and_deployment_id() -> None:
    assert manifests.object_name(make_spec()) == "acme-chat-42"


def test_names_of_different_organisations_never_collide() -> None:
    # "acme" + "prod-chat" and "acme-prod" + "chat" read alike; the deployment id keeps them apart.
    first = dataclasses.replace(make_spec(organization="acme", name="prod-chat"), deployment_id=1)
    second = dataclasses.replace(make_spec(organization="acme-prod", name="chat"), deployment_id=2)
    assert manifests.object_name(first) != manifests.object_name(second)


def test_names_never_exceed_63_characters_for_60_character_organization_and_name() -> None:
    spec = make_spec(organization="o" * 60, name="n" * 60)
    name = manifests.object_name(spec)
    assert len(name) <= manifests.MAX_OBJECT_NAME
    # The longest names Kubernetes derives: the pod (`<name>-<hash ≤10>-<5>`) and KEDA's HPA.
    assert len(f"{name}-{'x' * 10}-{'y' * 5}") <= 63
    assert len(f"keda-hpa-{name}") <= 63
    for manifest in manifests.build_objects(spec, ClusterSettings()):
        assert len(manifest["metadata"]["name"]) <= 63
        assert all(len(value) <= 63 for value in manifest["metadata"]["labels"].values())


def test_truncated_names_stay_distinct_and_stable() -> None:
    first = dataclasses.replace(make_spec(organization="o" * 60, name="n" * 59 + "a"), deployment_id=7)
    second = dataclasses.replace(make_spec(organization="o" * 60, name="n" * 59 + "b"), deployment_id=8)
    assert manifests.object_name(first) != manifests.object_name(second)
    assert manifests.object_name(first) == manifests.object_name(dataclasses.replace(first))


def test_names_are_made_dns_safe() -> None:
    name = manifests.object_name(make_spec(organization="9Lives_Inc", name="chat"))
    assert name[0].isalpha()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    other = dataclasses.replace(make_spec(organization="9lives-inc", name="chat"), deployment_id=43)
    assert name != manifests.object_name(other)


def test_labels_identify_the_deployment() -> None:
    assert manifests.labels(make_spec()) == {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": "acme-chat-42",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "model-marketplace",
        "app.kubernetes.io/managed-by": "model-marketplace",
        "marketplace.io/deployment-id": "42",
        "marketplace.io/organization": "acme",
    }


def test_managed_selector_matches_the_labels() -> None:
    key, value = manifests.MANAGED_SELECTOR.split("=")
    assert manifests.labels(make_spec())[key] == value


def test_every_object_carries_labels_and_generation() -> None:
    spec = make_spec(policy=AutoscalingPolicy.QUEUE_DEPTH)
    for manifest in manifests.build_objects(spec, ClusterSettings()):
        assert manifest["metadata"]["labels"] == manifests.labels(spec)
        assert manifest["metadata"]["annotations"] == {"marketplace.io/generation": "3"}
        assert manifest["metadata"]["namespace"] == "marketplace-serving"


# Engine arguments


def test_engine_args_start_with_the_model_and_fixed_flags() -> None:
    assert manifests.engine_args(make_spec()) == [
        "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name", "chat",
        "--tensor-parallel-size", "1",
        "--max-model-len", "32768",
        "--port", "8000",
        "--allowed-media-domains", "invalid.",
    ]  # fmt: skip


# Media URLs: an engine fetches none by default, and only from the configured domains otherwise.


def test_by_default_an_engine_may_fetch_media_from_no_domain() -> None:
    args = container(make_spec())["args"]
    # vLLM reads an empty list as "any domain": "none" is the reserved name that never resolves.
    assert flag_value(args, "--allowed-media-domains") == "invalid."
    assert args.count("--allowed-media-domains") == 1


def test_configured_media_domains_are_the_only_ones() -> None:
    cluster = ClusterSettings(media_domains=("images.example.com", "cdn.example.org"))
    args = container(make_spec(), cluster)["args"]
    start = args.index("--allowed-media-domains") + 1
    assert args[start : start + 2] == ["images.example.com", "cdn.example.org"]
    assert not args[start + 2 :] or args[start + 2].startswith("--")
    assert "invalid." not in args


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("", ["invalid."]), ("images.example.com, cdn.example.org", ["images.example.com", "cdn.example.org"])],
    ids=["unset", "two-domains"],
)
def test_local_engines_get_the_same_media_flag(
    monkeypatch: pytest.MonkeyPatch, setting: str, expected: list[str]
) -> None:
    from serving.local import engine_env

    monkeypatch.setenv("ENGINE_MEDIA_DOMAINS", setting)
    command = engine_env.engine_command(
        "/models/chat", port=8001, served_model_name="chat", python=Path("py")
    )
    start = command.index("--allowed-media-domains") + 1
    assert command[start : start + len(expected)] == expected
    rest = command[start + len(expected) :]
    assert not rest or rest[0].startswith("--")  # nothing else is taken for a domain


@pytest.mark.slow
def test_vllm_itself_reads_the_media_flag_as_the_platform_means_it(vllm_parser: VllmArgumentParser) -> None:
    """The flag and its values through vLLM's own argument parser (the local engine's vLLM 0.32)."""
    for domains, expected in (((), ["invalid."]), (("images.example.com", "cdn.example.org"), None)):
        args = ["--model", "m", *media_domain_args(domains), "--max-model-len", "2048"]
        assert vllm_parser.parse(args)["allowed_media_domains"] == (expected or list(domains))


def test_a_media_url_cannot_redirect_the_engine_elsewhere() -> None:
    (redirects,) = [e for e in container(make_spec())["env"] if e["name"] == "VLLM_MEDIA_URL_ALLOW_REDIRECTS"]
    assert redirects["value"] == "0"


def test_pinned_revision_is_passed() -> None:
    args = manifests.engine_args(make_spec(model=LLAMA_70B, instance=A100X8, tp=4))
    assert flag_value(args, "--revision") == LLAMA_70B.revision
    assert "--revision" not in manifests.engine_args(make_spec())


def test_max_model_len_is_the_model_context_when_shorter_than_the_cap() -> None:
    assert flag_value(manifests.engine_args(make_spec(model=BGE_M3)), "--max-model-len") == "8192"


def test_max_model_len_option_wins() -> None:
    args = manifests.engine_args(make_spec(options={"max_model_len": 65536}))
    assert flag_value(args, "--max-model-len") == "65536"
    assert args.count("--max-model-len") == 1


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("dtype", "bfloat16", ["--dtype", "bfloat16"]),
        ("quantization", "fp8", ["--quantization", "fp8"]),
        ("gpu_memory_utilization", 0.92, ["--gpu-memory-utilization", "0.92"]),
        ("max_num_seqs", 128, ["--max-num-seqs", "128"]),
        ("enable_prefix_caching", True, ["--enable-prefix-caching"]),
        ("enable_prefix_caching", False, ["--no-enable-prefix-caching"]),
        ("trust_remote_code", True, ["--trust-remote-code"]),
        ("trust_remote_code", False, []),
        ("runner", "pooling", ["--runner", "pooling"]),
        ("tokenizer_mode", "mistral", ["--tokenizer-mode", "mistral"]),
        ("enable_auto_tool_choice", True, ["--enable-auto-tool-choice"]),
        ("tool_call_parser", "llama3_json", ["--tool-call-parser", "llama3_json"]),
    ],
)
def test_engine_option_maps_to_its_vllm_flag(option: str, value: Any, expected: list[str]) -> None:
    base = manifests.engine_args(make_spec())
    assert manifests.engine_args(make_spec(options={option: value})) == [*base, *expected]


def test_unknown_engine_option_is_refused() -> None:
    with pytest.raises(ValueError, match="enforce_eager"):
        manifests.engine_args(make_spec(options={"enforce_eager": True}))


@pytest.mark.parametrize(("option", "value"), [("trust_remote_code", "yes"), ("dtype", True), ("dtype", "")])
def test_engine_option_of_the_wrong_kind_is_refused(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        manifests.engine_args(make_spec(options={option: value}))


def test_container_runs_vllm_serve_with_the_engine_args() -> None:
    spec = make_spec()
    vllm = container(spec)
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["args"] == manifests.engine_args(spec)
    assert vllm["image"] == "vllm/vllm-openai:v0.33.0"
    assert vllm["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


# Start-up


@pytest.mark.parametrize(
    ("parameters", "seconds"),
    [
        (568_000_000, 660),
        (7_600_000_000, 660),
        (70_600_000_000, 1080),
        (405_000_000_000, 3060),
        (10**13, 3600),
    ],
)
def test_startup_time_grows_with_parameters_up_to_an_hour(parameters: int, seconds: int) -> None:
    spec = make_spec(model=dataclasses.replace(QWEN_7B, parameters=parameters))
    assert manifests.startup_probe_seconds(spec) == seconds


def test_startup_probe_allows_the_startup_time() -> None:
    spec = make_spec(model=LLAMA_70B, instance=A100X8, tp=4)
    probe = container(spec)["startupProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": "http"}
    assert probe["failureThreshold"] * probe["periodSeconds"] == manifests.startup_probe_seconds(spec)


def test_readiness_and_liveness_use_health() -> None:
    vllm = container(make_spec())
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"


def test_rollout_deadline_outlasts_the_startup_probe() -> None:
    spec = make_spec(model=LLAMA_70B, instance=A100X8, tp=4)
    deployment = manifests.build_deployment(spec, ClusterSettings())
    assert deployment["spec"]["progressDeadlineSeconds"] > manifests.startup_probe_seconds(spec)


# Secrets and volumes


def test_gated_model_gets_the_token_from_the_secret() -> None:
    vllm = container(make_spec(model=LLAMA_8B))
    (token,) = [entry for entry in vllm["env"] if entry["name"] == "HF_TOKEN"]
    assert token["valueFrom"] == {"secretKeyRef": {"name": "huggingface-token", "key": "token"}}


def test_a_model_of_unknown_gating_gets_the_token_if_the_secret_exists() -> None:
    vllm = container(make_spec(model=dataclasses.replace(QWEN_7B, gated=None)))
    (token,) = [entry for entry in vllm["env"] if entry["name"] == "HF_TOKEN"]
    assert token["valueFrom"] == {
        "secretKeyRef": {"name": "huggingface-token", "key": "token", "optional": True}
    }


def test_open_model_gets_no_token() -> None:
    assert "HF_TOKEN" not in env_names(make_spec())
    assert "HF_HOME" in env_names(make_spec())


def test_model_cache_is_the_shared_claim_when_configured() -> None:
    cluster = ClusterSettings(model_cache_pvc="hf-cache")
    volumes = {volume["name"]: volume for volume in pod_spec(make_spec(), cluster)["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container(make_spec(), cluster)["volumeMounts"]}
    assert mounts["model-cache"] == "/root/.cache/huggingface"


def test_model_cache_is_an_empty_dir_without_a_claim() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec(make_spec())["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}


def test_shared_memory_is_a_sized_memory_volume() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec(make_spec())["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"].endswith("Gi")
    mounts = {mount["name"]: mount["mountPath"] for mount in container(make_spec())["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"  # noqa: S108


# Scheduling and resources


def test_pods_land_on_the_instance_type_and_tolerate_the_gpu_taint() -> None:
    spec = pod_spec(make_spec(), ClusterSettings(gpu_taint_key="gpu"))
    assert spec["nodeSelector"] == L4.node_labels
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_replica_holds_the_whole_instance_and_the_engine_uses_tp_gpus() -> None:
    # A replica is an instance (what quota reserves and the price counts): all 8 GPUs, tp 4 of them used.
    deployment_container = container(make_spec(model=LLAMA_70B, instance=A100X8, tp=4))
    assert deployment_container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert deployment_container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    args = deployment_container["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"


def test_cpu_and_memory_requests_take_the_instance_with_headroom() -> None:
    requests = container(make_spec(model=LLAMA_70B, instance=A100X8, tp=4))["resources"]["requests"]
    assert requests["cpu"] == f"{int(96 * 1000 * 0.8)}m"
    assert requests["memory"] == f"{int(1152 * 1024 * 0.8)}Mi"


def test_fixed_policy_sets_replicas() -> None:
    deployment = manifests.build_deployment(make_spec(min_replicas=2), ClusterSettings())
    assert deployment["spec"]["replicas"] == 2


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != AutoscalingPolicy.FIXED])
def test_autoscaled_deployment_leaves_replicas_to_the_autoscaler(policy: str) -> None:
    deployment = manifests.build_deployment(make_spec(policy=policy), ClusterSettings())
    assert "replicas" not in deployment["spec"]


def test_rollout_never_surges_beyond_the_reserved_gpus() -> None:
    strategy = manifests.build_deployment(make_spec(), ClusterSettings())["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_service_and_budget_select_the_pods() -> None:
    spec = make_spec()
    deployment = manifests.build_deployment(spec, ClusterSettings())
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = manifests.build_service(spec, ClusterSettings())
    pdb = manifests.build_pdb(spec, ClusterSettings())
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


# Autoscalers


def test_fixed_policy_renders_no_autoscaler() -> None:
    assert manifests.build_autoscaler(make_spec(), ClusterSettings()) is None
    kinds = [m["kind"] for m in manifests.build_objects(make_spec(), ClusterSettings())]
    assert kinds == ["NetworkPolicy", "Deployment", "Service", "PodDisruptionBudget"]


def test_queue_depth_with_keda_scales_on_waiting_requests() -> None:
    scaled = manifests.build_autoscaler(make_spec(policy=AutoscalingPolicy.QUEUE_DEPTH), ClusterSettings())
    assert scaled is not None and scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "acme-chat-42"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 4)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'sum(vllm:num_requests_waiting{namespace="marketplace-serving",'
        'pod=~"acme-chat-42-[a-z0-9]+-[a-z0-9]{5}"})',
        "threshold": "5",
    }
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {
        "scaleUp": {"stabilizationWindowSeconds": 30},
        "scaleDown": {"stabilizationWindowSeconds": 420},
    }


def test_kv_cache_with_keda_scales_on_mean_cache_usage() -> None:
    spec = make_spec(policy=AutoscalingPolicy.KV_CACHE, target=0.8)
    scaled = manifests.build_autoscaler(spec, ClusterSettings())
    assert scaled is not None
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"].startswith("avg(vllm:kv_cache_usage_perc{")
    assert trigger["metadata"]["threshold"] == "0.8"
    assert trigger["metricType"] == "Value"


def test_scale_to_zero_with_keda_idles_down_and_wakes_on_demand() -> None:
    scaled = manifests.build_autoscaler(make_spec(policy=AutoscalingPolicy.SCALE_TO_ZERO), ClusterSettings())
    assert scaled is not None
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["cooldownPeriod"] == 600
    queue, demand = scaled["spec"]["triggers"]
    assert queue["name"] == "queue-depth"
    assert 'deployment_id="42"' in demand["metadata"]["query"]
    assert demand["metadata"]["activationThreshold"] == "0"


def test_pod_pattern_does_not_reach_a_deployment_with_a_longer_name() -> None:
    scaled = manifests.build_autoscaler(make_spec(policy=AutoscalingPolicy.QUEUE_DEPTH), ClusterSettings())
    assert scaled is not None
    assert 'pod=~"acme-chat-42-[a-z0-9]+-[a-z0-9]{5}"' in scaled["spec"]["triggers"][0]["metadata"]["query"]


@pytest.mark.parametrize(
    ("policy", "target", "metric", "average"),
    [
        (AutoscalingPolicy.QUEUE_DEPTH, 5.0, "vllm:num_requests_waiting", "5"),
        (AutoscalingPolicy.KV_CACHE, 0.8, "vllm:kv_cache_usage_perc", "800m"),
    ],
)
def test_without_keda_an_hpa_scales_on_the_external_metric(
    policy: str, target: float, metric: str, average: str
) -> None:
    hpa = manifests.build_autoscaler(make_spec(policy=policy, target=target), ClusterSettings(keda=False))
    assert hpa is not None and hpa["kind"] == "HorizontalPodAutoscaler"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    (external,) = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert external["metric"] == {
        "name": metric,
        "selector": {"matchLabels": {"app_kubernetes_io_instance": "acme-chat-42"}},
    }
    assert external["target"] == {"type": "AverageValue", "averageValue": average}
    assert hpa["spec"]["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 420}


def test_scale_to_zero_without_keda_is_refused() -> None:
    spec = make_spec(policy=AutoscalingPolicy.SCALE_TO_ZERO)
    with pytest.raises(ValueError, match="KEDA"):
        manifests.build_autoscaler(spec, ClusterSettings(keda=False))
    with pytest.raises(ValueError, match="KEDA"):
        manifests.build_objects(spec, ClusterSettings(keda=False))


def test_objects_come_in_apply_order() -> None:
    objects = manifests.build_objects(make_spec(policy=AutoscalingPolicy.QUEUE_DEPTH), ClusterSettings())
    assert [m["kind"] for m in objects] == [
        "NetworkPolicy", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject"
    ]  # fmt: skip


# Who may call an engine: the platform's web and gateway pods, and Prometheus.


def network_policy(cluster: ClusterSettings | None = None) -> dict[str, Any]:
    return manifests.build_network_policy(make_spec(), cluster or ClusterSettings())


def test_the_network_policy_covers_every_replica_of_the_deployment() -> None:
    policy = network_policy()
    assert policy["spec"]["podSelector"] == {"matchLabels": manifests.selector_labels(make_spec())}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["metadata"]["name"] == manifests.object_name(make_spec())


def test_only_the_engine_port_is_open_and_only_to_two_peers() -> None:
    (rule,) = network_policy()["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert len(rule["from"]) == 2


def test_the_gateway_peer_is_web_or_gateway_pods_never_other_engines() -> None:
    gateway, _ = network_policy()["spec"]["ingress"][0]["from"]
    selector = gateway["podSelector"]
    assert selector["matchLabels"] == {"app.kubernetes.io/part-of": "model-marketplace"}
    assert selector["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["web", "gateway"]}
    ]
    # Engine pods share part-of; their component keeps them out.
    engine_labels = manifests.labels(make_spec())
    assert engine_labels["app.kubernetes.io/component"] not in selector["matchExpressions"][0]["values"]
    assert "namespaceSelector" not in gateway  # same namespace as the engines by default


def test_the_platform_in_another_namespace_is_selected_by_its_name() -> None:
    cluster = ClusterSettings(
        gateway_namespace="marketplace", gateway_pod_labels={"app.kubernetes.io/instance": "prod"}
    )
    gateway, _ = network_policy(cluster)["spec"]["ingress"][0]["from"]
    assert gateway["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "marketplace"}}
    assert gateway["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "prod"}


def test_prometheus_is_selected_by_its_namespace_and_labels() -> None:
    cluster = ClusterSettings(prometheus_namespace="observability", prometheus_pod_labels={"app": "prom"})
    _, prometheus = network_policy(cluster)["spec"]["ingress"][0]["from"]
    assert prometheus == {
        "podSelector": {"matchLabels": {"app": "prom"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
    }


def test_without_network_policies_none_is_built() -> None:
    objects = manifests.build_objects(make_spec(), ClusterSettings(network_policy=False))
    assert "NetworkPolicy" not in [m["kind"] for m in objects]


def test_builders_do_not_share_mutable_state() -> None:
    spec, cluster = make_spec(), ClusterSettings()
    first = manifests.build_objects(spec, cluster)
    snapshot = copy.deepcopy(first)
    policy, deployment = first[0], first[1]
    deployment["metadata"]["labels"]["tampered"] = "yes"
    deployment["spec"]["template"]["spec"]["nodeSelector"]["tampered"] = "yes"
    for peer in policy["spec"]["ingress"][0]["from"]:
        peer["podSelector"]["matchLabels"]["tampered"] = "yes"
    assert manifests.build_objects(spec, cluster) == snapshot
    assert "tampered" not in L4.node_labels
    assert "tampered" not in cluster.gateway_pod_labels and "tampered" not in cluster.prometheus_pod_labels


# The validation matrix: every object of a spread of specs × every policy × KEDA on/off, against the
# Kubernetes API schemas (strict: unknown fields fail) and KEDA's ScaledObject CRD schema.

MATRIX_SPECS = {
    "small": lambda policy: make_spec(policy=policy),
    "70b-tp4": lambda policy: make_spec(
        model=LLAMA_70B,
        instance=A100X8,
        tp=4,
        policy=policy,
        min_replicas=2,
        options={
            "max_model_len": 65536,
            "dtype": "bfloat16",
            "quantization": "fp8",
            "gpu_memory_utilization": 0.92,
            "max_num_seqs": 128,
            "enable_prefix_caching": True,
        },
    ),
    "embedding": lambda policy: make_spec(
        model=BGE_M3, policy=policy, name="embed", options={"runner": "pooling"}, target=0.75
    ),
    "gated": lambda policy: make_spec(
        model=LLAMA_8B,
        policy=policy,
        options={
            "enable_auto_tool_choice": True,
            "tool_call_parser": "llama3_json",
            "trust_remote_code": False,
            "tokenizer_mode": "auto",
            "enable_prefix_caching": False,
        },
    ),
    "unknown-gating": lambda policy: make_spec(model=dataclasses.replace(BGE_M3, gated=None), policy=policy),
    "long-names": lambda policy: make_spec(
        model=QWEN_7B,
        instance=dataclasses.replace(L4, node_labels={}),
        policy=policy,
        organization="o" * 60,
        name="n" * 60,
    ),
}


def _matrix() -> list[Any]:
    cases = []
    for spec_name in MATRIX_SPECS:
        for policy in POLICIES:
            for keda in (True, False):
                if policy == AutoscalingPolicy.SCALE_TO_ZERO and not keda:
                    continue  # refused: see test_scale_to_zero_without_keda_is_refused
                for version in KUBERNETES_VERSIONS:
                    case_id = f"{spec_name}-{policy}-{'keda' if keda else 'hpa'}-k8s{version}"
                    cases.append(pytest.param(spec_name, policy, keda, version, id=case_id))
    return cases


def _closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it: fields it does not declare are pruned, which for a
    builder means a silently lost setting, so the test treats them as errors."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in closed and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def scaledobject_validator() -> jsonschema.protocols.Validator:
    path = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.json"
    schema = _closed(json.loads(path.read_text()))
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


@pytest.mark.parametrize(("spec_name", "policy", "keda", "version"), _matrix())
def test_objects_pass_the_api_schemas(
    spec_name: str,
    policy: str,
    keda: bool,
    version: str,
    scaledobject_validator: jsonschema.protocols.Validator,
) -> None:
    spec = MATRIX_SPECS[spec_name](policy)
    cluster = ClusterSettings(
        keda=keda,
        model_cache_pvc="hf-cache" if keda else "",
        # Both shapes of NetworkPolicy peer: same namespace, and selected by namespace name.
        gateway_namespace="" if keda else "marketplace",
        media_domains=() if keda else ("images.example.com",),
    )
    objects = manifests.build_objects(spec, cluster)
    for manifest in objects:
        if manifest["kind"] == "ScaledObject":
            scaledobject_validator.validate(manifest)
        else:
            kubernetes_validate.validate(manifest, version, strict=True)
    autoscaler = "ScaledObject" if keda else "HorizontalPodAutoscaler"
    expected = ["NetworkPolicy", "Deployment", "Service", "PodDisruptionBudget"]
    assert [m["kind"] for m in objects] == expected + (
        [] if policy == AutoscalingPolicy.FIXED else [autoscaler]
    )


STORED = dataclasses.replace(
    QWEN_7B,
    slug="custom-3-tuned",
    huggingface_repo="s3://weights/models/tuned/",
    store=StoreSpec(
        uri="s3://weights/models/tuned/",
        endpoint_url="https://minio.example.com",
        region="eu-west-1",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="not-in-any-log",
    ),
)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_model_from_an_object_store_streams_with_its_key_from_a_secret(version: str) -> None:
    spec = make_spec(model=STORED)
    objects = manifests.build_objects(spec, ClusterSettings())
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)
    assert [m["kind"] for m in objects][:3] == ["NetworkPolicy", "Secret", "Deployment"]
    secret = objects[1]
    assert secret["metadata"]["labels"] == manifests.labels(spec)  # deleted with the deployment's objects
    assert secret_values(secret)["AWS_SECRET_ACCESS_KEY"] == "not-in-any-log"
    args = container(spec)["args"]
    assert args[:3] == ["s3://weights/models/tuned/", "--load-format", "runai_streamer"]
    assert "--revision" not in args and "not-in-any-log" not in json.dumps(objects[2:])
    assert "not-in-any-log" not in repr(spec)
    env = {item["name"]: item for item in container(spec)["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.example.com"
    assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert env["AWS_EC2_METADATA_DISABLED"]["value"] == "true"
    assert "HF_TOKEN" not in env


def test_aws_s3_itself_needs_no_endpoint_and_keeps_virtual_addressing() -> None:
    model = dataclasses.replace(STORED, store=dataclasses.replace(STORED.store, endpoint_url="", region=""))
    names = env_names(make_spec(model=model))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"} <= names
    assert not names & {"AWS_ENDPOINT_URL", "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "AWS_REGION"}


def test_vllm_reads_the_object_store_flags(vllm_parser: VllmArgumentParser) -> None:
    parsed = vllm_parser.parse(container(make_spec(model=STORED))["args"])
    assert parsed["model_tag"] == "s3://weights/models/tuned/" and parsed["load_format"] == "runai_streamer"


# LoRA adapters on a cluster: fetched from the platform's object store by an init container

ADAPTED = dataclasses.replace(
    QWEN_7B,
    slug="custom-3-support",
    base_slug="qwen2-5-7b-instruct",
    adapter_path="/data/tuning/support/adapter",
    adapter_rank=16,
    adapter_url="https://store.example.com/adapters/3/support.tar.gz?X-Amz-Signature=own",
)


def adapted_spec() -> DeploymentSpec:
    """An adapter's deployment serving two more adapters beside it, all fetched by URL."""
    served = (
        AdapterSpec(
            served_name="chat:legal", path="/data/legal", rank=8, url="https://s/legal?X-Amz-Signature=l"
        ),
        AdapterSpec(
            served_name="chat:sales", path="/data/sales", rank=32, url="https://s/sales?X-Amz-Signature=s"
        ),
    )
    return dataclasses.replace(make_spec(model=ADAPTED), adapters=served)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_adapters_on_a_cluster_are_fetched_by_an_init_container_before_the_engine_starts(
    version: str,
) -> None:
    spec = adapted_spec()
    objects = manifests.build_objects(spec, ClusterSettings())
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)
    assert [m["kind"] for m in objects][:3] == ["NetworkPolicy", "Secret", "Deployment"]
    secret = objects[1]
    assert secret_values(secret) == {
        "ADAPTER_0_URL": ADAPTED.adapter_url,
        "ADAPTER_1_URL": "https://s/legal?X-Amz-Signature=l",
        "ADAPTER_2_URL": "https://s/sales?X-Amz-Signature=s",
    }
    pod = pod_spec(spec)
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == manifests.FETCH_CONTAINER and fetch["image"] == ClusterSettings().image
    assert fetch["command"][:2] == ["python3", "-c"]
    assert fetch["command"][3:] == [manifests.ADAPTERS_PATH, "0", "1", "2"]
    refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in fetch["env"]}
    assert refs == {key: {"name": manifests.weights_secret_name(spec), "key": key} for key in secret["data"]}
    assert {"name": "adapters", "emptyDir": {}} in pod["volumes"]
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in container(spec)["volumeMounts"]
    args = container(spec)["args"]
    start = args.index("--lora-modules")
    assert args[start + 1 : start + 4] == [
        "chat=/adapters/0", "chat:legal=/adapters/1", "chat:sales=/adapters/2",
    ]  # fmt: skip
    assert flag_value(args, "--max-lora-rank") == "32" and flag_value(args, "--max-loras") == "3"
    # The URLs are bearer credentials: only the Secret holds them, and a shown object hides them.
    assert "X-Amz-Signature" not in json.dumps(objects[2:]) + repr(spec)
    assert "X-Amz-Signature" not in json.dumps(manifests.redacted(secret))


def test_a_deployment_without_adapter_urls_has_no_fetching_and_no_secret() -> None:
    plain = make_spec(model=dataclasses.replace(ADAPTED, adapter_url=""))
    assert "initContainers" not in pod_spec(plain)
    assert "Secret" not in [m["kind"] for m in manifests.build_objects(plain, ClusterSettings())]
    assert f"chat={ADAPTED.adapter_path}" in container(plain)["args"]


def test_vllm_reads_the_fetched_adapters_flags(vllm_parser: VllmArgumentParser) -> None:
    parsed = vllm_parser.parse(container(adapted_spec())["args"])
    modules = re.findall(r"name='([^']+)', path='([^']+)'", " ".join(parsed["lora_modules"]))
    assert modules == [("chat", "/adapters/0"), ("chat:legal", "/adapters/1"), ("chat:sales", "/adapters/2")]
    assert (parsed["enable_lora"], parsed["max_lora_rank"], parsed["max_loras"]) == (True, 32, 3)


# A custom model registered from a folder: the volume holding it, mounted read-only at the same folder

FOLDER_MODEL = dataclasses.replace(QWEN_7B, slug="custom-3-mine", weights_path="/models/lab/mine")
VOLUMES = (("/models", "shared-models"), ("/models/lab", "lab-models"), ("/data", "data"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_folder_model_is_read_from_the_volume_holding_its_folder_at_the_same_path(version: str) -> None:
    spec = make_spec(model=FOLDER_MODEL)
    cluster = ClusterSettings(model_volumes=VOLUMES)
    for manifest in manifests.build_objects(spec, cluster):
        kubernetes_validate.validate(manifest, version, strict=True)
    pod = pod_spec(spec, cluster)
    # the deepest volume holding the folder, never written to
    volume = {"name": "custom-model", "persistentVolumeClaim": {"claimName": "lab-models", "readOnly": True}}
    assert volume in pod["volumes"]
    assert {"name": "custom-model", "mountPath": "/models/lab", "readOnly": True} in container(spec, cluster)[
        "volumeMounts"
    ]
    assert container(spec, cluster)["args"][0] == "/models/lab/mine"


def test_a_folder_in_no_volume_is_not_built_and_other_weights_mount_none() -> None:
    with pytest.raises(ValueError, match="none of the volumes"):
        manifests.build_deployment(
            make_spec(model=FOLDER_MODEL), ClusterSettings(model_volumes=(("/mod", "x"),))
        )
    hub = pod_spec(make_spec(), ClusterSettings(model_volumes=VOLUMES))
    assert [volume["name"] for volume in hub["volumes"]] == ["dshm", "model-cache"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_private_repository_is_downloaded_with_the_organisations_own_token_from_the_deployments_secret(
    version: str,
) -> None:
    private = dataclasses.replace(QWEN_7B, slug="custom-3-private", gated=False, hub_token="hf_own_token")
    spec = make_spec(model=private)
    objects = manifests.build_objects(spec, ClusterSettings())
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)
    secret = next(obj for obj in objects if obj["kind"] == "Secret")
    assert secret_values(secret) == {"HF_TOKEN": "hf_own_token"}
    env = {item["name"]: item for item in container(spec)["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": manifests.weights_secret_name(spec), "key": "HF_TOKEN",
    }  # fmt: skip
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    assert "hf_own_token" not in json.dumps(deployment) + repr(spec)
