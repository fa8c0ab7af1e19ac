"""Catalog API benchmark: server time and SQL queries per request with 10,000 generated cards.

    .venv/bin/python bench/catalog.py [--cards 10000] [--requests 200]

Uses DATABASE_URL/REDIS_URL when set (in a separate `<name>_bench` database that it recreates),
else embedded servers. Each request goes through the whole Django stack in process (middleware, DRF,
filters, serializers, PostgreSQL), so the time is server time without the network. Prints p50 and p99
per scenario and page size with p99/p50 (the tail; goal ≤ 2), the same for the CPU time of this process
(which a busy machine's scheduling does not stretch; PostgreSQL's own time is not in it), queries per
request, and each p50 as a ratio of the plain list's p50 measured in the same run (the baseline).

The tail was garbage collection: DRF's view, request and response refer to each other, so each page of
cards was freed by the cyclic collector instead of by reference counting, in full collections every few
dozen requests at 100 cards a page (p99 ≈ 10 × p50). The catalog's views now let go of the page once the
body is rendered (marketplace/catalog/api/views.py).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import main  # noqa: E402 (after the path is set)

SCENARIOS = [
    ("list (baseline)", {}),
    ("search 'llama instruct'", {"q": "llama instruct"}),
    ("search 'med'", {"q": "med"}),
    ("task=chat & fits=aws-g5-xlarge", {"task": "chat", "fits": "aws-g5-xlarge"}),
    ("language=fr & parameters 1-10B", {"language": "fr", "parameters_min": "1", "parameters_max": "10"}),
    ("domain=medical, by context desc", {"domain": "medical", "ordering": "-context_length"}),
    ("context >= 32k, by parameters", {"context_length_min": "32768", "ordering": "parameters"}),
]
WORDS = ["chat", "instruct", "coder", "vision", "med", "fin", "legal", "sci", "base", "tiny", "mega", "multi"]


def generate_cards(count: int) -> None:
    from marketplace.catalog.models import License, ModelCard, Provider

    rng = random.Random(7)
    providers = list(Provider.objects.all())
    licenses = list(License.objects.all())
    tasks = ["chat", "text-generation", "code-generation", "embedding", "reranking", "vision-language"]
    languages = ["en", "fr", "de", "es", "zh", "ja", "ar", "hi", "pt", "it"]
    domains = ["general", "code", "finance", "legal", "medical", "science", "math"]
    cards = []
    for number in range(count):
        name = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{number}"
        provider, license_ = rng.choice(providers), rng.choice(licenses)
        parameters = int(10 ** rng.uniform(7.5, 11.6))
        card = ModelCard(
            slug=f"gen-{name}", name=name.replace("-", " ").title(), provider=provider, family="Generated",
            summary=f"A generated card for benchmarking: {rng.choice(WORDS)} {rng.choice(WORDS)}.",
            huggingface_repo=f"{provider.slug}/{name}", tasks=rng.sample(tasks, 2), modalities_in=["text"],
            modalities_out=["text"], languages=rng.sample(languages, rng.randint(1, 5)),
            domains=rng.sample(domains, 1), tags=rng.sample(WORDS, 3), license=license_,
            license_name=license_.name, parameters=parameters,
            context_length=rng.choice([2048, 4096, 8192, 32768, 131072]), dtype="bfloat16",
            gpu_memory_gb=max(1, int(parameters * 2.4 / 1e9) + 2),
            min_gpu_memory_gb=max(1, int(parameters * 2.2 / 1e9) + 2),
        )  # fmt: skip
        card.search_text = card.compose_search_text()
        cards.append(card)
    ModelCard.objects.bulk_create(cards, batch_size=2000)
    ModelCard.objects.refresh_search_vectors()  # bulk_create skips save(), which keeps them


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(cards: int, requests: int) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from marketplace.catalog.models import ModelCard

    setup_test_environment()
    call_command("migrate", verbosity=0)
    call_command("load_catalog", verbosity=0)
    started = time.perf_counter()
    generate_cards(cards)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    elapsed = time.perf_counter() - started
    print(f"{ModelCard.objects.count()} cards in PostgreSQL (generated in {elapsed:.1f}s)")
    import marketplace.asgi  # noqa: F401 (start as the web process does: views loaded, then gc.freeze())

    client = Client()
    rows = []
    baseline: dict[int, float] = {}
    for label, params in SCENARIOS:
        for page_size in (20, 100):
            query = {**params, "page_size": page_size}
            # Warm caches and connections, counting queries here: capturing them in the timed requests
            # would time Django's query log too (a copy of up to 9,000 entries per request).
            queries = set()
            for _ in range(10):
                with CaptureQueriesContext(connection) as captured:
                    client.get("/api/models/", query)
                queries.add(len(captured))
            timings, cpu, count = [], [], 0
            for _ in range(requests):
                begin, begin_cpu = time.perf_counter(), time.thread_time()
                response = client.get("/api/models/", query)
                timings.append((time.perf_counter() - begin) * 1000)
                cpu.append((time.thread_time() - begin_cpu) * 1000)
                assert response.status_code == 200, response.content[:200]
                count = response.json()["count"]
            p50, cpu50 = statistics.median(timings), statistics.median(cpu)
            baseline.setdefault(page_size, p50)
            rows.append(
                {
                    "label": label, "page": page_size, "matches": count, "p50": p50,
                    "p99": percentile(timings, 0.99), "tail": percentile(timings, 0.99) / p50,
                    "cpu_tail": percentile(cpu, 0.99) / cpu50, "queries": sorted(queries),
                    "ratio": p50 / baseline[page_size],
                }
            )  # fmt: skip

    print(f"\n{requests} requests per row; ms of server time (in-process Django stack + PostgreSQL)\n")
    print(
        f"{'scenario':<34} {'page':>4} {'matches':>7} {'p50':>7} {'p99':>7} {'p99/p50':>7} "
        f"{'cpu p99/p50':>11} {'queries':>7} {'p50/base':>8}"
    )
    for row in rows:
        shown = ",".join(str(q) for q in row["queries"])
        print(
            f"{row['label']:<34} {row['page']:>4} {row['matches']:>7} {row['p50']:>7.2f} {row['p99']:>7.2f} "
            f"{row['tail']:>7.2f} {row['cpu_tail']:>11.2f} {shown:>7} {row['ratio']:>8.2f}"
        )
    print(f"\nworst p50: {max(row['p50'] for row in rows):.2f} ms (goal ≤ 15 ms)")
    for page_size in (20, 100):
        tails = [row["tail"] for row in rows if row["page"] == page_size]
        print(f"worst p99/p50 at page size {page_size}: {max(tails):.2f} (goal ≤ 2)")
    by_label: dict[str, list[list[int]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row["queries"])
    grows = [label for label, counts in by_label.items() if counts[0] != counts[-1]]
    print("queries per request grow with page size:", ", ".join(grows) if grows else "no")


if __name__ == "__main__":
    main(__doc__, run, cards=10_000, requests=200)
