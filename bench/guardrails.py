"""Guardrails benchmark: what checking a text costs the gateway, per call and per streamed chunk.

    .venv/bin/python bench/guardrails.py [--calls 20000] [--rounds 5]

Pure CPU, in this process (no database or network: learning.guardrails.check and StreamGuard are pure).
Every figure is p50 and p99 of one call, measured in interleaved rounds in one run, and set against a
baseline of the same run: reading and writing the ~1 KB chat request as JSON (what the gateway does to
every request anyway; for streams, decoding one server-sent event's JSON, as it does for every chunk).

1. check() on a clean 1 KB prompt (prose with a few numbers, no personal data): no guardrail (nothing to
   do), personal data (all nine types, masked) + five custom words; the same with Presidio's pattern
   recognizers as the detector (learning.guardrails.presidio); + the profanity list and prompt
   attacks; + three denied topics of ten examples each in MiniLM's 384 dimensions, the prompt's
   embedding given (the embedding call itself is an HTTP round trip to the embeddings deployment,
   measured in bench/routing.py, and shared with the router's semantic predictor).
2. check() on a 1 KB prompt with an e-mail address, a phone and a card number (three masked).
3. StreamGuard.feed() per chunk of a 2 KB answer streamed four characters at a time (a token), with the
   personal-data and word checks (built-in detectors, then Presidio's), and the characters it holds back
   on average.

With `--gateway` instead (the gateway as bench/gateway.py runs it: gunicorn, 2 uvicorn workers,
GATEWAY_ONLY=True, on DATABASE_URL/REDIS_URL when set, else embedded servers):

4. Added latency at the gateway, in `--rounds` interleaved rounds in one run, each case against no
   guardrail: a guardrail of personal data (all types, masked) and five words attached to the deployment
   (goal: p50 ≤ +1 ms); the same with Presidio's recognizers as its detector; the same with three denied
   topics of ten examples (the prompt embedded by the guardrail's embeddings deployment: a stand-in that
   answers a 384-dimension vector at once, or a real one given with `--embedder URL`, e.g. vLLM serving
   MiniLM). `--requests` plain chat requests with a clean ~1 KB prompt at concurrency 1 against the fast
   stand-in engine (bench/responder.py). The embedding call is reported on its own as well: the same
   request sent straight to the embeddings deployment, timed the same way.
5. Streaming time to first token (the first non-empty content delta the caller receives), output checks off
   against on, against a paced stand-in engine (this script with --paced PORT: one 4-character token every
   `--token-ms` ms, a 2 KB answer). With checks on the first token waits for the hold-back window
   (64 characters, about 16 tokens here) to fill: the price of never sending an entity in pieces.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
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
        "presidio": compile_policy({"personal_data": pii, "words": words, "detector": "presidio"}),
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
    assert check(policies["presidio"], PERSONAL, direction=INPUT).text.count("[") == 3

    def stream(policy: str = "pii") -> list[float]:
        guard = StreamGuard(policies[policy])
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
        "clean 1 KB, the same with Presidio's recognizers": lambda: check(
            policies["presidio"], CLEAN, direction=INPUT
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
    presidio_chunks: list[float] = []
    per_round = max(1, calls // rounds)
    for round_number in range(rounds):
        print(f"round {round_number + 1} of {rounds}…", file=sys.stderr)
        for label, call in cases.items():
            results[label] += timings(call, per_round)
        chunk_baseline += timings(lambda: json.loads(CHUNK_EVENT), per_round)
        for _ in range(max(1, per_round // 500)):
            chunks += stream()
            presidio_chunks += stream("presidio")
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
    print(line("feed(), the same with Presidio's recognizers", presidio_chunks, chunk_baseline))
    window = policies["pii"].hold_back
    print(f"   characters held back on average while streaming: {held_back():.0f} (window {window})")


# --- At the gateway ----------------------------------------------------------------------------------------

PACED_MODEL = "bench-paced"
EMBED_MODEL = "bench-embed"
# What the stand-in embeddings deployment answers: one 384-dimension vector (MiniLM's size).
EMBEDDING = json.dumps(
    {"object": "list", "model": EMBED_MODEL, "usage": {"prompt_tokens": 256, "total_tokens": 256},
     "data": [{"object": "embedding", "index": 0, "embedding": [round(0.05 * ((i * 7) % 19 - 9), 3)
                                                                   for i in range(384)]}]}
).encode()  # fmt: skip
TOPICS = [
    {"name": f"topic {n}", "definition": "", "examples": [f"example {n}.{i}" for i in range(10)],
     "threshold": 0.99}
    for n in range(3)
]  # fmt: skip
# Cases at the gateway: the guardrail attached (None: none), by its name.
GATEWAY_CASES = {
    "off": None,
    "personal data + words": "bench",
    "the same, Presidio's recognizers": "bench-presidio",
    "the same + 3 denied topics": "bench-topics",
}
GUARDRAIL = {
    "personal_data": {},  # filled with every type in gateway_run (learning.masking.ALL_KINDS)
    "words": ["project falcon", "acme corp", "confidential", "internal only", "codename"],
}


def serve_paced(port: int, token_ms: float) -> None:
    """A stand-in engine that streams ANSWER four characters an event, one event every `token_ms` ms."""
    import asyncio

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                await reader.readexactly(length)
                if head.startswith(b"GET"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    continue
                if head.startswith(b"POST /v1/embeddings"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(EMBEDDING), EMBEDDING))  # fmt: skip
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
                events = [{"role": "assistant", "content": ""}] + [
                    {"content": ANSWER[i : i + 4]} for i in range(0, len(ANSWER), 4)
                ]
                for number, delta in enumerate(events):
                    body = {
                        "id": "p",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": PACED_MODEL,
                        "choices": [
                            {
                                "index": 0,
                                "delta": delta,
                                "finish_reason": "stop" if number == len(events) - 1 else None,
                            }
                        ],
                    }
                    piece = b"data: " + json.dumps(body).encode() + b"\n\n"  # fmt: skip
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    await asyncio.sleep(token_ms / 1000)
                usage = {"id": "p", "object": "chat.completion.chunk", "created": 1, "model": PACED_MODEL,
                         "choices": [], "usage": {"prompt_tokens": 256, "completion_tokens": len(events),
                                                  "total_tokens": 256 + len(events)}}  # fmt: skip
                for piece in (b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def first_tokens(url: str, headers: dict[str, str], count: int) -> list[float]:
    """Milliseconds to the first non-empty content delta of `count` streamed chat calls, one at a time."""
    import aiohttp

    body = json.dumps(
        {"model": PACED_MODEL, "stream": True, "messages": [{"role": "user", "content": CLEAN}]}
    )
    found = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(count):
            begin, first = time.perf_counter(), 0.0
            async with session.post(url, data=body, headers=headers) as response:
                async for line in response.content:
                    if not first and line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                            first = time.perf_counter()
            assert first, "the stream sent no content"
            found.append((first - begin) * 1000)
    return found


async def embedding_calls(url: str, body: bytes, count: int) -> list[float]:
    """Milliseconds of `count` embedding requests, one at a time on one connection (after a warm-up)."""
    import aiohttp

    found = []
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for number in range(count + 10):
            begin = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200 and (await response.json())["data"][0]["embedding"]
            if number >= 10:
                found.append((time.perf_counter() - begin) * 1000)
    return found


def attach(organization_id: int, name: str | None, wait: float) -> None:
    """Attach the bench guardrail of that name to the chat deployments (none: detach every one), then wait
    for the gateway's snapshot of the organisation to expire."""
    from django.db import connections

    from learning.models import Guardrail, GuardrailAttachment
    from serving.models import Deployment

    GuardrailAttachment.objects.filter(guardrail__organization_id=organization_id).delete()
    if name is not None:
        guardrail = Guardrail.objects.get(organization_id=organization_id, name=name)
        for deployment in Deployment.objects.filter(organization_id=organization_id).exclude(
            name=EMBED_MODEL
        ):
            GuardrailAttachment.objects.create(guardrail=guardrail, deployment=deployment)
    connections.close_all()
    time.sleep(wait)


