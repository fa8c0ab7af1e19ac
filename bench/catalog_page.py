"""Catalog page benchmark: server time of the web UI's catalog page with 10,000 generated cards.

    .venv/bin/python bench/catalog_page.py [--cards 10000] [--requests 200]

Same set-up as bench/catalog.py (a recreated `<name>_bench` database on DATABASE_URL, else embedded
servers). Each request goes through the whole Django stack in process (sessions, authentication,
filters, templates, PostgreSQL). Prints p50 and p99 per scenario, for an anonymous visitor and a
signed-in member, whole page and htmx partial, queries per request, and each p50 as a ratio of the
plain anonymous page's p50 measured in the same run (the baseline). Goal: p50 ≤ 50 ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.catalog import generate_cards, percentile  # noqa: E402 (after the path is set)
from bench.common import main  # noqa: E402

SCENARIOS = [
    ("catalog page (baseline)", {}),
    ("search 'llama instruct'", {"q": "llama instruct"}),
    ("task=chat & fits=aws-g5-xlarge", {"task": "chat", "fits": "aws-g5-xlarge"}),
    ("language=fr & size 3-15B", {"language": "fr", "size": "medium"}),
    ("domain=medical, longest context", {"domain": "medical", "sort": "-context_length"}),
    ("page 100, largest first", {"sort": "-parameters", "page": "100"}),
]


def run(cards: int, requests: int) -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from marketplace.accounts.services import create_organization
    from marketplace.catalog.models import ModelCard

    setup_test_environment()
    call_command("migrate", verbosity=0)
    call_command("load_catalog", verbosity=0)
    generate_cards(cards)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"{ModelCard.objects.count()} cards in PostgreSQL")
    person = User.objects.create_user("bench")
    create_organization(slug="bench", name="Bench", owner=person)
    visitors = {"anonymous": Client(), "member": Client()}
    visitors["member"].force_login(person)

    rows = []
    baseline = None
    for who, client in visitors.items():
        for partial in (False, True):
            headers = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "results"} if partial else {}
            for label, params in SCENARIOS:
                for _ in range(10):  # warm caches and connections
                    client.get("/", params, **headers)
                timings, queries = [], set()
                for _ in range(requests):
                    with CaptureQueriesContext(connection) as captured:
                        begin = time.perf_counter()
                        response = client.get("/", params, **headers)
                        timings.append((time.perf_counter() - begin) * 1000)
                    assert response.status_code == 200, response.content[:200]
                    queries.add(len(captured))
                p50 = statistics.median(timings)
                baseline = baseline or p50
                rows.append((who, "htmx results" if partial else "whole page", label, p50,
                             percentile(timings, 0.99), sorted(queries), p50 / baseline))  # fmt: skip

    print(f"\n{requests} requests per row; ms of server time (in-process Django stack + PostgreSQL)\n")
    print(
        f"{'visitor':<9} {'response':<12} {'scenario':<34} {'p50':>7} {'p99':>7} {'queries':>7} "
        f"{'p50/base':>8}"
    )
    for who, kind, label, p50, p99, queries, ratio in rows:
        shown = ",".join(str(q) for q in queries)
        print(f"{who:<9} {kind:<12} {label:<34} {p50:>7.2f} {p99:>7.2f} {shown:>7} {ratio:>8.2f}")
    print(f"\nworst p50: {max(row[3] for row in rows):.2f} ms (goal ≤ 50 ms)")


if __name__ == "__main__":
    main(__doc__, run, cards=10_000, requests=200)
