"""Invocation logging in the gateway: the latency it adds, and whether the writer keeps up at full rate.

    .venv/bin/python bench/invocation_log_gateway.py [--requests 3000] [--rounds 3] [--seconds 20]
        [--concurrency 64] [--write-interval 2]

The gateway as bench/gateway.py runs it (gunicorn, 2 uvicorn workers, GATEWAY_ONLY=True) in front of the
fast stand-in engine (bench/responder.py), called with a ~1 KB chat request holding an e-mail address and a
phone number (what masking finds) by aiohttp in this process.

1. Added latency, logging off against on (every request logged: sample rate 1, request and answer kept,
   masking on): `--rounds` alternating rounds of off, on (and direct, the engine without the gateway),
   `--requests` requests each at concurrency 1, plain and streamed; p50/p99 over all rounds, added over
   direct, and on − off. The log's queue is emptied between rounds; no writer runs here (in production
   it is another process, often another machine).
2. Sustained: the gateway's top rate (concurrency `--concurrency`, plain, `--seconds`) with logging off,
   then on while a writer process moves the queue to a folder store every `--write-interval` seconds
   (the INVOCATION_LOG_WRITE_INTERVAL_SECONDS of a worker); the queue's length and the age of its oldest
   record (how long a record waits between capture and storage) sampled every 0.5 s; the time to empty the
   queue after the load; and the records stored against the requests answered.
Uses DATABASE_URL/REDIS_URL when set (a `<name>_bench` database it recreates), else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import run_with_services  # noqa: E402 (after the path is set)
from bench.gateway import (  # noqa: E402
    MODEL,
    Cell,
    Processes,
    Target,
    cpu_seconds,
    drive,
    free_port,
    gateway,
    percentile,
    workers,
)

PROMPT = (
    "Hello, I ordered a blue kettle last week (order 55120) and it arrived broken. Please write to me at "
    "jane.doe@example.com or call +44 20 7946 0958. I would like a refund to the card I paid with. "
) * 3
BENCH_REDIS_DB = 9  # as bench/gateway.py


def body(stream: bool) -> bytes:
    messages = [
        {"role": "system", "content": "You are a helpful support agent for a kitchen shop."},
        {"role": "user", "content": PROMPT},
    ]
    return json.dumps({"model": MODEL, "messages": messages, "max_tokens": 64, "stream": stream}).encode()


def run_cell(target: Target, stream: bool, concurrency: int, requests: int, seconds: float) -> Cell:
    proxy = workers(target.root) if target.root else []
    url = f"{target.url}/v1/chat/completions"
    headers = {**target.headers, "Content-Type": "application/json"}

    def cpu() -> dict[str, float]:
        return {"proxy": cpu_seconds(proxy)}

    return asyncio.run(drive(url, headers, body(stream), concurrency, requests, seconds, stream, cpu))


def set_logging(organization_id: int, on: bool, wait: float) -> None:
    """Turn the bench organisation's logging on (everything, bodies kept, masked) or off, then wait for
    the gateway's policy snapshot to expire."""
    from django.db import connections

    from learning.models import InvocationLogSettings

    InvocationLogSettings.objects.update_or_create(
        organization_id=organization_id,
        defaults={"enabled": on, "sample_rate": 1.0, "keep_requests": True, "keep_answers": True,
                  "mask_personal_data": True},
    )  # fmt: skip
    connections.close_all()
    time.sleep(wait)


def figures(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values), percentile(values, 0.99)) if values else (float("nan"),) * 2


def latency_part(target: Target, direct: Target, organization_id: int, args: argparse.Namespace) -> None:
    import redis

    from learning.capture import QUEUE_KEY

    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    print(f"1. added latency at concurrency 1: {args.rounds} rounds of {args.requests} requests per case")
    for stream in (False, True):
        got: dict[str, list[float]] = {"direct": [], "off": [], "on": []}
        logged = 0
        for _ in range(args.rounds):
            got["direct"] += run_cell(direct, stream, 1, args.requests, 600).latencies
            for case in ("off", "on"):
                set_logging(organization_id, case == "on", args.cache_seconds + 1)
                connection.delete(QUEUE_KEY)
                got[case] += run_cell(target, stream, 1, args.requests, 600).latencies
                logged += int(connection.llen(QUEUE_KEY)) if case == "on" else 0
        connection.delete(QUEUE_KEY)
        base = figures(got["direct"])
        mode = "stream" if stream else "plain "
        added = {}
        for case in ("off", "on"):
            p50, p99 = figures(got[case])
            added[case] = (p50 - base[0], p99 - base[1])
            print(f"   {mode} logging {case:3}  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms   added over direct: "
                  f"p50 {added[case][0]:+.3f} ms  p99 {added[case][1]:+.3f} ms")  # fmt: skip
        print(f"   {mode} on − off     p50 {added['on'][0] - added['off'][0]:+.3f} ms  "
              f"p99 {added['on'][1] - added['off'][1]:+.3f} ms   (goal: p50 ≤ +0.2 ms; {len(got['on'])} "
              f"requests measured, {logged} records queued with the warm-ups)")  # fmt: skip


def write_loop(interval: float, folder: str, stop: Any, report: Any) -> None:
    """The writer, as the periodic Celery task runs it, in a process of its own."""
    import django
    import redis
    from django.conf import settings
    from django.db import connections

    django.setup()
    connections.close_all()  # not the parent's connection
    from learning import writer
    from learning.storage import FolderStore

    connection, store = redis.Redis.from_url(settings.REDIS_URL), FolderStore(folder)
    stored, busy = 0, 0.0
    while not stop.is_set():
        begin = time.perf_counter()
        stored += writer.write_queued(connection, store).records
        busy += time.perf_counter() - begin
        stop.wait(interval)
    stored += writer.write_queued(connection, store).records
    report.put((stored, busy))