def gateway_run(args: Any) -> None:
    import asyncio
    import os
    import tempfile

    from bench.gateway import MODEL, Processes, drive, free_port, gateway

    with tempfile.TemporaryDirectory(prefix="bench-guardrails-") as folder:
        procs = Processes(Path(folder))
        try:
            responder, paced = free_port(), free_port()
            engine = procs.start(
                "responder", [sys.executable, str(ROOT / "bench" / "responder.py"), str(responder)]
            )
            pacer = procs.start("paced", [sys.executable, __file__, "--paced", str(paced),
                                          "--token-ms", str(args.token_ms)])  # fmt: skip
            procs.wait_ready(f"http://127.0.0.1:{responder}/health", engine, "responder", 10)
            procs.wait_ready(f"http://127.0.0.1:{paced}/health", pacer, "paced", 10)
            os.environ["GATEWAY_CACHE_SECONDS"] = "1"
            with gateway(procs, f"http://127.0.0.1:{responder}") as target:
                assert target is not None
                gateway_measure(args, target, f"http://127.0.0.1:{paced}", MODEL, drive, asyncio)
        finally:
            procs.stop_all()


def embed_examples(embedder: str, texts: list[str]) -> list[list[float]]:
    """The topic examples' embeddings: by a real embeddings engine when one is given, else random unit
    directions (the stand-in answers one vector for everything, which would put every prompt on topic)."""
    import httpx
    import numpy as np

    if not embedder:
        return [list(map(float, row)) for row in np.random.default_rng(1).standard_normal((len(texts), 384))]
    answer = httpx.post(f"{embedder}/v1/embeddings", json={"model": EMBED_MODEL, "input": texts}, timeout=60)
    answer.raise_for_status()
    return [item["embedding"] for item in answer.json()["data"]]


