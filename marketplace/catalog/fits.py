"""Whether a model can be served on an instance type, how much GPU memory it needs, and at what context.

Pure functions on plain numbers, shared by the loader (which stores the derived columns the database
filters on), the control plane (fit, tensor-parallel size, default max model length) and the pages that
explain a fit to a person.

GPU memory for a generative model at a max model length of `tokens` (documented in catalog/data/README.md):

1. Weights: parameters × bytes per parameter of the serving dtype.
2. KV cache of one sequence at full length: 2 (K and V) × layers × KV heads × head size × 2 bytes
   (16-bit cache) per token, × tokens. This is per sequence, not × max_num_seqs: vLLM refuses to start
   unless one sequence of max model length fits in its cache; more concurrent sequences share whatever
   is left, which sets throughput, not whether the model runs.
3. Reserve: a tenth of the weights for activations and CUDA graphs, plus 2 GB for the CUDA context and
   the engine's own buffers.
4. vLLM claims 90% of each GPU by default (`--gpu-memory-utilization 0.9`), so the sum is divided by 0.9
   to give the GPU memory the model needs.

Cards without those config facts (encoders: embeddings and rerankers, which keep little or no KV cache)
use the older rule: weights × 1.2 + 2 GB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from marketplace.catalog.choices import BYTES_PER_PARAMETER

# The older rule, for cards without layer facts: a fifth of the weights again plus 2 GB.
KV_CACHE_FACTOR = 1.2
ENGINE_OVERHEAD_GB = 2
# The KV-cache rule (see the module docstring).
KV_CACHE_DTYPE_BYTES = 2
ACTIVATION_FACTOR = 0.1
GPU_MEMORY_UTILIZATION = 0.9
# The context served when a card sets no max_model_len: the model's own, at most this many tokens.
DEFAULT_MAX_MODEL_LEN = 32768
# The shortest context a deployment is given; a model that cannot hold it on an instance does not fit.
MIN_MAX_MODEL_LEN = 4096
# A default context below the card's is rounded down to a multiple of this many tokens.
CONTEXT_STEP = 1024
GB = 1e9


def required_gpu_memory_gb(parameters: int, dtype: str) -> int:
    """GPU memory (GB) by the older rule (weights × 1.2 + 2 GB), for cards without layer facts."""
    weights_gb = parameters * BYTES_PER_PARAMETER[dtype] / GB
    return math.ceil(weights_gb * KV_CACHE_FACTOR + ENGINE_OVERHEAD_GB)


def kv_cache_bytes_per_token(layers: int, kv_heads: int, head_dim: int, latent_dim: int | None = None) -> int:
    """Bytes of 16-bit KV cache one token takes: 2 (K and V) × layers × KV heads × head size × 2 bytes.

    Multi-head latent attention (DeepSeek-V2) caches one latent vector of `latent_dim` values per layer
    instead of K and V per head.
    """
    per_layer = latent_dim if latent_dim else 2 * kv_heads * head_dim
    return layers * per_layer * KV_CACHE_DTYPE_BYTES


@dataclass(frozen=True)
class MemoryEstimate:
    """GPU memory a model needs at a context of `tokens`, with the arithmetic a person can check."""

    tokens: int
    weights_bytes: int
    kv_bytes_per_token: int  # 0 for the older rule
    reserve_bytes: int
    needed_gb: int  # rounded up
    stated: bool = False  # the card states its memory: no arithmetic

    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.tokens

    @property
    def subtotal_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.reserve_bytes


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs of a card. `layers` is None when the card has no config facts."""

    parameters: int
    serving_dtype: str = "auto"
    context_length: int = DEFAULT_MAX_MODEL_LEN
    default_max_model_len: int | None = None  # the card's engine default, if any
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    latent_dim: int | None = None
    stated_gpu_memory_gb: int | None = None
    cpu_capable: bool = False

    @property
    def has_kv_facts(self) -> bool:
        return self.layers is not None and (bool(self.latent_dim) or bool(self.kv_heads and self.head_dim))

    @property
    def kv_bytes_per_token(self) -> int:
        if not self.has_kv_facts:
            return 0
        return kv_cache_bytes_per_token(
            self.layers or 0, self.kv_heads or 0, self.head_dim or 0, self.latent_dim
        )

    @property
    def default_context(self) -> int:
        """The context served when nothing else decides: the card's engine default, else its own
        context length capped at DEFAULT_MAX_MODEL_LEN."""
        if self.default_max_model_len:
            return min(self.default_max_model_len, self.context_length)
        return min(self.context_length, DEFAULT_MAX_MODEL_LEN)

    @property
    def min_context(self) -> int:
        return min(MIN_MAX_MODEL_LEN, self.default_context)


def estimate(facts: ModelFacts, tokens: int | None = None) -> MemoryEstimate:
    """GPU memory `facts`' model needs at `tokens` of context (its default context when None)."""
    tokens = facts.default_context if tokens is None else tokens
    weights = facts.parameters * BYTES_PER_PARAMETER[facts.serving_dtype]
    if facts.stated_gpu_memory_gb is not None:
        return MemoryEstimate(tokens, weights, 0, 0, facts.stated_gpu_memory_gb, stated=True)
    if not facts.has_kv_facts:
        reserve = round(weights * (KV_CACHE_FACTOR - 1) + ENGINE_OVERHEAD_GB * GB)
        return MemoryEstimate(
            tokens, weights, 0, reserve, required_gpu_memory_gb(facts.parameters, facts.serving_dtype)
        )
    reserve = round(weights * ACTIVATION_FACTOR + ENGINE_OVERHEAD_GB * GB)
    per_token = facts.kv_bytes_per_token
    total = weights + per_token * tokens + reserve
    return MemoryEstimate(tokens, weights, per_token, reserve, math.ceil(total / GPU_MEMORY_UTILIZATION / GB))


