"""What this machine can hold: CPU cores for engines to keep to themselves, and memory for them to grow into.

vLLM's CPU engine binds its OpenMP threads to cores (VLLM_CPU_OMP_THREADS_BIND); left to itself it picks
the same core for every engine of a small machine, and a second engine then starves while the first one
computes. So each replica gets cores of its own, from those no other replica holds, and a replica for
which none are left is not started: it waits, with a sentence saying why, until cores are freed.

Memory is checked the same way, before an engine starts: what it will need (its model's footprint) must
fit in what the machine has available now (MemAvailable) minus what the engines already started will
still grow to (an engine loading its model has not reached its footprint yet; two engines started in one
pass must not both count the same free memory). A model's footprint is measured: the supervisor records
the largest proportional set size (PSS: shared pages split between the processes that share them) any of
its engines reached, so the figure is what the machine actually lost to it. Until one has run, a
conservative estimate from the model folder's size stands in.

Pure functions, plus small readers of /proc.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

GIB = 1024**3
CORES_PER_REPLICA = 1
# What a vLLM CPU engine holds besides the weights: the KV cache (VLLM_CPU_KVCACHE_SPACE, 1 GiB) and three
# Python processes (API server, engine core, worker) with torch loaded. SmolLM2 135M in float32 measured
# 3.4 GiB of PSS here once ready. Used only until a footprint is measured.
ENGINE_OVERHEAD_BYTES = 3 * GIB
# Weights on disk in bf16 run as float32 on this CPU engine (engine_env.LOCAL_MODEL_ARGS): twice the size.
WEIGHTS_FACTOR = 2


def allowed_cores() -> tuple[int, ...]:
    """The cores this process may run on (respects taskset and cgroup cpusets, unlike a core count)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def cpu_list(cores: Iterable[int]) -> str:
    """Cores as Linux and vLLM write them: (0, 1, 2, 5) → "0-2,5"."""
    ordered = sorted(set(cores))
    runs: list[list[int]] = []
    for core in ordered:
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def pick_cores(
    allowed: Iterable[int], held: Iterable[int], count: int = CORES_PER_REPLICA
) -> tuple[int, ...] | None:
    """The lowest `count` cores nobody holds, or None when fewer are free."""
    taken = set(held)
    free = [core for core in sorted(allowed) if core not in taken]
    return tuple(free[:count]) if len(free) >= count else None


def no_core_message(allowed: tuple[int, ...], holders: int) -> str:
    return (
        f"This machine has no free CPU core for another engine: its {len(allowed)} core"
        f"{'s' if len(allowed) != 1 else ''} ({cpu_list(allowed)}) "
        f"{'are' if len(allowed) != 1 else 'is'} held by {holders} running engine"
        f"{'s' if holders != 1 else ''}, one core each. The replica starts when one is freed: lower this "
        "or another deployment's replicas, or delete one."
    )


def no_memory_message(needed: int, available: int) -> str:
    return (
        f"This machine cannot hold another engine of this model: it needs about {needed / GIB:.1f} GB of "
        f"memory and {max(available, 0) / GIB:.1f} GB is free once the running engines have grown to their "
        "size. The replica starts when memory is freed: lower this or another deployment's replicas, or "
        "delete one."
    )


def mem_available(meminfo: str) -> int:
    """Bytes of MemAvailable in the text of /proc/meminfo."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError("/proc/meminfo has no MemAvailable line")


def read_mem_available() -> int:
    return mem_available(Path("/proc/meminfo").read_text())


def still_to_grow(footprint: int, used: int) -> int:
    """What an engine started but not yet at its footprint will still take from the machine."""
    return max(0, footprint - used)


def fits(needed: int, available: int, growing: Iterable[int]) -> tuple[bool, int]:
    """Whether `needed` bytes fit in `available` less what started engines will still take; and what
    is left for it."""
    left = available - sum(growing)
    return needed <= left, left


def process_groups_memory(groups: Iterable[int], proc: Path = Path("/proc")) -> dict[int, int]:
    """The PSS in bytes of every process in each of these process groups (one walk over /proc).

    An engine is a process group (the API server, its engine core, their helpers); their PSS adds up to
    what the machine lost to it, shared libraries counted once between them."""
    wanted = set(groups)
    totals = dict.fromkeys(wanted, 0)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 5 of stat is the process group; the command name before it may hold spaces.
            group = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if group not in wanted:
                continue
            totals[group] += _pss(entry / "smaps_rollup")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return totals


def _pss(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def estimate_footprint(model_path: Path | str) -> int:
    """Until an engine of the model has run here: its weights as the engine holds them, plus overhead."""
    folder = Path(model_path)
    try:
        weights = sum(
            entry.stat().st_size
            for entry in folder.resolve().iterdir()
            if entry.suffix in (".safetensors", ".bin", ".pt")
        )
    except OSError:
        weights = 0
    return weights * WEIGHTS_FACTOR + ENGINE_OVERHEAD_BYTES


class Footprints:
    """The largest memory each model's engines reached here, kept in a small JSON file so the next
    start of the platform knows it. Only grows: a figure measured while an engine was still loading is
    replaced by a larger one later, never the other way round."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.peaks: dict[str, int] = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self.peaks = {}

    def of(self, model_path: str) -> int:
        return self.peaks.get(model_path) or estimate_footprint(model_path)

    def measured(self, model_path: str) -> int | None:
        return self.peaks.get(model_path)

    def record(self, model_path: str, used: int) -> None:
        if used <= self.peaks.get(model_path, 0):
            return
        self.peaks[model_path] = used
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.peaks, sort_keys=True))
        partial.replace(self.path)  # whole or not at all
