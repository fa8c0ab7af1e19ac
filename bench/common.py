"""What every benchmark shares: its own database on the configured (or embedded) servers."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent


def bench_database(url: str) -> str:
    """A fresh `<name>_bench` database next to the one `url` names; its URL."""
    import psycopg2

    parsed = urlparse(url)
    name = f"{parsed.path.lstrip('/') or 'postgres'}_bench"
    connection = psycopg2.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return urlunparse(parsed._replace(path=f"/{name}"))


def run_with_services(run: Callable[[], None]) -> None:
    """Run a benchmark on DATABASE_URL/REDIS_URL when set, else on embedded servers, in a bench database."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    from marketplace.launcher import backing_services

    with backing_services(ROOT / ".data" / "bench", persist=False) as urls:
        os.environ.update(urls)
        os.environ["DATABASE_URL"] = bench_database(os.environ["DATABASE_URL"])
        run()


def main(doc: str, run: Callable[..., None], **options: int) -> None:
    """The command line every benchmark shares: `--name N` for each of `options` (with its default),
    then `run(**values)` on the configured or embedded servers."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in options.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    values = vars(parser.parse_args())
    run_with_services(lambda: run(**values))
