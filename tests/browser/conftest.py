"""Browser tests: the whole platform started by the README's first command's launcher (web under
gunicorn with uvicorn workers, a Celery worker and beat, and on the local backend the engine supervisor
with real vLLM engines), each on a database of its own, driven through Debian's Chromium by
Playwright. Screenshots of the main pages are saved under SCREENSHOT_DIR (default: a folder of the
test run)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest
from django.conf import settings

from serving.local import engine_env

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
ADMIN_PASSWORD = "browser-admin-password"
PEOPLE_PASSWORD = "correct horse battery"

pytestmark = pytest.mark.slow


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Platform:
    url: str
    environment: dict[str, str]

    def manage(self, *args: str) -> str:
        """A management command against this platform's database."""
        done = subprocess.run(
            [sys.executable, "-m", "django", *args], env=self.environment, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def add_person(self, username: str, organization: str) -> None:
        """A person who owns a new organisation (what a platform admin sets up for a new team)."""
        self.manage(
            "shell", "-c",
            "from django.contrib.auth.models import User\n"
            "from marketplace.accounts.services import create_organization\n"
            f"user = User.objects.create_user({username!r}, password={PEOPLE_PASSWORD!r})\n"
            f"create_organization(slug={organization!r}, name={organization.title()!r}, owner=user)\n",
        )  # fmt: skip


def _database_url(name: str) -> str:
    """DATABASE_URL with another database name (same server, user and options)."""
    return urlunparse(urlparse(os.environ["DATABASE_URL"])._replace(path=f"/{name}"))


def _admin_connection() -> Any:
    db = settings.DATABASES["default"]
    connection = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"], port=db["PORT"] or None
    )
    connection.autocommit = True
    return connection


@contextlib.contextmanager
def running_platform(tmp_path: Path, **variables: str) -> Iterator[Platform]:
    """The platform as `python3 run.py` starts it, on a new database and Redis database; stopped with
    SIGINT (Ctrl-C) afterwards and its database dropped."""
    name = f"browser_{uuid.uuid4().hex[:12]}"
    admin = _admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    redis_base = os.environ["REDIS_URL"].rsplit("/", 1)[0]
    environment = {
        **os.environ,
        "DATABASE_URL": _database_url(name),
        "REDIS_URL": f"{redis_base}/{variables.pop('REDIS_DB', '10')}",
        "DATA_DIR": str(tmp_path / "data"),
        "PORT": str(port),
        "SECRET_KEY": uuid.uuid4().hex * 2,  # 64 characters: a weak key stops the platform with DEBUG off
        "DEMO_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "WEB_CONCURRENCY": "1",
        "RECONCILE_INTERVAL_SECONDS": "2",
        "USAGE_FLUSH_INTERVAL_SECONDS": "2",
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        **variables,
    }
    import redis

    redis.Redis.from_url(environment["REDIS_URL"]).flushdb()
    log = (tmp_path / "platform.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "marketplace.launcher", "up"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "platform.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "platform.log").read_text()[-4000:]
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=2):
                break
            time.sleep(0.5)
        yield Platform(url=url, environment=environment)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def engine_prepared() -> bool:
    directory = engine_env.engine_dir()
    return (
        engine_env.engine_python(directory).exists()
        and engine_env.model_path(directory, "smollm2-135m-instruct") is not None
    )


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: Any) -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must install Debian's chromium first (see .ci/run)")
        pytest.skip("Chromium is not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page_for(browser: Any, screenshots: Path) -> Callable[..., Any]:
    def make(platform: Platform, username: str, password: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=platform.url)
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.goto("/sign-in/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{platform.url}/")
        return page

    return make


def shoot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
