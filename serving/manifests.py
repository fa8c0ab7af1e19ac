"""Pure builders: a `DeploymentSpec` + `ClusterSettings` → the Kubernetes objects of one deployment.

Plain dicts, ready for server-side apply; no ORM, no network, no `kubernetes` import, so they can be
validated against the API schemas and diffed without a cluster (tests/serving/test_manifests.py).

Metrics contract (what the autoscalers expect from the cluster's monitoring):
- vLLM pods are scraped by Prometheus with the usual prometheus-operator target labels `namespace` and
  `pod`. The KEDA queries select a deployment's pods by those two labels only.
- Without KEDA, prometheus-adapter serves `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc` as
  external metrics under those names (its default `"^(.*)$" → "${1}"` naming); an external selector cannot
  match a regular expression, so the scrape must also copy the pod label `app.kubernetes.io/instance` to
  the series (PodMonitor `podTargetLabels`, sanitised to `app_kubernetes_io_instance`).
- Scale-to-zero wakes on `marketplace_gateway_requests_total{deployment_id="<id>"}`, a counter the gateway
  increments for every request it receives for a deployment: at zero replicas no vLLM metric exists, so
  only the gateway can tell KEDA that someone is waiting.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from serving.choices import AutoscalingPolicy
from serving.spec import (
    ClusterSettings,
    DeploymentSpec,
    InstanceSpec,
    ModelSpec,
    card_engine_args,
    lora_args,
    media_domain_args,
    model_location,
    served_model_name,
    volume_holding,
)

Manifest = dict[str, Any]

MANAGED_BY = "model-marketplace"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
DEPLOYMENT_ID_LABEL = "marketplace.io/deployment-id"
ORGANIZATION_LABEL = "marketplace.io/organization"
GENERATION_ANNOTATION = "marketplace.io/generation"

PORT = 8000
CACHE_PATH = "/root/.cache/huggingface"  # the official image runs as root; HF_HOME points here
SHM_PATH = "/dev/shm"  # noqa: S108 (a memory volume of the pod's own, not a shared temp directory)
DEFAULT_MAX_MODEL_LEN = 32768
INSTANCE_METRIC_LABEL = "app_kubernetes_io_instance"  # `app.kubernetes.io/instance` as a Prometheus label
GATEWAY_REQUESTS_METRIC = "marketplace_gateway_requests_total"

# A pod is named `<deployment>-<pod-template-hash (≤10)>-<5 random>` and the API server cuts the
# generateName base to 58 characters, so names longer than 46 would lose their tail in pod names (and
# the pod regex below would stop matching). 46 keeps every derived name whole and ≤ 63.
MAX_OBJECT_NAME = 63 - len("-") - 10 - len("-") - 5

STARTUP_BASE_SECONDS = 600
STARTUP_SECONDS_PER_10B = 60
STARTUP_MAX_SECONDS = 3600
PROBE_PERIOD_SECONDS = 10
HEADROOM = 0.8  # share of an instance's vCPU and memory requested; the rest is the node's own

# engine_options key → vLLM flag, in the order they are emitted (stable order keeps diffs quiet).
# Booleans are flags; everything else takes a value. max_model_len is handled with the required args.
_VALUE_FLAGS = {
    "dtype": "--dtype",
    "quantization": "--quantization",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_num_seqs": "--max-num-seqs",
    "runner": "--runner",
    "tokenizer_mode": "--tokenizer-mode",
    "tool_call_parser": "--tool-call-parser",
}
_BOOLEAN_FLAGS: dict[str, tuple[str, str | None]] = {
    # vLLM enables prefix caching by default for generative models, so False must be said explicitly.
    "enable_prefix_caching": ("--enable-prefix-caching", "--no-enable-prefix-caching"),
    "trust_remote_code": ("--trust-remote-code", None),
    "enable_auto_tool_choice": ("--enable-auto-tool-choice", None),
}
ENGINE_OPTIONS = frozenset({"max_model_len", *_VALUE_FLAGS, *_BOOLEAN_FLAGS})


def object_name(spec: DeploymentSpec) -> str:
    """`<organization>-<name>-<deployment id>` as a DNS-1035 label of at most MAX_OBJECT_NAME characters.

    The id makes the name unique whatever the other parts are: `acme` + `prod-chat` and `acme-prod` +
    `chat` must never share objects (server-side apply with force would take the other's over). The
    readable part is shortened to make room for the id. Stable: the same spec always gives the same name.
    """
    suffix = f"-{spec.deployment_id}"
    name = re.sub(r"[^a-z0-9-]+", "-", f"{spec.organization}-{spec.name}".lower()).strip("-")
    if not name[:1].isalpha():
        name = f"m-{name}"
    return f"{name[: MAX_OBJECT_NAME - len(suffix)].rstrip('-')}{suffix}"


def label_value(value: str) -> str:
    """A valid label value: ≤ 63 of [A-Za-z0-9_.-], starting and ending alphanumeric."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")


