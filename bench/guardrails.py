"""Guardrails benchmark: what checking a text costs the gateway, per call and per streamed chunk.

    .venv/bin/python bench/guardrails.py [--calls 20000] [--rounds 5]

Pure CPU, in this process (no database or network: learning.guardrails.check and StreamGuard are pure).
Every figure is p50 and p99 of one call, measured in interleaved rounds in one run, and set against a
baseline of the same run: reading and writing the ~1 KB chat request as JSON (what the gateway does to
every request anyway; for streams, decoding one server-sent event's JSON, as it does for every chunk).

1. check() on a clean 1 KB prompt (prose with a few numbers, no personal data): no guardrail (nothing to
   do), personal data (all nine types, masked) + five custom words; + the profanity list and prompt
   attacks; + three denied topics of ten examples each in MiniLM's 384 dimensions, the prompt's
   embedding given (the embedding call itself is an HTTP round trip to the embeddings deployment,
   measured in bench/routing.py, and shared with the router's semantic predictor).
2. check() on a 1 KB prompt with an e-mail address, a phone and a card number (three masked).
3. StreamGuard.feed() per chunk of a 2 KB answer streamed four characters at a time (a token), with the
   personal-data and word checks, and the characters it holds back on average.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLEAN = (
    "Please summarise the meeting notes below for the quarterly planning review. The team discussed the "
    "roadmap for 2025, hiring plans for 3 open roles and the budget for the next two quarters. Marketing "
    "asked for a clearer launch timeline and engineering for more time on reliability work before the "
    "release. Finance wants a single page with the numbers everyone agreed on, and the risks we still see. "
) * 3
CLEAN = CLEAN[:1024]
PERSONAL = (
    CLEAN[:700] + " Write to jane.doe@example.com or call +44 20 7946 0958; refund card 4111 1111 1111 1111. "
)[:1024]
REQUEST = {
    "model": "chat",
    "messages": [{"role": "user", "content": CLEAN}],
    "max_tokens": 200,
    "stream": True,
}
ANSWER = (CLEAN + " ") * 2
CHUNK_EVENT = (
    '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"the "}}]}'
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timings(call: Callable[[], Any], count: int) -> list[float]:
    """Milliseconds of each of `count` calls."""
    clock = time.perf_counter_ns
    found = []
    for _ in range(count):
        started = clock()
        call()
        found.append((clock() - started) / 1e6)
    return found


def line(label: str, values: list[float], baseline: list[float]) -> str:
    p50, p99 = statistics.median(values), percentile(values, 0.99)
    b50, b99 = statistics.median(baseline), percentile(baseline, 0.99)
    return (
        f"   {label:58} p50 {p50:7.4f} ms ({p50 / b50:5.2f}× baseline)   "
        f"p99 {p99:7.4f} ms ({p99 / b99:5.2f}×)"
    )


def run(calls: int, rounds: int) -> None:
    import numpy as np

    from learning import masking
    from learning.guardrails import INPUT, OUTPUT, StreamGuard, check, compile_policy

    words = ["project falcon", "acme corp", "confidential", "internal only", "codename"]
    pii = {kind: "mask" for kind in masking.ALL_KINDS}
    rng = np.random.default_rng(0)
    topics = [
        {"name": f"topic {n}", "examples": [f"example {i}" for i in range(10)], "threshold": 0.8}
        for n in range(3)
    ]
    vectors = [rng.standard_normal((10, 384)).tolist() for _ in topics]
    embedding = rng.standard_normal(384).astype(np.float32)
    policies = {
        "pii": compile_policy({"personal_data": pii, "words": words}),
        "all": compile_policy(
            {"personal_data": pii, "words": words, "profanity": True, "prompt_attacks": True}
        ),
        "topics": compile_policy(
            {"personal_data": pii, "words": words, "topics": topics, "embedding_deployment": "e"},
            topic_vectors=vectors,
        ),
    }
    assert check(policies["all"], CLEAN, direction=INPUT).interventions == ()
    assert check(policies["pii"], PERSONAL, direction=INPUT).text.count("[") == 3

    def stream() -> list[float]:
        guard = StreamGuard(policies["pii"])
        pieces = [ANSWER[i : i + 4] for i in range(0, len(ANSWER), 4)]
        clock = time.perf_counter_ns
        found = []
        for piece in pieces:
            started = clock()
            guard.feed(piece)
            found.append((clock() - started) / 1e6)
        guard.finish()
        return found

    def held_back() -> float:
        guard = StreamGuard(policies["pii"])
        sent, held = 0, []
        for i in range(0, len(ANSWER), 4):
            sent += len(guard.feed(ANSWER[i : i + 4]))
            held.append(i + 4 - sent)
        return statistics.mean(held)

    cases: dict[str, Callable[[], Any]] = {
        "baseline: the request's JSON read and written": lambda: json.dumps(json.loads(json.dumps(REQUEST))),
        "clean 1 KB, personal data (9 types) + 5 words": lambda: check(
            policies["pii"], CLEAN, direction=INPUT
        ),
        "clean 1 KB, + profanity + prompt attacks": lambda: check(policies["all"], CLEAN, direction=INPUT),
        "clean 1 KB, + 3 denied topics × 10 examples (384 d)": lambda: check(
            policies["topics"], CLEAN, direction=INPUT, embedding=embedding
        ),
        "1 KB with 3 pieces of personal data (masked)": lambda: check(
            policies["pii"], PERSONAL, direction=OUTPUT
        ),
        "log masking alone (learning.masking.mask), clean 1 KB": lambda: masking.mask(CLEAN),
    }
    results: dict[str, list[float]] = {label: [] for label in cases}
    chunk_baseline: list[float] = []
    chunks: list[float] = []
    per_round = max(1, calls // rounds)
    for round_number in range(rounds):
        print(f"round {round_number + 1} of {rounds}…", file=sys.stderr)
        for label, call in cases.items():
            results[label] += timings(call, per_round)
        chunk_baseline += timings(lambda: json.loads(CHUNK_EVENT), per_round)
        for _ in range(max(1, per_round // 500)):
            chunks += stream()
    baseline = results.pop("baseline: the request's JSON read and written")
    print(f"check() per call, {calls} calls in {rounds} interleaved rounds (baseline: the request's JSON)")
    print(line("baseline: the request's JSON read and written", baseline, baseline))
    for label, values in results.items():
        print(line(label, values, baseline))
    print(
        f"StreamGuard.feed() per 4-character chunk of a {len(ANSWER)}-character answer (baseline: event JSON)"
    )
    print(line("baseline: json.loads of one chunk event", chunk_baseline, chunk_baseline))
    print(line("feed(), personal data + words", chunks, chunk_baseline))
    window = policies["pii"].hold_back
    print(f"   characters held back on average while streaming: {held_back():.0f} (window {window})")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    run(arguments.calls, arguments.rounds)
