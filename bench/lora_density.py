"""How many LoRA adapters one base deployment serves, and what each costs a request, on this machine.

    .venv/bin/python bench/lora_density.py [--counts 1,4,8] [--requests 24] [--adapter PATH] [--cores 0-1]

One real vLLM engine (CPU) serves SmolLM2-135M-Instruct and N adapters (--lora-modules, --max-loras N, as
a deployment with `adapters` runs), for each N of `--counts`. The adapters are N copies of one adapter
(`--adapter`, e.g. a distillation run's, else a small one trained here in a minute): vLLM loads each copy
as a LoRA of its own, so memory and per-request work are those of N distinct adapters of that rank.

Measured against the base model alone in the same engine, the same prompt and 32 generated tokens:
- one at a time: the base, then requests spread round-robin over the N adapters;
- four at a time: four concurrent base requests, then four concurrent requests to four different
  adapters (the batch vLLM must mix).
Prints medians and p99 in ms and each as a ratio to the base's in the same run, and the engine's resident
memory (RSS) once it is ready, per N. Timings move with the machine's load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.distillation import BASE, _cores, ask, percentile, start_engine, train  # noqa: E402
from learning.training import tickets  # noqa: E402
from learning.training.spec import TrainingSpec  # noqa: E402
from serving.local import capacity, engine_env  # noqa: E402

FIXED = {"max_tokens": 32, "ignore_eos": True}
PROMPT = [{"role": "user", "content": "My SecureVPN bill went up this month and nobody told me why."}]


def small_adapter(folder: Path, base: Path, cores: tuple[int, ...]) -> Path:
    rows = tickets.training_rows(tickets.make_tickets(8, seed=1))
    folder.mkdir(parents=True, exist_ok=True)
    trained = train(folder, rows, TrainingSpec(epochs=1, batch_size=4, max_seq_length=256), base, cores)
    return Path(trained["adapter"])


def rss_bytes(pid: int) -> int:
    """The resident memory of the engine: its API server and the processes it started (the engine core)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == pid or status.parent.name == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return total


def timed(client: httpx.Client, models: list[str], count: int, concurrency: int) -> list[float]:
    """Seconds per request, `count` requests `concurrency` at a time, cycling through `models`."""
    if concurrency == 1:
        return [ask(client, models[index % len(models)], PROMPT, **FIXED)[2] for index in range(count)]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        jobs = [
            pool.submit(ask, client, models[index % len(models)], PROMPT, **FIXED) for index in range(count)
        ]
        return [job.result()[2] for job in jobs]


def run(counts: list[int], requests: int, adapter: Path | None, cores: tuple[int, ...]) -> None:
    base = engine_env.model_path(engine_env.engine_dir(), engine_env.CHAT)
    if base is None:
        sys.exit("the local engine is not prepared: python3 run.py engine")
    folder = Path(tempfile.mkdtemp(prefix="lora-density-"))
    if adapter is None:
        print("training a small adapter (8 tickets, one epoch) to copy ...", flush=True)
        adapter = small_adapter(folder / "train", base, cores)
    rank = int(json.loads((adapter / "adapter_config.json").read_text())["r"])
    print(f"adapter: {adapter} (rank {rank}); engine on cores {capacity.cpu_list(cores)}\n", flush=True)
    rows = []
    for count in counts:
        modules = {}
        for index in range(count):
            copy = folder / f"adapter-{index}"
            if not copy.exists():
                shutil.copytree(adapter, copy)
            modules[f"a{index}"] = copy
        started = time.monotonic()
        process, url = start_engine(base, modules, folder, cores, rank)
        ready = time.monotonic() - started
        try:
            memory = rss_bytes(process.pid)
            with httpx.Client(base_url=url, timeout=300) as client:
                ask(client, BASE, PROMPT, **FIXED)  # warm both paths once
                ask(client, "a0", PROMPT, **FIXED)
                figures = {
                    "base c=1": timed(client, [BASE], requests, 1),
                    "adapters c=1": timed(client, list(modules), requests, 1),
                    "base c=4": timed(client, [BASE], requests, 4),
                    "adapters c=4": timed(client, list(modules), requests, 4),
                }
        finally:
            process.terminate()
            process.wait(30)
        rows.append((count, ready, memory, figures))
        print(f"N={count}: ready in {ready:.0f} s, engine RSS {memory / 1024**3:.2f} GB", flush=True)

    print(f"\n{'adapters':>8} {'load':>6} {'RSS GB':>7}  " + "  ".join(f"{k:>26}" for k in rows[0][3]))
    for count, ready, memory, figures in rows:
        cells = []
        for key, values in figures.items():
            baseline = figures[key.replace("adapters", "base")]
            p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
            ratio = p50 / percentile(baseline, 0.5)
            cells.append(f"{p50 * 1000:6.0f}/{p99 * 1000:6.0f} ms ×{ratio:4.2f}")
        print(f"{count:>8} {ready:>5.0f}s {memory / 1024**3:>7.2f}  " + "  ".join(f"{c:>26}" for c in cells))
    print("\ncells: median/p99 per request (32 tokens), ×: median against the base alone at that concurrency")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,4,8", help="adapter counts to serve, e.g. 1,4,8")
    parser.add_argument("--requests", type=int, default=24, help="requests per measurement")
    parser.add_argument("--adapter", type=Path, default=None, help="a PEFT adapter folder to copy")
    parser.add_argument("--cores", default="", help="cores for the engine, as 0-1 (default: all allowed)")
    args = parser.parse_args()
    cores = tuple(sorted(_cores(args.cores))) if args.cores else capacity.allowed_cores()
    run([int(count) for count in args.counts.split(",")], args.requests, args.adapter, cores)


if __name__ == "__main__":
    cli()