def selector_labels(spec: DeploymentSpec) -> dict[str, str]:
    """The immutable subset that Deployment, Service and PDB select on."""
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": object_name(spec)}


def labels(spec: DeploymentSpec) -> dict[str, str]:
    """Labels on every object and pod: the recommended `app.kubernetes.io/*` set plus the ids the
    reconciler lists and groups by."""
    return {
        **selector_labels(spec),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "model-marketplace",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        DEPLOYMENT_ID_LABEL: str(spec.deployment_id),
        ORGANIZATION_LABEL: label_value(spec.organization),
    }


def _metadata(spec: DeploymentSpec, cluster: ClusterSettings) -> dict[str, Any]:
    return {
        "name": object_name(spec),
        "namespace": cluster.namespace,
        "labels": labels(spec),
        "annotations": {GENERATION_ANNOTATION: str(spec.generation)},
    }


def max_model_len(spec: DeploymentSpec) -> int:
    """The context window served: the option when set, else the model's, capped so the KV cache of
    one long sequence cannot crowd out everything else on modest GPUs."""
    option = spec.engine_options.get("max_model_len")
    if option is not None:
        return int(option)
    return min(spec.model.context_length, DEFAULT_MAX_MODEL_LEN)


def engine_args(spec: DeploymentSpec, media_domains: Sequence[str] = ()) -> list[str]:
    """Arguments after `vllm serve`: the model, then the platform's fixed flags (the media domains the
    engine may fetch from: none unless given), then the flags the card's kind needs (spec.card_engine_args),
    then allow-listed options.

    Raises ValueError on an option outside the allow-list or of the wrong kind; the API validates first,
    this is the last guard before a string reaches a command line.
    """
    unknown = sorted(set(spec.engine_options) - ENGINE_OPTIONS)
    if unknown:
        raise ValueError(f"Unsupported engine options: {', '.join(unknown)}")
    args = model_location(spec.model)
    args += [
        "--served-model-name", served_model_name(spec),
        "--tensor-parallel-size", str(spec.tensor_parallel_size),
        "--max-model-len", str(max_model_len(spec)),
        "--port", str(PORT),
        *media_domain_args(media_domains),
    ]  # fmt: skip
    options = spec.engine_options
    args += card_engine_args(spec.model, options) + lora_args(spec)
    for key, flag in _VALUE_FLAGS.items():
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
            raise ValueError(f"Engine option {key} needs a number or text, not {value!r}")
        args += [flag, str(value)]
    for key, (on, off) in _BOOLEAN_FLAGS.items():
        value = options.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise ValueError(f"Engine option {key} must be true or false, not {value!r}")
        chosen = on if value else off
        if chosen:
            args.append(chosen)
    return args


def startup_probe_seconds(spec: DeploymentSpec) -> int:
    """Time a cold start may take before Kubernetes restarts the container.

    600 s (image already pulled, engine and CUDA graphs initialise) plus 60 s for every started 10B
    parameters (download into an empty cache and load the weights), at most 3600 s. Too short and a big
    model restarts forever mid-download; too long only delays noticing a real hang.
    """
    tens_of_billions = math.ceil(spec.model.parameters / 10_000_000_000)
    return min(STARTUP_BASE_SECONDS + STARTUP_SECONDS_PER_10B * tens_of_billions, STARTUP_MAX_SECONDS)


def _memory_request_mib(instance: InstanceSpec) -> int:
    return int(instance.memory_gb * 1024 * HEADROOM)


def instance_resources(instance: InstanceSpec) -> dict[str, Any]:
    """A pod on an instance type holds the whole instance, as the quota and the hourly price count it:
    all of its GPUs and most of its CPU and memory, leaving headroom for the node's own daemons. GPUs go
    in requests and limits (extended resources need both equal); CPU and memory in requests only.
    A serving replica and a training Job are both placed this way."""
    gpus = str(instance.gpu_count)
    cpu_millis = max(500, int(instance.vcpu * 1000 * HEADROOM))
    return {
        "requests": {
            "nvidia.com/gpu": gpus,
            "cpu": f"{cpu_millis}m",
            "memory": f"{_memory_request_mib(instance)}Mi",
        },
        "limits": {"nvidia.com/gpu": gpus},
    }