def largest_context(facts: ModelFacts, memory_gb: int) -> int:
    """The longest context (a multiple of CONTEXT_STEP, at most the card's default context) whose
    estimate fits in `memory_gb`; 0 when not even the shortest step fits."""
    cap = facts.default_context
    if estimate(facts, cap).needed_gb <= memory_gb:
        return cap
    if not facts.has_kv_facts:
        return 0  # the older rule does not depend on the context
    weights = facts.parameters * BYTES_PER_PARAMETER[facts.serving_dtype]
    reserve = round(weights * ACTIVATION_FACTOR + ENGINE_OVERHEAD_GB * GB)
    room = memory_gb * GB * GPU_MEMORY_UTILIZATION - weights - reserve
    if room <= 0:
        return 0
    tokens = int(room // facts.kv_bytes_per_token) // CONTEXT_STEP * CONTEXT_STEP
    while tokens > 0 and estimate(facts, tokens).needed_gb > memory_gb:  # rounding of needed_gb
        tokens -= CONTEXT_STEP
    return max(0, min(tokens, cap))


# RAM the local backend's CPU engines keep their KV cache in, in GiB: serving.local.engine_env sets
# VLLM_CPU_KVCACHE_SPACE to it (a test checks that the two agree).
CPU_KV_CACHE_GIB = 1


def cpu_context(facts: ModelFacts) -> int:
    """The max model length a CPU engine of this platform serves by default: the card's default context,
    or, when the KV cache of one sequence that long would not fit in CPU_KV_CACHE_GIB, the longest
    multiple of CONTEXT_STEP that does (vLLM refuses to start otherwise). Never below one step.

    The cache is counted at 4 bytes a value, twice kv_bytes_per_token's 16-bit figure: CPU engines may
    run a model in float32 (this platform runs SmolLM2 so), and the cache takes the model's dtype."""
    cap = facts.default_context
    per_token = 2 * facts.kv_bytes_per_token
    if not per_token:
        return cap  # encoders keep no KV cache; older cards without config facts keep their default
    tokens = CPU_KV_CACHE_GIB * 2**30 // per_token // CONTEXT_STEP * CONTEXT_STEP
    return min(cap, max(tokens, CONTEXT_STEP))


def largest_power_of_two_at_most(n: int) -> int:
    """The largest power of two ≤ n (0 for n < 1): the widest tensor-parallel group n GPUs allow."""
    return 1 << (n.bit_length() - 1) if n >= 1 else 0


def tensor_parallel_memory_gb(gpu_count: int, gpu_memory_gb: int) -> int:
    """GPU memory the widest allowed tensor-parallel group on one instance offers."""
    return largest_power_of_two_at_most(gpu_count) * gpu_memory_gb


def smallest_tensor_parallel_size(needed_gb: int, gpu_count: int, gpu_memory_gb: int) -> int | None:
    """The smallest power-of-two tensor-parallel size that holds the model, or None if none does."""
    size = 1
    while size <= gpu_count:
        if size * gpu_memory_gb >= needed_gb:
            return size
        size *= 2
    return None


def fits(*, needed_gb: int, cpu_capable: bool, gpu_count: int, gpu_memory_gb: int) -> bool:
    """A model fits an instance with GPUs when some tensor-parallel size holds it; a CPU-only
    instance (no GPUs) fits exactly the models marked CPU-capable."""
    if gpu_count == 0:
        return cpu_capable
    return smallest_tensor_parallel_size(needed_gb, gpu_count, gpu_memory_gb) is not None


@dataclass(frozen=True)
class Placement:
    """How a model runs on an instance type: on how many GPUs and at what max model length.

    `tensor_parallel_size` is None when it does not fit; `max_model_len` is then the longest context
    the widest group could hold (0 if none), for the refusal to say so.
    """

    tensor_parallel_size: int | None
    max_model_len: int
    estimate: MemoryEstimate

    @property
    def fits(self) -> bool:
        return self.tensor_parallel_size is not None


def place(
    facts: ModelFacts,
    gpu_count: int,
    gpu_memory_gb: int,
    *,
    max_model_len: int | None = None,
    tensor_parallel_size: int | None = None,
) -> Placement:
    """Where a model goes on a GPU instance.

    1. With a max model length given, the smallest power-of-two group (or the one given) that holds
       the model at that length.
    2. Without one: the smallest group that holds the card's default context; if none does, the widest
       group (or the one given) at the longest context it holds, provided that is at least the
       minimum context (MIN_MAX_MODEL_LEN, or the card's own if shorter).
    """
    widest = largest_power_of_two_at_most(gpu_count)
    if widest == 0:
        return Placement(None, 0, estimate(facts))
    sizes = [tensor_parallel_size] if tensor_parallel_size else [1 << n for n in range(widest.bit_length())]
    if max_model_len is not None:
        needed = estimate(facts, max_model_len)
        for size in sizes:
            if size * gpu_memory_gb >= needed.needed_gb:
                return Placement(size, max_model_len, needed)
        return Placement(None, largest_context(facts, sizes[-1] * gpu_memory_gb), needed)
    for size in sizes:
        if estimate(facts).needed_gb <= size * gpu_memory_gb:
            return Placement(size, facts.default_context, estimate(facts))
    tokens = largest_context(facts, sizes[-1] * gpu_memory_gb)
    if tokens >= facts.min_context:
        return Placement(sizes[-1], tokens, estimate(facts, tokens))
    return Placement(None, tokens, estimate(facts, facts.min_context))
