"""Whether a model can be served on an instance type, and the memory a model needs.

Pure functions on plain numbers, shared by the loader (which stores the derived columns the database
filters on) and by anything that explains a fit to a person.
"""

from __future__ import annotations

import math

from marketplace.catalog.choices import BYTES_PER_PARAMETER

# A fifth of the weights again for KV cache and activations at the default context, plus the CUDA
# context and the engine's own buffers. Documented in catalog/data/README.md.
KV_CACHE_FACTOR = 1.2
ENGINE_OVERHEAD_GB = 2


def required_gpu_memory_gb(parameters: int, dtype: str) -> int:
    """GPU memory (GB) to serve a model of `parameters` weights in serving `dtype` at its default context."""
    weights_gb = parameters * BYTES_PER_PARAMETER[dtype] / 1e9
    return math.ceil(weights_gb * KV_CACHE_FACTOR + ENGINE_OVERHEAD_GB)


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
