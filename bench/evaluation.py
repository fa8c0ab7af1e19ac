"""Evaluation throughput: items per second of an evaluation run against calling the deployment directly
with the same concurrency.

    .venv/bin/python bench/evaluation.py [--items 400] [--concurrency 8] [--rounds 3]

Both sides call the same fast stand-in engine (bench/responder.py), so the figures are the platform's own
cost per item, not a model's: "direct" posts each record's chat request to the engine with aiohttp;
"evaluation" runs `learning.evaluations.run` in this process (the gateway's own path: admission and
limits in Redis, metering, then the engine; the item stored in PostgreSQL with an exact-match score).
Uses DATABASE_URL/REDIS_URL when set (in a separate `<name>_bench` database it recreates), else
embedded servers. Prints items/s of each side per round, their medians, and the ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import main  # noqa: E402 (after the path is set)
from bench.gateway import MODEL, Processes, free_port, prepare_gateway  # noqa: E402


async def direct(upstream: str, records: list[dict[str, object]], concurrency: int) -> float:
    """Items per second of the engine called straight, `concurrency` requests at once."""
    import aiohttp

    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for record in records:
        queue.put_nowait(record)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            record = queue.get_nowait()
            payload = {"model": MODEL, "messages": record["messages"], "max_tokens": 16, "temperature": 0}
            async with session.post(f"{upstream}/v1/chat/completions", json=payload) as answer:
                await answer.read()

    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return len(records) / (time.perf_counter() - start)


def evaluated(dataset: object, concurrency: int, count: int) -> float:
    """Items per second of one evaluation of the dataset, run in this process."""
    from unittest import mock

    from learning import evaluations
    from marketplace.accounts.models import Organization

    organization = Organization.objects.get(slug="bench")
    with mock.patch("learning.tasks.run_evaluation.delay"):  # no worker here: this process runs it
        evaluation = evaluations.create_evaluation(
            organization=organization, user=None, dataset=dataset, deployments=[MODEL], part="all",  # type: ignore[arg-type]
            scorer_specs=[{"kind": "exact_match"}], max_tokens=16, concurrency=concurrency,
        )  # fmt: skip
    start = time.perf_counter()
    status = evaluations.run_blocking(evaluation.pk)
    elapsed = time.perf_counter() - start
    done = evaluations.progress(evaluation)["done"]
    if status != "succeeded" or done != count:
        raise RuntimeError(f"the evaluation ended {status} with {done} of {count} items")
    return count / elapsed


def run(items: int, concurrency: int, rounds: int) -> None:
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="bench-evaluation-")
    os.environ["OBJECT_STORE_BUCKET"] = ""
    procs = Processes(Path(os.environ["DATA_DIR"]))
    port = free_port()
    engine = procs.start("responder", [sys.executable, str(ROOT / "bench" / "responder.py"), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    try:
        procs.wait_ready(f"{upstream}/health", engine, "responder", 10)
        prepare_gateway(upstream)
        from learning import datasets
        from learning.choices import DatasetSource
        from learning.storage import get_store
        from marketplace.accounts.models import Organization

        records: list[dict[str, object]] = [
            {"messages": [{"role": "user", "content": f"Question {n}: what is {n} + {n}?"}], "reference": "x"}
            for n in range(items)
        ]
        dataset = datasets.save(
            get_store(), organization_id=Organization.objects.get(slug="bench").pk, name="bench",
            records=records, source=DatasetSource.UPLOAD, heldout_fraction=0.0, seed=0,
        )  # fmt: skip
        print(f"{items} items, {concurrency} at a time, against bench/responder.py; items per second:")
        print(f"{'round':>5} {'direct':>10} {'evaluation':>11}")
        direct_rates, evaluation_rates = [], []
        for number in range(1, rounds + 1):
            direct_rates.append(asyncio.run(direct(upstream, records, concurrency)))
            evaluation_rates.append(evaluated(dataset, concurrency, items))
            print(f"{number:>5} {direct_rates[-1]:>10.0f} {evaluation_rates[-1]:>11.0f}")
        direct_median = statistics.median(direct_rates)
        evaluation_median = statistics.median(evaluation_rates)
        extra_ms = 1000 / evaluation_median - 1000 / direct_median
        print(
            f"median {direct_median:>9.0f} {evaluation_median:>11.0f}   evaluation / direct = "
            f"{evaluation_median / direct_median:.2f} ({extra_ms:.2f} ms more per item, the platform's own)"
        )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main(__doc__ or "", run, items=400, concurrency=8, rounds=3)
