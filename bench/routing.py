"""Prompt routing benchmark: what a router costs per call and to train, against baselines of the same run.

    .venv/bin/python bench/routing.py [--decisions 20000] [--requests 3000] [--train-items 10000]
        [--embedding-calls 300]

1. The decision, in this process (learning.routing.decide with every candidate available): an untrained
   router (the rule alone: the baseline), the n-gram predictor, and the semantic one given its prompt's
   embedding (k nearest neighbours among 7,000 training vectors of 384 dimensions, MiniLM's size; the
   cost of a neighbour search depends on their number and size, not their content). Also the whole
   in-process step: the prompt's text taken from the request, then the n-gram decision.
2. The embedding call the semantic predictor needs, reported apart: one prompt to a real MiniLM vLLM
   engine (when the engine environment is prepared), against a call to the fast stand-in engine
   (bench/responder.py) as the baseline of an HTTP round trip.
3. Through the gateway (gunicorn, 2 uvicorn workers, GATEWAY_ONLY=True, a `<name>_bench` database), one
   client at a time, in interleaved rounds of 100 calls: the stand-in engine called directly, a deployment
   by its name, and an active router (n-gram version) over two deployments by its name. Added by routing =
   router − deployment; the cloud router's published overhead (≈ 85 ms at P90) is the anchor.
4. Training: the router training task's run (learning.router_training.run: targets read from an
   evaluation's items in PostgreSQL, split, the n-gram predictor fitted, the held-out report with its
   bootstrap intervals, the version stored) on --train-items prompts scored for two candidates, against
   the same on a tenth of them.

Times in ms unless said; p50/p90/p99 over every measured call; ratios against the baseline named.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import main  # noqa: E402 (after the path is set)
from bench.gateway import (  # noqa: E402
    BENCH_REDIS_DB,
    GUNICORN,
    MODEL,
    Processes,
    Target,
    drive,
    free_port,
    percentile,
    prepare_gateway,
)

CLOUD_P90_MS = 85.0  # the cloud router's published routing overhead at P90
GOAL_DECISION_MS, GOAL_ADDED_MS = 0.1, 1.0
LARGE, ROUTER = "bench-large", "bench-router"
TOPICS = ["the sea", "castles", "jazz", "volcanoes", "honey bees", "space travel", "glaciers", "tea", "chess"]
EMBEDDING_DIMENSIONS, SEMANTIC_TRAIN = 384, 7000


def corpus(count: int, seed: int = 1) -> list[tuple[str, list[float]]]:
    """Distinct prompts with known targets (small right on sums, large right on everything)."""
    rng, found = random.Random(seed), dict[str, list[float]]()
    while len(found) < count:
        if rng.random() < 0.6:
            found[f"What is {rng.randint(1, 99999)} plus {rng.randint(1, 99999)}?"] = [1.0, 1.0]
        else:
            topic = rng.choice(TOPICS)
            text = (
                f"Write an essay about {topic} and its history, part {rng.randint(1, 10**6)}, with sources."
            )
            found[text] = [0.0, 1.0]
    return list(found.items())


def figures(name: str, values: list[float], baseline: list[float] | None = None, unit: str = "ms") -> str:
    p50, p90, p99 = statistics.median(values), percentile(values, 0.9), percentile(values, 0.99)
    line = f"  {name:<50} p50 {p50:9.4f}  p90 {p90:9.4f}  p99 {p99:9.4f} {unit}"
    if baseline:
        line += f"   p50 ×{p50 / statistics.median(baseline):.2f} of the baseline"
    return line


def timed(call: Callable[[int], Any], count: int) -> list[float]:
    times = []
    for index in range(count):
        start = time.perf_counter()
        call(index)
        times.append((time.perf_counter() - start) * 1000)
    return times


def verdict(ok: bool) -> str:
    return "met   " if ok else "MISSED"


# --- 1. The decision ----------------------------------------------------------------------------------------


def decisions(count: int) -> list[str]:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from learning import predictors, routing

    items = corpus(10_000)
    texts, targets = [t for t, _ in items], np.array([y for _, y in items])
    train, held = slice(0, SEMANTIC_TRAIN), slice(SEMANTIC_TRAIN, None)
    started = time.perf_counter()
    ngram = predictors.NgramPredictor.fit(["small", "large"], texts[train], targets[train])
    fit_seconds = time.perf_counter() - started
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(len(items), EMBEDDING_DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    semantic = predictors.SemanticPredictor.fit(["small", "large"], vectors[train], targets[train])
    candidates = (routing.Candidate("small", 0.0001), routing.Candidate("large", 0.001))

    def route(predictor: Any) -> routing.Route:
        return routing.Route(
            router_id=1, organization_id=1, name="auto", candidates=candidates, fallback="large",
            quality_difference=0.1, mode=routing.ACTIVE, version=1 if predictor else None,
            predictor=predictor, embedding_deployment="", shadow_rate=0.0, shadow_tokens_per_day=0,
        )  # fmt: skip

    untrained, by_ngram, by_meaning = route(None), route(ngram), route(semantic)
    held_texts, held_vectors = texts[held], vectors[held]
    payloads = [{"model": "auto", "messages": [{"role": "user", "content": t}]} for t in held_texts]
    n = len(held_texts)

    def up(_: str) -> bool:
        return True

    for warm in (untrained, by_ngram):  # first calls fill caches
        for text in held_texts[:200]:
            routing.decide(warm, text, up)
    baseline = timed(lambda i: routing.decide(untrained, held_texts[i % n], up), count)
    fast = timed(lambda i: routing.decide(by_ngram, held_texts[i % n], up), count)
    whole = timed(lambda i: routing.decide(by_ngram, routing.prompt_text(payloads[i % n]), up), count)
    near = timed(lambda i: routing.decide(by_meaning, "", up, held_vectors[i % n]), max(count // 10, 200))
    with threadpool_limits(limits=1):  # one BLAS thread: no spinning threads fighting for a busy core
        near_one = timed(
            lambda i: routing.decide(by_meaning, "", up, held_vectors[i % n]), max(count // 10, 200)
        )
    right = sum(
        routing.decide(by_ngram, t, up).deployment == ("small" if y[0] else "large") for t, y in items[held]
    )
    return [
        f"1. The decision, in process ({count} decisions over {n} held-out prompts; "
        f"the n-gram predictor, fitted on {SEMANTIC_TRAIN} prompts in {fit_seconds:.2f} s, routes "
        f"{right / n:.1%} of them as the ground truth would):",
        figures("untrained (the rule alone: baseline)", baseline),
        figures("n-gram predictor", fast, baseline),
        figures("prompt text from the request + n-gram", whole, baseline),
        figures(
            f"semantic, kNN over {SEMANTIC_TRAIN}×{EMBEDDING_DIMENSIONS} (embedding given)", near, baseline
        ),
        figures("  the same, with one BLAS thread", near_one, baseline),
        f"  {verdict(statistics.median(fast) <= GOAL_DECISION_MS)} n-gram decision p50 ≤ "
        f"{GOAL_DECISION_MS} ms: {statistics.median(fast):.4f} ms",
    ]


# --- 2. The embedding call ----------------------------------------------------------------------------------


def embedding_calls(count: int, procs: Processes, responder: str) -> list[str]:
    import httpx

    from serving.local import engine_env

    directory = engine_env.engine_dir()
    model = engine_env.model_path(directory, "all-minilm-l6-v2")
    if count <= 0 or not engine_env.engine_python(directory).exists() or model is None:
        return ["2. The embedding call: skipped (the engine is not prepared: python3 run.py engine)"]
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="bench-routing-engine-"))
    command = engine_env.engine_command(model, port=port, served_model_name="minilm", runner="pooling",
                                        max_model_len=256)  # fmt: skip
    engine = procs.start("minilm", command, env=engine_env.engine_environment(directory, tmp, cpus="1"))
    url = f"http://127.0.0.1:{port}"
    print("  starting a MiniLM vLLM engine for the embedding call ...", flush=True)
    procs.wait_ready(f"{url}/health", engine, "minilm", 300)
    prompts = [text for text, _ in corpus(count + 20, seed=5)]
    try:
        with httpx.Client(timeout=30) as client:
            for text in prompts[:20]:
                client.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": text})
            base = timed(
                lambda i: client.post(f"{responder}/v1/chat/completions", json={"model": MODEL}), count
            )
            calls = timed(
                lambda i: client.post(
                    f"{url}/v1/embeddings", json={"model": "minilm", "input": prompts[20 + i]}
                ),
                count,
            )
    finally:
        procs.stop(engine)
    return [
        f"2. The embedding call the semantic predictor waits for ({count} prompts, one at a time, the engine "
        "on one core):",
        figures("HTTP round trip to the stand-in engine (baseline)", base),
        figures("MiniLM vLLM engine, /v1/embeddings", calls, base),
    ]


# --- 3. Through the gateway ---------------------------------------------------------------------------------


def prepare_router(upstream: str) -> str:
    """The bench organisation (bench.gateway.prepare_gateway) with a second deployment on the same stand-in
    engine, and an active router over both with a trained n-gram version. Returns the key's secret."""
    import numpy as np

    secret = prepare_gateway(upstream)
    from django.db import connections

    from learning import predictors, router_service
    from learning.models import Router, RouterVersion
    from learning.storage import get_store
    from serving.models import Deployment

    template = Deployment.objects.get(name=MODEL)
    template.pk, template.name = None, LARGE
    template.save()
    organization = template.organization
    router = router_service.create_router(
        organization=organization, user=None, name=ROUTER, fallback=LARGE, quality_difference=0.1,
        mode="active", candidates=[{"deployment": MODEL, "cost_per_1k_tokens": 0.0001},
                                   {"deployment": LARGE, "cost_per_1k_tokens": 0.001}],
    )  # fmt: skip
    items = corpus(2000)
    ngram = predictors.NgramPredictor.fit(
        [MODEL, LARGE], [t for t, _ in items], np.array([y for _, y in items])
    )
    data, key = predictors.dump(ngram), f"routers/bench/{router.pk}/v1-ngram.npz"
    get_store().put(key, data)
    version = RouterVersion.objects.create(
        router=router,
        version=1,
        kind="ngram",
        candidates=[MODEL, LARGE],
        key=key,
        bytes=len(data),
        sha256="-",
    )
    Router.objects.filter(pk=router.pk).update(active_version=version)
    connections.close_all()
    return secret


