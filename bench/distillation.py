"""Distillation on this machine, full size: a stand-in task teacher's answers turned into a LoRA student.

    .venv/bin/python bench/distillation.py [--train 200] [--heldout 50] [--epochs 1] [--rank 16]
        [--learning-rate 2e-4] [--cores 0-1]

The teacher is NOT a model: it is learning/training/tickets.py's deterministic stand-in, which answers
support tickets with JSON {category, priority, product} the way a large model told the long instructions
(tickets.INSTRUCTIONS) would. The student is SmolLM2-135M-Instruct plus a LoRA adapter, trained by the CPU
trainer (TRL's SFTTrainer, PEFT LoRA on all linear layers) on `--train` tickets with the teacher's answers,
asked the bare ticket. Then one real vLLM engine serves the base model and the adapter (--enable-lora) and
answers `--heldout` unseen tickets three ways: the base model with the teacher's instructions, the base
model with the bare ticket, and the student with the bare ticket.

Prints: training throughput (tokens/s) and the trainer's peak RSS; for each way, JSON validity, per-field
accuracy against the known fields and agreement with the teacher; prompt tokens per request (the
instructions the student no longer needs); and the adapter's added latency per request against the base
alone (same prompt, same 32 generated tokens), as medians and p99 with their ratio. Timings move with the
machine's load; the scores do not (greedy decoding, fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from learning.training import tickets  # noqa: E402
from learning.training.runner import SUCCEEDED, CpuTraining  # noqa: E402
from learning.training.spec import TrainingSpec  # noqa: E402
from learning.training.task_scoring import score_answers  # noqa: E402
from serving.local import capacity, engine_env  # noqa: E402
from serving.spec import LORA_RANKS  # noqa: E402

STUDENT = "ticket-student"
BASE = "smollm2"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def train(
    folder: Path, rows: list[dict[str, str]], spec: TrainingSpec, base: Path, cores: tuple[int, ...]
) -> dict[str, Any]:
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = CpuTraining(folder / "run", base_model=base, data=data, spec=spec, cores=cores)
    run.start()
    peak = 0

    def show(event: dict[str, Any]) -> None:
        nonlocal peak
        peak = max(peak, event.get("peak_rss_bytes") or 0)
        if event["event"] == "step" and (event["step"] % 10 == 0 or event["step"] == event["total_steps"]):
            print(
                f"  step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}  "
                f"{event['tokens_per_second']:.0f} tokens/s  {event['elapsed']:.0f} s",
                flush=True,
            )
        elif event["event"] in ("start", "done", "failed"):
            print(f"  {event['event']}: {json.dumps(event)[:300]}", flush=True)

    outcome = run.wait(on_progress=show)
    if outcome.status != SUCCEEDED:
        sys.exit(f"training {outcome.status}: {outcome.message}")
    events = run.events()
    steps = [event for event in events if event["event"] == "step"]
    done = events[-1]
    return {
        "adapter": outcome.adapter,
        "steps": done["step"],
        "tokens": done["tokens_seen"],
        "train_seconds": steps[-1]["elapsed"],
        "tokens_per_second": done["tokens_seen"] / steps[-1]["elapsed"],
        "first_loss": steps[0]["loss"],
        "last_loss": steps[-1]["loss"],
        "peak_rss_bytes": max(peak, done["peak_rss_bytes"]),
        "wall_seconds": done["elapsed"],
    }


def start_engine(
    base: Path, modules: dict[str, Path], folder: Path, cores: tuple[int, ...], rank: int = 16
) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM serving `base` as BASE and each LoRA adapter of `modules` by its name, on `cores`."""
    directory = engine_env.engine_dir()
    port = engine_env_port()
    tmp = Path(tempfile.mkdtemp(prefix="distil-engine-"))
    command = engine_env.engine_command(
        base,
        port=port,
        served_model_name=BASE,
        max_model_len=2048,
        dtype="float32",
        extra_args=[
            "--enable-lora",
            "--lora-modules",
            *(f"{name}={path}" for name, path in modules.items()),
            "--max-lora-rank",
            str(next(served for served in LORA_RANKS if served >= rank)),
            "--max-loras",
            str(len(modules)),
        ],
    )
    cpus = capacity.cpu_list(cores)
    log = (folder / "engine.log").open("wb")
    process = subprocess.Popen(
        command,
        env=engine_env.engine_environment(directory, tmp, cpus=cpus),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the engine exited with {process.returncode}; see {folder / 'engine.log'}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    sys.exit("the engine was not healthy within 600 s")


def engine_env_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(
    client: httpx.Client, model: str, messages: list[dict[str, str]], **extra: Any
) -> tuple[str, int, float]:
    """(answer, prompt tokens, seconds) of one greedy chat completion."""
    payload = {"model": model, "messages": messages, "max_tokens": 64, "temperature": 0, **extra}
    started = time.perf_counter()
    answer = client.post("/v1/chat/completions", json=payload).raise_for_status().json()
    seconds = time.perf_counter() - started
    return answer["choices"][0]["message"]["content"] or "", answer["usage"]["prompt_tokens"], seconds


def run(
    train_count: int,
    heldout_count: int,
    epochs: int,
    rank: int,
    keep: Path | None,
    cores: tuple[int, ...],
    learning_rate: float = TrainingSpec.learning_rate,
) -> None:
    base = engine_env.model_path(engine_env.engine_dir(), engine_env.CHAT)
    if base is None:
        sys.exit("the local engine is not prepared: python3 run.py engine")
    folder = keep or Path(tempfile.mkdtemp(prefix="distillation-"))
    folder.mkdir(parents=True, exist_ok=True)
    everything = tickets.make_tickets(train_count + heldout_count, seed=0)
    train_part, heldout = everything[:train_count], everything[train_count:]
    spec = TrainingSpec(rank=rank, alpha=2 * rank, epochs=epochs, learning_rate=learning_rate)
    print(f"teacher: the deterministic stand-in of learning/training/tickets.py (not a model); {folder}")
    print(
        f"training {train_count} rows, {epochs} epoch(s), LoRA r={rank} on all linear layers, learning rate "
        f"{learning_rate:g} ..."
    )
    trained = train(folder, tickets.training_rows(train_part), spec, base, cores)

    process, url = start_engine(base, {STUDENT: trained["adapter"]}, folder, cores, rank)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            ways: dict[str, list[str]] = {"base + instructions": [], "base, bare ticket": [], "student": []}
            prompt_tokens: dict[str, list[int]] = {way: [] for way in ways}
            for ticket in heldout:
                bare = [{"role": "user", "content": tickets.student_prompt(ticket)}]
                for way, model, messages in (
                    ("base + instructions", BASE, tickets.teacher_messages(ticket)),
                    ("base, bare ticket", BASE, bare),
                    ("student", STUDENT, bare),
                ):
                    answer, tokens, _ = ask(client, model, messages)
                    ways[way].append(answer)
                    prompt_tokens[way].append(tokens)
            latency: dict[str, list[float]] = {BASE: [], STUDENT: []}
            fixed = {"max_tokens": 32, "ignore_eos": True}
            for ticket in heldout[:20]:
                bare = [{"role": "user", "content": tickets.student_prompt(ticket)}]
                for model in (BASE, STUDENT):
                    latency[model].append(ask(client, model, bare, **fixed)[2])
    finally:
        process.terminate()
        process.wait(30)

    truths = [ticket.truth for ticket in heldout]
    teacher = [tickets.teacher_answer(ticket.text) for ticket in heldout]
    print()
    print(
        f"training: {trained['steps']} steps, {trained['tokens']} tokens in {trained['train_seconds']:.0f} s "
        f"= {trained['tokens_per_second']:.0f} tokens/s; loss {trained['first_loss']:.3f} -> "
        f"{trained['last_loss']:.3f}; trainer peak RSS {trained['peak_rss_bytes'] / 1024**3:.2f} GB; "
        f"process wall time {trained['wall_seconds']:.0f} s; "
        f"cores {capacity.cpu_list(cores)}"
    )
    adapter_bytes = sum(path.stat().st_size for path in Path(trained["adapter"]).iterdir())
    print(f"adapter: {adapter_bytes / 1e6:.1f} MB at {trained['adapter']}")
    print()
    header = f"{'held-out (' + str(len(heldout)) + ')':<22}{'JSON':>7}"
    header += "".join(f"{name:>10}" for name in tickets.FIELDS) + f"{'=teacher':>10}{'prompt tok':>12}"
    print(header)
    rows = {"teacher (stand-in)": (teacher, None)} | {way: (ways[way], prompt_tokens[way]) for way in ways}
    for way, (answers, tokens) in rows.items():
        scores = score_answers(answers, truths, teacher, tickets.FIELDS)
        line = f"{way:<22}{scores.json_validity:>7.0%}"
        line += "".join(f"{scores.field_accuracy[name]:>10.0%}" for name in tickets.FIELDS)
        line += f"{scores.teacher_agreement:>10.0%}"
        line += f"{statistics.mean(tokens):>12.0f}" if tokens else f"{'':>12}"
        print(line)
    saved = statistics.mean(prompt_tokens["base + instructions"]) - statistics.mean(prompt_tokens["student"])
    share = saved / statistics.mean(prompt_tokens["base + instructions"])
    print(
        f"prompt tokens saved per request by the student: {saved:.0f} ({share:.0%} of the instructed prompt)"
    )
    for label, share_ in (("median", 0.5), ("p99", 0.99)):
        base_value, student_value = percentile(latency[BASE], share_), percentile(latency[STUDENT], share_)
        print(
            f"latency {label} (32 tokens): base {base_value * 1000:.0f} ms, "
            f"student {student_value * 1000:.0f} ms, ratio {student_value / base_value:.2f}"
        )
    print("\nexamples (ticket -> student):")
    for ticket, answer in list(zip(heldout, ways["student"], strict=True))[:3]:
        print(f"  {ticket.text[:90]!r}\n    -> {answer[:120]!r}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--heldout", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=TrainingSpec.learning_rate)
    parser.add_argument(
        "--keep", type=Path, default=None, help="the run's folder (default: a new temp folder)"
    )
    parser.add_argument(
        "--cores", default="", help="cores to train and serve on, as 0-1 or 1 (default: all allowed)"
    )
    args = parser.parse_args()
    cores = tuple(sorted(_cores(args.cores))) if args.cores else capacity.allowed_cores()
    run(args.train, args.heldout, args.epochs, args.rank, args.keep, cores, args.learning_rate)


def _cores(text: str) -> set[int]:
    found: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


if __name__ == "__main__":
    cli()