def sample_queue(stop: threading.Event, samples: list[tuple[float, int, float]]) -> None:
    """(seconds since start, queue length, age in s of its oldest record) every 0.5 s."""
    import redis

    from learning.capture import QUEUE_KEY

    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    start = time.monotonic()
    while not stop.is_set():
        length, head = int(connection.llen(QUEUE_KEY)), connection.lindex(QUEUE_KEY, 0)
        age = 0.0
        if head:
            arrived = datetime.datetime.fromisoformat(json.loads(head)["time"])
            age = (datetime.datetime.now(datetime.UTC) - arrived).total_seconds()
        samples.append((time.monotonic() - start, length, age))
        stop.wait(0.5)


def sustained_part(target: Target, organization_id: int, args: argparse.Namespace) -> None:
    import redis
    from django.db import connections

    from learning.capture import OVERFLOW_KEY, QUEUE_KEY

    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    c, seconds = args.concurrency, args.seconds
    print(
        f"\n2. sustained, concurrency {c}, plain, {seconds} s per case; writer every {args.write_interval} s"
    )
    set_logging(organization_id, False, args.cache_seconds + 1)
    off = run_cell(target, False, c, 10**7, seconds)
    print(f"   logging off: {off.rps:7.0f} requests/s, p50 {figures(off.latencies)[0]:.2f} ms, "
          f"gateway workers {off.cpu['proxy']:.0f}% of one core")  # fmt: skip
    set_logging(organization_id, True, args.cache_seconds + 1)
    connection.delete(QUEUE_KEY, OVERFLOW_KEY)
    connections.close_all()
    context = multiprocessing.get_context("fork")
    stop_writer, report = context.Event(), context.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as folder:
        writer = context.Process(target=write_loop, args=(args.write_interval, folder, stop_writer, report))
        writer.start()
        samples: list[tuple[float, int, float]] = []
        stop_sampling = threading.Event()
        sampler = threading.Thread(target=sample_queue, args=(stop_sampling, samples))
        sampler.start()
        on = run_cell(target, False, c, 10**7, seconds)
        loaded_until = samples[-1][0] if samples else 0.0
        drained_at = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if int(connection.llen(QUEUE_KEY)) == 0:
                drained_at = samples[-1][0] if samples else 0.0
                break
            time.sleep(0.2)
        stop_sampling.set()
        sampler.join()
        stop_writer.set()
        stored, busy = report.get(timeout=300)
        writer.join()
        overflow = sum(int(v) for v in connection.hvals(OVERFLOW_KEY))
    print(f"   logging on:  {on.rps:7.0f} requests/s, p50 {figures(on.latencies)[0]:.2f} ms, "
          f"gateway workers {on.cpu['proxy']:.0f}% of one core")  # fmt: skip
    during = [s for s in samples if s[0] <= loaded_until]
    lengths, ages = [s[1] for s in during], [s[2] for s in during]
    if during:
        print(
            f"   queue under load: length p50 {statistics.median(lengths):.0f}, max {max(lengths)}; "
            f"oldest record's wait p50 {statistics.median(ages):.1f} s, max {max(ages):.1f} s"
        )
    shown = samples[:: max(1, len(samples) // 12)]
    print("   over time (s: length/oldest wait): "
          + ", ".join(f"{t:.0f}: {n}/{a:.1f}s" for t, n, a in shown))  # fmt: skip
    drained = "not within 120 s" if drained_at is None else f"{max(0.0, drained_at - loaded_until):.1f} s"
    answered = len(on.latencies)
    print(f"   queue empty after the load: {drained}; stored {stored} records for {answered} answered "
          f"requests (+ warm-up), overflow {overflow}; writer busy {busy:.1f} s "
          f"({stored / busy if busy else 0:,.0f} records/s while writing)")  # fmt: skip


def prepare_and_run(args: argparse.Namespace, procs: Processes) -> None:
    port = free_port()
    engine = procs.start("responder", [sys.executable, str(ROOT / "bench" / "responder.py"), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    procs.wait_ready(f"{upstream}/health", engine, "responder", 10)
    os.environ["GATEWAY_CACHE_SECONDS"] = str(args.cache_seconds)
    print(f"{os.cpu_count()} cores shared by the client (aiohttp, this process), 2 gateway workers, the "
          "stand-in engine, the writer and, on a shared machine, whatever else runs: figures move between "
          "runs; compare within one run.\n")  # fmt: skip
    with gateway(procs, upstream) as target:
        assert target is not None
        from marketplace.accounts.models import Organization

        organization_id = Organization.objects.get(slug="bench").pk
        direct = Target(upstream, {}, None)
        latency_part(target, direct, organization_id, args)
        sustained_part(target, organization_id, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--write-interval", type=float, default=2.0)
    parser.add_argument("--cache-seconds", type=int, default=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run_with_services(lambda: in_bench_services(args))


def in_bench_services(args: argparse.Namespace) -> None:
    from urllib.parse import urlparse, urlunparse

    import redis

    os.environ["REDIS_URL"] = urlunparse(
        urlparse(os.environ["REDIS_URL"])._replace(path=f"/{BENCH_REDIS_DB}")
    )
    with tempfile.TemporaryDirectory(prefix="bench-log-gateway-") as folder:
        procs = Processes(Path(folder))
        try:
            prepare_and_run(args, procs)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything this run started", flush=True)
        finally:
            procs.stop_all()
            store = redis.Redis.from_url(os.environ["REDIS_URL"])
            for key in list(store.scan_iter("gw:*")):
                store.delete(key)


if __name__ == "__main__":
    main()
