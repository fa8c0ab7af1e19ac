"""Invocation logging benchmark: what `capture` costs the gateway per call, and how fast the writer
empties the queue.

    .venv/bin/python bench/invocation_log.py [--calls 5000] [--records 20000]

1. capture(): p50/p99 of one awaited call in one event loop (a ~1 KB chat request and its answer), each
   pushed on its own (no lingering for a batch, which the gateway does), for an organisation with logging
   off, on without bodies, on with bodies marked for masking, on with bodies unmasked; and masking the
   record alone, which the writer does. What the gateway adds per logged call, in one run, is in
   bench/invocation_log_gateway.py.
2. The writer: records queued in Redis → masked → gzip JSON Lines objects in a folder and their index
   rows: records per second and compressed bytes per record.
Uses DATABASE_URL/REDIS_URL when set (a separate `<name>_bench` database it recreates), else embedded
servers.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import main  # noqa: E402 (after the path is set)

PROMPT = (
    "Hello, I ordered a blue kettle last week (order 55120) and it arrived broken. Please write to me at "
    "jane.doe@example.com or call +44 20 7946 0958. I would like a refund to the card I paid with. "
) * 3


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def line(label: str, timings: list[float]) -> str:
    p50, p99 = statistics.median(timings), percentile(timings, 0.99)
    return f"   {label:22} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms"


def record(organization_id: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "organization_id": organization_id,
        "key_prefix": "mk-bench000",
        "deployment_id": None,
        "deployment": "chat",
        "route": "openai.chat",
        "request": {
            "model": "chat",
            "max_tokens": 200,
            "messages": [
                {"role": "system", "content": "You are a helpful support agent for a kitchen shop."},
                {"role": "user", "content": PROMPT},
            ],
        },
        "answer": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "I am sorry to hear that. " * 12},
                }
            ],
            "usage": {"prompt_tokens": 180, "completion_tokens": 72},
        },
        "tokens": {"prompt": 180, "completion": 72},
        "latency_ms": 840,
        "time_to_first_token_ms": None,
        "status": 200,
    }


def run(calls: int, records: int) -> None:
    import django

    django.setup()
    import redis
    import redis.asyncio
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from learning import capture as capture_module
    from learning import writer
    from learning.masking import mask_json
    from learning.models import InvocationLogSettings
    from learning.storage import FolderStore
    from marketplace.accounts import services as account_services

    call_command("migrate", verbosity=0)
    settings.INVOCATION_LOG_QUEUE_MAX = 10**9
    owner = User.objects.create_user("bench")
    organization = account_services.create_organization(slug="bench", name="Bench", owner=owner)
    sync = redis.Redis.from_url(settings.REDIS_URL)
    sync.delete(capture_module.QUEUE_KEY)
    sample = record(organization.pk)
    print(f"1. capture(): one awaited call, {calls} calls per case, a {len(json.dumps(sample))}-byte record")

    cases = [
        ("logging off", None),
        ("on, no bodies", {"keep_requests": False, "keep_answers": False}),
        ("on, bodies, to mask", {}),
        ("on, bodies, unmasked", {"mask_personal_data": False}),
    ]
    for label, choices in cases:
        InvocationLogSettings.objects.filter(organization=organization).delete()
        if choices is not None:
            InvocationLogSettings.objects.create(organization=organization, enabled=True, **choices)

        async def measure() -> list[float]:
            connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
            capturer = capture_module.Capturer(connection, ttl=3600, linger=0)
            await capturer.capture(record(organization.pk))  # loads the policy: not what is measured
            timings = []
            for _ in range(calls):
                item = record(organization.pk)
                begin = time.perf_counter()
                await capturer.capture(item)
                timings.append((time.perf_counter() - begin) * 1000)
            await connection.aclose()
            return timings

        timings = asyncio.run(measure())
        print(line(label, timings))
        sync.delete(capture_module.QUEUE_KEY)
    timings = []
    for _ in range(calls):
        begin = time.perf_counter()
        mask_json([sample["request"], sample["answer"]])
        timings.append((time.perf_counter() - begin) * 1000)
    print(line("masking (the writer)", timings))

    print(f"\n2. the writer: {records} queued records → objects in a folder + index rows")
    queued = [json.dumps({**record(organization.pk), "mask": True}) for _ in range(records)]
    for start in range(0, len(queued), 1000):
        sync.rpush(capture_module.QUEUE_KEY, *queued[start : start + 1000])
    with tempfile.TemporaryDirectory() as folder:
        store = FolderStore(folder)
        begin = time.perf_counter()
        result = writer.write_queued(sync, store)
        seconds = time.perf_counter() - begin
        stored = sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())
    raw = sum(len(item) for item in queued)
    rate = result.records / seconds
    print(f"   {result.records} records in {result.objects} objects, {seconds:.2f} s: {rate:,.0f} records/s")
    ratio = raw / stored
    print(f"   {stored / result.records:,.0f} bytes a record compressed ({ratio:.1f}× smaller than the JSON)")
    print("   (the records differ only in id and time: real traffic compresses less)")


if __name__ == "__main__":
    main(__doc__ or "", run, calls=5000, records=20000)