def gpu_placement(instance: InstanceSpec, cluster: ClusterSettings) -> dict[str, Any]:
    """The pod spec fields that put a pod on the instance type's nodes: its node labels as a nodeSelector
    (the GPU product and the cloud's instance type), and a toleration of the GPU nodes' taint."""
    placement: dict[str, Any] = {
        "tolerations": [{"key": cluster.gpu_taint_key, "operator": "Exists", "effect": "NoSchedule"}]
    }
    if instance.node_labels:
        placement["nodeSelector"] = dict(instance.node_labels)
    return placement


# The key of a model's own Hub token in the Secret of the pods that download it (a deployment's, a Job's).
HUB_TOKEN_KEY = "HF_TOKEN"  # noqa: S105 (a key's name, not a token)


def hf_token_env(model: ModelSpec, cluster: ClusterSettings, own_secret: str) -> list[dict[str, Any]]:
    """HF_TOKEN for a model's download: the organisation's own token for its private repository, from
    `own_secret` (the pod's Secret, which holds it under HUB_TOKEN_KEY); else the platform's token Secret,
    for a model the Hub gates (see _env)."""
    if model.hub_token:
        return [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": own_secret, "key": HUB_TOKEN_KEY}}}
        ]
    if model.gated is False:
        return []
    # Only gated models see the token: fewer pods holding a credential they do not need. A model whose
    # gating the catalog does not know gets it when the Secret exists (optional), so it downloads if the
    # Hub does gate it, and still starts where no token was ever given.
    secret: dict[str, Any] = {"name": cluster.hf_token_secret, "key": "token"}
    if model.gated is None:
        secret["optional"] = True
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret}}]


def weights_secret_name(spec: DeploymentSpec) -> str:
    return f"{object_name(spec)}-weights"


# LoRA adapters reach a cluster's engine pods from the platform's object store: an init container fetches
# each adapter's archive from a presigned URL (the deployment's Secret holds them; the reconciler renews
# them long before they expire, serving.tasks) into an emptyDir, which the engine reads at ADAPTERS_PATH/<n>.
ADAPTERS_PATH = "/adapters"
FETCH_CONTAINER = "fetch-adapters"
# What that init container runs, with the engine image's own python3 (the standard library only): each
# archive unpacked with tarfile's "data" filter (no absolute paths, no `..`, no links leading out, no
# devices) into a temporary folder renamed into place once whole, so a restart after a failure skips the
# adapters already fetched and starts the interrupted one again. A failure names the adapter and the
# error, never the URL.
FETCH_ADAPTERS = """\
import os, shutil, sys, tarfile, urllib.request
root = sys.argv[1]
for n in sys.argv[2:]:
    target = os.path.join(root, n)
    if os.path.isdir(target):
        continue
    partial = target + ".part"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with urllib.request.urlopen(os.environ["ADAPTER_" + n + "_URL"], timeout=120) as answer:
            with tarfile.open(fileobj=answer, mode="r|gz") as archive:
                archive.extractall(partial, filter="data")
    except Exception as error:
        sys.exit(f"adapter {n}: {type(error).__name__}: {error}")
    os.rename(partial, target)
    print(f"adapter {n}: fetched", flush=True)
"""


def adapter_url_key(index: int) -> str:
    return f"ADAPTER_{index}_URL"


def fetched_adapters(spec: DeploymentSpec) -> tuple[DeploymentSpec, list[str]]:
    """The spec as the engine pod sees it, every adapter with a URL at ADAPTERS_PATH/<n> (the model's own
    adapter first, then those served beside it, in order), and those URLs by n."""
    urls: list[str] = []

    def fetched(url: str) -> str:
        urls.append(url)
        return f"{ADAPTERS_PATH}/{len(urls) - 1}"

    model = spec.model
    if model.adapter_path and model.adapter_url:
        model = replace(model, adapter_path=fetched(model.adapter_url))
    adapters = tuple(
        replace(adapter, path=fetched(adapter.url)) if adapter.url else adapter for adapter in spec.adapters
    )
    return replace(spec, model=model, adapters=adapters), urls