def gateway_measure(args: Any, target: Any, paced: str, model: str, drive: Any, asyncio: Any) -> None:
    from learning import masking
    from learning.guardrails import service
    from marketplace.accounts.models import Organization
    from marketplace.catalog.models import InstanceType, ModelCard
    from marketplace.subscriptions.services import subscribe
    from serving.choices import Backend, DeploymentStatus
    from serving.models import Deployment

    organization = Organization.objects.get(slug="bench")
    ready = {"instance_type": InstanceType.objects.get(slug="local-cpu"), "backend": Backend.LOCAL,
             "status": DeploymentStatus.READY, "status_message": "Ready.", "ready_replicas": 1,
             "desired_replicas": 1}  # fmt: skip
    Deployment.objects.create(
        organization=organization, name=PACED_MODEL,
        model_card=ModelCard.objects.get(slug="smollm2-135m-instruct"), endpoints=[paced], **ready,
    )  # fmt: skip
    minilm = ModelCard.objects.get(slug="all-minilm-l6-v2")
    subscribe(organization=organization, card=minilm, license_sha256=None, user=None)
    embedder = args.embedder or paced
    Deployment.objects.create(
        organization=organization, name=EMBED_MODEL, model_card=minilm, endpoints=[embedder], **ready
    )
    config = {**GUARDRAIL, "personal_data": {kind: "mask" for kind in masking.ALL_KINDS}}
    variants = {
        "bench": config,
        "bench-presidio": {**config, "detector": "presidio"},
        "bench-topics": {**config, "topics": TOPICS, "embedding_deployment": EMBED_MODEL},
    }
    for name, variant in variants.items():
        guardrail = service.create_guardrail(organization=organization, user=None, name=name, config=variant)
        service.publish(guardrail, None, partial(embed_examples, args.embedder))
    url = f"{target.url}/v1/chat/completions"
    headers = {**target.headers, "Content-Type": "application/json"}
    plain = json.dumps({"model": model, "messages": [{"role": "user", "content": CLEAN}], "max_tokens": 64})
    embed_body = json.dumps({"model": EMBED_MODEL, "input": CLEAN}).encode()
    latency: dict[str, list[float]] = {case: [] for case in GATEWAY_CASES}
    embedding: list[float] = []
    ttft: dict[str, list[float]] = {"off": [], "on": []}
    for number in range(args.rounds):
        print(f"round {number + 1} of {args.rounds}…", file=sys.stderr)
        for case, guardrail_name in GATEWAY_CASES.items():
            attach(organization.pk, guardrail_name, 2.0)
            cell = asyncio.run(drive(url, headers, plain.encode(), 1, args.requests, 600, False, dict))
            latency[case] += cell.latencies
            if case == "off":
                ttft["off"] += asyncio.run(first_tokens(url, headers, args.streams))
                # The embedding call on its own: the request the gateway sends, straight to the deployment.
                embedding += asyncio.run(
                    embedding_calls(f"{embedder}/v1/embeddings", embed_body, args.requests)
                )
            elif case == "personal data + words":
                ttft["on"] += asyncio.run(first_tokens(url, headers, args.streams))
    print(f"4. gateway latency, plain chat, clean 1 KB prompt, concurrency 1: {args.rounds} rounds × "
          f"{args.requests} requests per case (guardrail: personal data, all types masked, "
          "+ 5 words)")  # fmt: skip
    off50, off99 = statistics.median(latency["off"]), percentile(latency["off"], 0.99)
    for case in GATEWAY_CASES:
        added = statistics.median(latency[case]) - off50
        added99 = percentile(latency[case], 0.99) - off99
        print(
            line(f"{case}", latency[case], latency["off"])
            + f"   added p50 {added:+.3f} ms, p99 {added99:+.2f}"
        )
    where = "a real embeddings deployment" if args.embedder else "the instant stand-in"
    print(line(f"embedding call alone ({where}, direct)", embedding, latency["off"]))
    topics_added = statistics.median(latency["the same + 3 denied topics"]) - off50
    real = "" if args.embedder else " (a real MiniLM: pass --embedder URL)"
    print(f"   goal: personal data + words p50 ≤ +1 ms. Denied topics add {topics_added:+.3f} ms, of which "
          f"the embedding call alone takes ≈ {statistics.median(embedding):.3f} ms{real}")  # fmt: skip
    print(f"5. streaming time to first token, a 2 KB answer at one 4-character token every "
          f"{args.token_ms} ms: {args.rounds} rounds × {args.streams} streams per case")  # fmt: skip
    for case in ("off", "on"):
        print(line(f"output checks {case}", ttft[case], ttft["off"]))
    delay = statistics.median(ttft["on"]) - statistics.median(ttft["off"])
    print(f"   on − off: p50 {delay:+.1f} ms (the 64-character hold-back is ≈ 16 tokens × "
          f"{args.token_ms} ms)")  # fmt: skip


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gateway", action="store_true", help="measure at the gateway (4 and 5)")
    parser.add_argument("--requests", type=int, default=500, help="plain requests per case and round")
    parser.add_argument("--streams", type=int, default=20, help="streams per case and round")
    parser.add_argument("--token-ms", type=float, default=5.0)
    parser.add_argument("--embedder", default="", help="a real embeddings engine's URL for the topics case")
    parser.add_argument("--paced", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    if arguments.paced:
        serve_paced(arguments.paced, arguments.token_ms)
    elif arguments.gateway:
        from bench.common import run_with_services

        run_with_services(lambda: gateway_run(arguments))
    else:
        run(arguments.calls, arguments.rounds)