def through_gateway(requests: int, procs: Processes, upstream: str) -> list[str]:
    secret = prepare_router(upstream)
    address = f"127.0.0.1:{free_port()}"
    environment = {**os.environ, "GATEWAY_ONLY": "True", "GATEWAY_CACHE_SECONDS": "5"}
    gateway = procs.start("gateway", [sys.executable, *GUNICORN.split(), "--bind", address], cwd=ROOT,
                          env=environment)  # fmt: skip
    procs.wait_ready(f"http://{address}/healthz", gateway, "gateway", 120)
    prompt = "Write an essay about the history of glaciers in the Alps, with sources and a short summary."
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    systems = {
        "engine directly (baseline)": Target(upstream, {"Content-Type": "application/json"}, None),
        "gateway, a deployment by name": Target(f"http://{address}", headers, None),
        "gateway, a router by name (n-gram)": Target(f"http://{address}", headers, None),
    }
    models = dict(zip(systems, (MODEL, MODEL, ROUTER), strict=True))
    latencies: dict[str, list[float]] = {name: [] for name in systems}
    errors: dict[str, int] = dict.fromkeys(systems, 0)
    # Many short rounds, so the three see the same load on a machine shared with other work.
    rounds = max(3, requests // 100)

    for _ in range(rounds):
        for name, target in systems.items():
            body = json.dumps({"model": models[name], "messages": [{"role": "user", "content": prompt}],
                               "max_tokens": 16}).encode()  # fmt: skip
            url = f"{target.url}/v1/chat/completions"
            cell = asyncio.run(drive(url, target.headers, body, 1, requests // rounds, 120, False, dict))
            latencies[name] += cell.latencies
            errors[name] += sum(cell.errors.values())
    procs.stop(gateway)
    names = list(systems)
    direct, deployment, routed = (latencies[n] for n in names)
    added = statistics.median(routed) - statistics.median(deployment)
    added_p90 = percentile(routed, 0.9) - percentile(deployment, 0.9)
    lines = [
        f"3. Through the gateway, one client at a time, {rounds} interleaved rounds, {requests} calls each "
        f"(errors: {', '.join(f'{n} {e}' for n, e in errors.items())}):",
        figures(names[0], direct),
        figures(names[1], deployment, direct),
        figures(names[2], routed, direct),
        f"  added by routing (router − deployment): p50 {added:+.3f} ms, p90 {added_p90:+.3f} ms; "
        f"router ÷ deployment p50 ×{statistics.median(routed) / statistics.median(deployment):.3f}",
        f"  the cloud router's ≈ {CLOUD_P90_MS:.0f} ms at P90 is "
        f"{CLOUD_P90_MS / max(added_p90, 0.001):,.0f}× the P90 added here"
        if added_p90 > 0
        else f"  the P90 added here is within noise (≤ 0) against the cloud router's ≈ {CLOUD_P90_MS:.0f} ms",
        f"  {verdict(added <= GOAL_ADDED_MS)} p50 added by routing ≤ {GOAL_ADDED_MS} ms: {added:.3f} ms",
    ]
    return lines


# --- 4. Training --------------------------------------------------------------------------------------------


def training_seconds(count: int, label: str) -> float:
    """Seconds of one router training run on `count` prompts of an evaluation of two candidates."""
    from django.utils import timezone

    from learning import datasets, router_service, router_training
    from learning.choices import DatasetSource, EvaluationStatus
    from learning.models import Evaluation, EvaluationItem, TrainingStatus
    from learning.storage import get_store
    from marketplace.accounts.models import Organization

    organization = Organization.objects.get(slug="bench")
    items = corpus(count, seed=11 + count)
    dataset = datasets.save(
        get_store(), organization_id=organization.pk, name=f"routing-{label}", source=DatasetSource.UPLOAD,
        records=[{"messages": [{"role": "user", "content": t}], "reference": "ok"} for t, _ in items],
        heldout_fraction=0.0, seed=0,
    )  # fmt: skip
    start = timezone.now() - datetime.timedelta(hours=1)
    evaluation = Evaluation.objects.create(
        organization=organization, name=f"routing-{label}", dataset=dataset, part="all",
        deployments=[MODEL, LARGE], scorers=[{"kind": "exact_match", "name": "exact_match"}],
        prices={MODEL: {"hourly_usd": "1", "replicas": 1}, LARGE: {"hourly_usd": "10", "replicas": 1}},
        total_items=2 * count, status=EvaluationStatus.SUCCEEDED, finished_at=timezone.now(),
    )  # fmt: skip
    EvaluationItem.objects.bulk_create(
        [
            EvaluationItem(
                evaluation=evaluation, deployment=name, item_id=str(index + 1), started_at=start,
                latency_ms=100, status_code=200, answer="ok", prompt_tokens=20, completion_tokens=10,
                scores={"exact_match": target[column]},
            )
            for index, (_, target) in enumerate(items)
            for column, name in enumerate((MODEL, LARGE))
        ],
        batch_size=5000,
    )  # fmt: skip
    router = router_service.create_router(
        organization=organization, user=None, name=f"train-{label}", fallback=LARGE,
        candidates=[{"deployment": MODEL, "cost_per_1k_tokens": 0.0001},
                    {"deployment": LARGE, "cost_per_1k_tokens": 0.001}],
    )  # fmt: skip
    with mock.patch("learning.tasks.train_router.delay"):  # this process runs it
        training = router_training.start_training(
            router=router, evaluation=evaluation, scorer="exact_match", user=None
        )
    clock = time.perf_counter()
    status = router_training.run(training.pk)
    seconds = time.perf_counter() - clock
    training.refresh_from_db()
    if status != TrainingStatus.SUCCEEDED:
        raise RuntimeError(f"the training ended {status}: {training.status_message}")
    print(f"  {label}: {training.status_message}", flush=True)
    return seconds


def training(count: int) -> list[str]:
    small = max(count // 10, 100)
    base = training_seconds(small, f"{small} prompts")
    full = training_seconds(count, f"{count} prompts")
    return [
        "4. Training (the task's run: targets from PostgreSQL, n-gram fit, held-out report with bootstrap "
        "intervals, version stored):",
        f"  {small:>6} prompts (baseline)   {base:8.2f} s",
        f"  {count:>6} prompts              {full:8.2f} s   ×{full / base:.2f} the baseline for "
        f"×{count / small:.0f} the prompts",
    ]


def run(decisions_count: int, requests: int, train_items: int, embedding_calls_count: int) -> None:
    from urllib.parse import urlparse, urlunparse

    # The gateway's keys in a Redis database of their own (as bench/gateway.py), removed afterwards.
    os.environ["REDIS_URL"] = urlunparse(
        urlparse(os.environ["REDIS_URL"])._replace(path=f"/{BENCH_REDIS_DB}")
    )
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="bench-routing-")
    os.environ["OBJECT_STORE_BUCKET"] = ""
    procs = Processes(Path(os.environ["DATA_DIR"]))
    print(f"{os.cpu_count()} cores shared by everything this benchmark starts.\n", flush=True)
    report: list[str] = []
    try:
        report += decisions(decisions_count)
        print("\n".join(report), flush=True)
        port = free_port()
        responder = procs.start(
            "responder", [sys.executable, str(ROOT / "bench" / "responder.py"), str(port)]
        )
        upstream = f"http://127.0.0.1:{port}"
        procs.wait_ready(f"{upstream}/health", responder, "responder", 10)
        for part in (
            lambda: embedding_calls(embedding_calls_count, procs, upstream),
            lambda: through_gateway(requests, procs, upstream),
            lambda: training(train_items),
        ):
            lines = part()
            report += ["", *lines]
            print("", *lines, sep="\n", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", flush=True)
    finally:
        procs.stop_all()
        with contextlib.suppress(Exception):
            import redis

            store = redis.Redis.from_url(os.environ["REDIS_URL"])
            for key in list(store.scan_iter("gw:*")):
                store.delete(key)
    print("\nsummary", *report, sep="\n")


def cli(decisions: int, requests: int, train_items: int, embedding_calls: int) -> None:
    run(decisions, requests, train_items, embedding_calls)


if __name__ == "__main__":
    main(__doc__ or "", cli, decisions=20000, requests=3000, train_items=10000, embedding_calls=300)