def build_weights_secret(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest | None:
    """The credentials a deployment's engine pods read their files with, as a Secret of the deployment
    (deleted with its other objects): the organisation's own token for its private Hub repository, its read
    key for the object-store folder its custom model streams from, and the URLs of its LoRA adapters'
    archives. None when it needs none of them."""
    values: dict[str, str] = {}
    if spec.model.hub_token:
        values[HUB_TOKEN_KEY] = spec.model.hub_token
    store = spec.model.store
    if store is not None:
        values |= {"AWS_ACCESS_KEY_ID": store.access_key_id, "AWS_SECRET_ACCESS_KEY": store.secret_access_key}
    _, urls = fetched_adapters(spec)
    values |= {adapter_url_key(index): url for index, url in enumerate(urls)}
    if not values:
        return None
    # `data`, not `stringData`: a server-side apply that drops a key from `stringData` leaves it in the
    # stored Secret, so a credential no longer needed would stay.
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {**_metadata(spec, cluster), "name": weights_secret_name(spec)},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in values.items()},
    }


REDACTED = "<a credential, applied to the cluster and never shown>"


def redacted(obj: Manifest) -> Manifest:
    """A copy of an object fit to show: a Secret's values replaced by REDACTED, anything else as it is."""
    if obj.get("kind") != "Secret":
        return obj
    shown = {key: value for key, value in obj.items() if key not in ("data", "stringData")}
    values = {**obj.get("data", {}), **obj.get("stringData", {})}
    return {**shown, "stringData": dict.fromkeys(values, REDACTED)}


def store_env(spec: DeploymentSpec) -> list[dict[str, Any]]:
    """What the Run:ai streamer (and the boto3 calls vLLM makes for config and tokenizer files) need to read
    the folder: the key from the deployment's Secret, the region, and for an S3-compatible store its
    endpoint with path-style addressing. The node's own cloud identity is switched off
    (AWS_EC2_METADATA_DISABLED), so an engine reads only what the organisation's key may."""
    store = spec.model.store
    if store is None:
        return []
    secret = weights_secret_name(spec)
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]
    env.append({"name": "AWS_EC2_METADATA_DISABLED", "value": "true"})
    if store.region:
        env += [
            {"name": "AWS_REGION", "value": store.region},
            {"name": "AWS_DEFAULT_REGION", "value": store.region},
        ]
    if store.endpoint_url:
        env += [
            {"name": "AWS_ENDPOINT_URL", "value": store.endpoint_url},
            {"name": "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "value": "0"},
        ]
    return env


def _shm_size(spec: DeploymentSpec) -> str:
    """Shared memory for NCCL and PyTorch workers: 8 GiB per GPU, at most a quarter of the memory
    request (tmpfs pages count as the pod's memory)."""
    gib = max(1, min(8 * spec.tensor_parallel_size, _memory_request_mib(spec.instance) // 1024 // 4))
    return f"{gib}Gi"


def _env(spec: DeploymentSpec, cluster: ClusterSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": CACHE_PATH},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},  # self-hosted: no usage reports leave the cluster
        {"name": "DO_NOT_TRACK", "value": "1"},
        # A media URL on an allowed domain must not redirect the engine to any other host.
        {"name": "VLLM_MEDIA_URL_ALLOW_REDIRECTS", "value": "0"},
    ]
    return env + hf_token_env(spec.model, cluster, weights_secret_name(spec)) + store_env(spec)


def _probe(path: str, *, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _fetch_container(spec: DeploymentSpec, cluster: ClusterSettings, count: int) -> dict[str, Any]:
    """The init container that fetches the deployment's adapters (FETCH_ADAPTERS), with the engine image,
    so no other image need be pulled or trusted."""
    secret = weights_secret_name(spec)
    return {
        "name": FETCH_CONTAINER,
        "image": cluster.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", FETCH_ADAPTERS, ADAPTERS_PATH, *map(str, range(count))],
        "env": [
            {
                "name": adapter_url_key(n),
                "valueFrom": {"secretKeyRef": {"name": secret, "key": adapter_url_key(n)}},
            }
            for n in range(count)
        ],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTERS_PATH}],
        "terminationMessagePolicy": "FallbackToLogsOnError",  # the failure's line shows in the pod's status
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def _container(spec: DeploymentSpec, cluster: ClusterSettings) -> dict[str, Any]:
    return {
        "name": "vllm",
        "image": cluster.image,
        "imagePullPolicy": "IfNotPresent",
        # The vllm/vllm-openai image's ENTRYPOINT is ["vllm", "serve"] (older tags ran
        # `python3 -m vllm.entrypoints.openai.api_server`); saying the command makes the arguments mean
        # the same whatever the pinned tag's entrypoint is.
        "command": ["vllm", "serve"],
        "args": engine_args(spec, cluster.media_domains),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": _env(spec, cluster),
        "resources": instance_resources(spec.instance),
        "volumeMounts": [
            {"name": "dshm", "mountPath": SHM_PATH},
            {"name": "model-cache", "mountPath": CACHE_PATH},
        ],
        "startupProbe": _probe(
            "/health",
            period=PROBE_PERIOD_SECONDS,
            failures=math.ceil(startup_probe_seconds(spec) / PROBE_PERIOD_SECONDS),
            timeout=5,
        ),
        "readinessProbe": _probe("/health", period=10, failures=3, timeout=5),
        # Generous: a saturated engine answers /health late, and a restart costs a full model load.
        "livenessProbe": _probe("/health", period=30, failures=5, timeout=10),
        # Let endpoint removal reach the gateway before the server stops taking requests.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "10"]}}},
        # The image runs as root (its caches live under /root) and writes to its own filesystem (torch
        # compile, Triton caches), so no runAsNonRoot or read-only root; just no privilege escalation.
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def model_cache_volume(cluster: ClusterSettings) -> dict[str, Any]:
    """The Hugging Face cache: the shared claim when configured, else an emptyDir (every new pod downloads
    the weights again)."""
    if cluster.model_cache_pvc:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cluster.model_cache_pvc}}
    return {"name": "model-cache", "emptyDir": {}}


def weights_volume(
    model: ModelSpec, cluster: ClusterSettings
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The volume (and its mount) holding a custom model's folder, mounted read-only at the folder the
    platform registered it from, so an engine (or a training Job) loads the same path; None for weights from
    the Hub or a store. ValueError when the folder lies in none of the cluster's volumes (the API refuses
    that first)."""
    if not model.weights_path or model.store is not None:
        return None
    holding = volume_holding(model.weights_path, cluster.model_volumes)
    if holding is None:
        raise ValueError(
            f"{model.weights_path} lies in none of the volumes a cluster's engines mount "
            "(CUSTOM_MODEL_VOLUMES)"
        )
    folder, claim = holding
    volume = {"name": "custom-model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    return volume, {"name": "custom-model", "mountPath": folder, "readOnly": True}


def _volumes(spec: DeploymentSpec, cluster: ClusterSettings) -> list[dict[str, Any]]:
    return [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _shm_size(spec)}},
        model_cache_volume(cluster),
    ]


def build_deployment(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest:
    """The apps/v1 Deployment running `vllm serve`.

    - `replicas` is set only for the fixed policy. With an autoscaler, the HPA (or KEDA's HPA) owns
      `spec.replicas`; a server-side apply that also set it would reset the count on every apply and
      fight the autoscaler (and conflict with its field manager).
    - Rollouts replace pods one at a time without surging (maxSurge 0, maxUnavailable 1): a surge pod
      needs GPUs beyond the quota reserved for max_replicas, and would sit Pending on a full GPU pool,
      stalling the rollout. The price is one replica fewer while a new one loads.
    - progressDeadlineSeconds outlasts the startup probe, so a big model still loading is not reported
      as a failed rollout.
    """
    served, adapter_urls = fetched_adapters(spec)
    engine = _container(served, cluster)
    volumes = _volumes(spec, cluster)
    init: list[dict[str, Any]] = []
    weights = weights_volume(spec.model, cluster)
    if weights is not None:
        volumes.append(weights[0])
        engine["volumeMounts"].append(weights[1])
    if adapter_urls:
        init.append(_fetch_container(spec, cluster, len(adapter_urls)))
        engine["volumeMounts"].append({"name": "adapters", "mountPath": ADAPTERS_PATH, "readOnly": True})
        volumes.append({"name": "adapters", "emptyDir": {}})
    pod_spec: dict[str, Any] = {
        **({"initContainers": init} if init else {}),
        "containers": [engine],
        "volumes": volumes,
        **gpu_placement(spec.instance, cluster),
        "terminationGracePeriodSeconds": 90,  # preStop, then in-flight generations get time to finish
        "automountServiceAccountToken": False,  # the engine never talks to the API server
        "enableServiceLinks": False,  # an env var per Service in the namespace is noise; VLLM_* can clash
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(spec)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": startup_probe_seconds(spec) + 300,
        "template": {
            "metadata": {
                "labels": labels(spec),
                "annotations": {GENERATION_ANNOTATION: str(spec.generation)},
            },
            "spec": pod_spec,
        },
    }
    if spec.autoscaling.policy == AutoscalingPolicy.FIXED:
        deployment_spec = {"replicas": spec.autoscaling.min_replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, cluster),
        "spec": deployment_spec,
    }


def build_service(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest:
    """A ClusterIP Service in front of the ready replicas."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_pdb(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest:
    """A policy/v1 PodDisruptionBudget: at most one replica evicted at a time.

    maxUnavailable 1 rather than minAvailable: it follows the replica count as the autoscaler moves it,
    and never blocks node drains outright (minAvailable 1 on a single replica would, forever).
    Unhealthy pods (say, stuck loading) may always be evicted, so they cannot hold a drain hostage.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(spec)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _peer(namespace: str, cluster: ClusterSettings, pods: dict[str, Any]) -> dict[str, Any]:
    """A NetworkPolicy peer: pods so selected, in `namespace` ("" or the engines' own: no namespace
    selector, which means the policy's namespace)."""
    peer: dict[str, Any] = {"podSelector": pods}
    if namespace and namespace != cluster.namespace:
        # Every namespace carries this label (Kubernetes 1.21+), set by the API server itself.
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def build_network_policy(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest:
    """A networking.k8s.io/v1 NetworkPolicy: the engine's port admits only the platform's web and gateway
    pods and Prometheus; nothing else in the cluster can call the engine around the gateway (its auth,
    limits and metering).

    - The platform's pods are those with `gateway_pod_labels` whose `app.kubernetes.io/component` is web or
      gateway: the component keeps engine pods, which share `part-of`, from calling each other.
    - Ingress only: engines still download weights and reach the cluster's DNS (egress is the cluster's
      own policy). Kubelet probes come from the node and are not subject to it with common network plugins.
    - Selects by the immutable selector labels, like the Service, so it covers every replica of every
      generation. Applied before the Deployment: no pod ever runs unprotected.
    """
    gateway_pods = {
        "matchLabels": dict(cluster.gateway_pod_labels),
        "matchExpressions": [
            {"key": "app.kubernetes.io/component", "operator": "In", "values": ["web", "gateway"]}
        ],
    }
    prometheus_pods = {"matchLabels": dict(cluster.prometheus_pod_labels)}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        _peer(cluster.gateway_namespace, cluster, gateway_pods),
                        _peer(cluster.prometheus_namespace, cluster, prometheus_pods),
                    ],
                    "ports": [{"protocol": "TCP", "port": PORT}],
                }
            ],
        },
    }


def _pod_matchers(spec: DeploymentSpec, cluster: ClusterSettings) -> str:
    # Pods are `<name>-<template hash>-<5 chars>`; PromQL regexes are anchored, so `acme-chat` does not
    # also match the pods of `acme-chat-v2`.
    return f'namespace="{cluster.namespace}",pod=~"{object_name(spec)}-[a-z0-9]+-[a-z0-9]{{5}}"'


def _quantity(value: float) -> str:
    """A Kubernetes quantity: "5" or, for fractions such as a KV-cache target of 0.8, "800m"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _behavior(spec: DeploymentSpec) -> dict[str, Any]:
    return {
        "scaleUp": {"stabilizationWindowSeconds": spec.autoscaling.scale_up_window_seconds},
        "scaleDown": {"stabilizationWindowSeconds": spec.autoscaling.scale_down_window_seconds},
    }


def _keda_triggers(spec: DeploymentSpec, cluster: ClusterSettings) -> list[dict[str, Any]]:
    """KEDA Prometheus triggers for the policy.

    Queue depth sums waiting requests and compares per replica (AverageValue). KV-cache pressure is an
    average already, so it is compared as a Value (desired = current × usage / target).
    """
    policy = spec.autoscaling.policy
    target = f"{spec.autoscaling.target:g}"
    matchers = _pod_matchers(spec, cluster)
    if policy == AutoscalingPolicy.KV_CACHE:
        query = f"avg(vllm:kv_cache_usage_perc{{{matchers}}})"
        return [_prometheus_trigger(cluster, "kv-cache", query, target, metric_type="Value")]
    query = f"sum(vllm:num_requests_waiting{{{matchers}}})"
    triggers = [_prometheus_trigger(cluster, "queue-depth", query, target, metric_type="AverageValue")]
    if policy == AutoscalingPolicy.SCALE_TO_ZERO:
        # Wakes the deployment and keeps it awake while requests arrive; its threshold is out of reach so
        # that scaling between 1 and max stays with the queue depth. cooldownPeriod counts from the last
        # activity, so idle_seconds after the last request the replicas go.
        demand = f'sum(increase({GATEWAY_REQUESTS_METRIC}{{deployment_id="{spec.deployment_id}"}}[1m]))'
        trigger = _prometheus_trigger(cluster, "demand", demand, "1000000", metric_type="AverageValue")
        trigger["metadata"]["activationThreshold"] = "0"
        triggers.append(trigger)
    return triggers


def _prometheus_trigger(
    cluster: ClusterSettings, name: str, query: str, threshold: str, *, metric_type: str
) -> dict[str, Any]:
    return {
        "type": "prometheus",
        "name": name,
        "metricType": metric_type,
        # KEDA reads every metadata value as a string.
        "metadata": {"serverAddress": cluster.prometheus_url, "query": query, "threshold": threshold},
    }


def _scaled_object(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest:
    scaling = spec.autoscaling
    scale_to_zero = scaling.policy == AutoscalingPolicy.SCALE_TO_ZERO
    so_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(spec)},
        "pollingInterval": 15,  # seconds between KEDA's own checks; the first request waits for one
        "minReplicaCount": 0 if scale_to_zero else scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
        "triggers": _keda_triggers(spec, cluster),
    }
    if scale_to_zero:
        so_spec["cooldownPeriod"] = scaling.idle_seconds
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(spec, cluster),
        "spec": so_spec,
    }


def _hpa(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest:
    """An autoscaling/v2 HPA on a prometheus-adapter external metric.

    External values from several series are summed by the HPA, so both metrics are compared per replica
    (AverageValue): total waiting requests / replicas, and total KV usage / replicas = mean usage.
    """
    scaling = spec.autoscaling
    metric = (
        "vllm:kv_cache_usage_perc"
        if scaling.policy == AutoscalingPolicy.KV_CACHE
        else "vllm:num_requests_waiting"
    )
    external = {
        "metric": {"name": metric, "selector": {"matchLabels": {INSTANCE_METRIC_LABEL: object_name(spec)}}},
        "target": {"type": "AverageValue", "averageValue": _quantity(scaling.target)},
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(spec)},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "External", "external": external}],
            "behavior": _behavior(spec),
        },
    }


def build_autoscaler(spec: DeploymentSpec, cluster: ClusterSettings) -> Manifest | None:
    """The autoscaler for the policy: a KEDA ScaledObject where KEDA is installed, else an HPA; None for
    the fixed policy (the backend then removes any autoscaler left from an earlier policy).

    Raises ValueError for scale-to-zero without KEDA: a plain HPA cannot go below one replica.
    """
    policy = spec.autoscaling.policy
    if policy == AutoscalingPolicy.FIXED:
        return None
    if policy not in AutoscalingPolicy.values:
        raise ValueError(f"Unknown autoscaling policy {policy!r}")
    if cluster.keda:
        return _scaled_object(spec, cluster)
    if policy == AutoscalingPolicy.SCALE_TO_ZERO:
        raise ValueError(
            "Scale to zero needs KEDA in the cluster; a HorizontalPodAutoscaler keeps at least one replica."
        )
    return _hpa(spec, cluster)


def build_objects(spec: DeploymentSpec, cluster: ClusterSettings) -> list[Manifest]:
    """Every object of the deployment, in apply order: the NetworkPolicy (when enabled) before any pod
    exists, the Secret of an object-store model's read key, then the Deployment, so the Service, the
    budget and the autoscaler never point at something that does not exist yet."""
    objects = [build_network_policy(spec, cluster)] if cluster.network_policy else []
    secret = build_weights_secret(spec, cluster)
    if secret is not None:  # before the pods that read it
        objects.append(secret)
    objects += [build_deployment(spec, cluster), build_service(spec, cluster), build_pdb(spec, cluster)]
    autoscaler = build_autoscaler(spec, cluster)
    if autoscaler is not None:
        objects.append(autoscaler)
    return objects
