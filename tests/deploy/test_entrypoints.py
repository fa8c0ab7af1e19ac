"""The image's entry points (deploy/entrypoint.sh), each run for real outside a container, as the chart
runs them, against this machine's PostgreSQL and Redis: migrate on a fresh database (twice, as every
upgrade does), web and gateway answering on a free port (the gateway serving the invoke API only), worker
and beat stopping cleanly on SIGTERM, and the Dockerfile's static-files step.

Each run gets its own database and an empty Redis database number, so the worker and beat never touch
another test run's queues."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import redis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
START_TIMEOUT = 30
STOP_TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    name = f"entrypoints_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(os.environ["DATABASE_URL"])
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield with_path(os.environ["DATABASE_URL"], f"/{name}")
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """An empty database number of the test Redis (emptied afterwards): Celery's queues of this run only."""
    base = os.environ["REDIS_URL"]
    for number in range(15, 0, -1):
        url = with_path(base, f"/{number}")
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0:
                break
        finally:
            client.close()
    else:
        pytest.fail(f"no empty Redis database number at {base}")
    yield url
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="module")
def environment(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """What a pod's container has: the settings in the environment and the image's PATH (here, the venv's)."""
    scratch = tmp_path_factory.mktemp("entrypoints")
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(scratch),
        "LANG": "C.UTF-8",
        "TMPDIR": str(scratch),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        # Strong enough for DEBUG off (the entry points refuse a weak one; see the test below).
        "SECRET_KEY": "entrypoint-tests-" + "kV9-3qLr_8ZtYw2mXc7NbH4uJ6sD1fGpQe5aT0yRi_UoPlKjMn",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
    }


def http_environment(environment: dict[str, str], scratch: Path) -> dict[str, str]:
    """web's and gateway's: a free port, and several gunicorn workers sharing metrics files, as in the
    chart (the entry point creates the folder and clears what an earlier run left)."""
    (scratch / "prometheus").mkdir()
    (scratch / "prometheus" / "counter_1.db").write_bytes(b"left by an earlier run")
    return {
        **environment,
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(scratch / "prometheus"),
    }


def run_entrypoint(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=environment, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.fixture(scope="module")
def migrated(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`entrypoint migrate` on the fresh database: what the chart's pre-install hook runs."""
    return run_entrypoint(environment, "migrate")


@contextlib.contextmanager
def running(environment: dict[str, str], log_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """An entry point as a background process (its own process group), killed if a test leaves it."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *args],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)


def stop(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """SIGTERM, as the kubelet sends it; the exit status once the process has stopped by itself."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{log_path.read_text()[-3000:]}")


def wait_for_log(process: subprocess.Popen[bytes], log_path: Path, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while text not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{text!r} never appeared:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def get(url: str, token: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def wait_until_serving(process: subprocess.Popen[bytes], log_path: Path, base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{base}/healthz never answered:\n{log_path.read_text()[-3000:]}")
        try:
            if get(f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)


def create_api_key(environment: dict[str, str]) -> str:
    """An organisation and an API key in the migrated database, made the way a person would, in Django."""
    script = (
        "from django.contrib.auth import get_user_model\n"
        "from marketplace.accounts import services\n"
        "owner = get_user_model().objects.create_user(username='entrypoints')\n"
        "org = services.create_organization(slug='entrypoints', name='Entrypoints', owner=owner)\n"
        "_, secret = services.create_api_key(organization=org, name='t', created_by=None, expires_at=None)\n"
        "print(secret)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", script],
        env=environment, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# migrate


def test_migrate_migrates_a_fresh_database_and_loads_the_catalog(
    migrated: subprocess.CompletedProcess[str],
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    assert "Applying serving." in migrated.stdout
    assert re.search(r"Loaded \d{3,} model cards", migrated.stdout), migrated.stdout


def test_migrate_again_changes_nothing_and_exits_0(
    environment: dict[str, str], migrated: subprocess.CompletedProcess[str]
) -> None:
    again = run_entrypoint(environment, "migrate")  # every `helm upgrade` runs the hook again
    assert again.returncode == 0, again.stderr
    assert "No migrations to apply." in again.stdout


# web and gateway


def test_web_serves_health_and_the_whole_platform_then_stops_on_sigterm(
    environment: dict[str, str], migrated: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    log_path = tmp_path / "web.log"
    web_environment = http_environment(environment, tmp_path)
    with running(web_environment, log_path, "web") as process:
        base = f"http://127.0.0.1:{web_environment['PORT']}"
        wait_until_serving(process, log_path, base)
        assert get(f"{base}/healthz") == (200, {"status": "ok"})
        status, page = get(f"{base}/api/models/?page_size=1")
        assert status == 200 and page["count"] >= 100
        assert get(f"{base}/v1/models")[0] == 401  # the invoke API is here too, behind API keys
        assert stop(process, log_path) == 0


def test_gateway_serves_the_invoke_api_only(
    environment: dict[str, str], migrated: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    token = create_api_key(environment)
    log_path = tmp_path / "gateway.log"
    gateway_environment = http_environment(environment, tmp_path)
    with running(gateway_environment, log_path, "gateway") as process:
        base = f"http://127.0.0.1:{gateway_environment['PORT']}"
        wait_until_serving(process, log_path, base)
        assert get(f"{base}/v1/models", token) == (200, {"object": "list", "data": []})
        assert get(f"{base}/v1/models")[0] == 401
        assert get(f"{base}/api/models/")[0] == 404
        assert get(f"{base}/admin/")[0] == 404
        status, metrics = get(f"{base}/metrics")
        assert status == 200 and "marketplace_gateway_" in metrics
        assert not (tmp_path / "prometheus" / "counter_1.db").exists()  # an earlier run's file is gone
        assert stop(process, log_path) == 0


# worker and beat


def test_worker_starts_with_the_configured_concurrency_and_stops_cleanly_on_sigterm(
    environment: dict[str, str], migrated: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    log_path = tmp_path / "worker.log"
    alive = tmp_path / "tmp"
    alive.mkdir()
    worker_environment = {**environment, "WORKER_CONCURRENCY": "1", "TMPDIR": str(alive)}
    assert run_entrypoint(worker_environment, "alive", "worker").returncode == 1  # not started yet
    with running(worker_environment, log_path, "worker") as process:
        wait_for_log(process, log_path, " ready.")
        assert "concurrency: 1 (prefork)" in log_path.read_text()
        assert run_entrypoint(worker_environment, "alive", "worker").returncode == 0
        assert stop(process, log_path) == 0
    assert "Warm shutdown" in log_path.read_text()
    assert run_entrypoint(worker_environment, "alive", "worker").returncode == 1  # stopped: gone


def test_beat_schedules_and_stops_cleanly_on_sigterm(
    environment: dict[str, str], migrated: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    log_path = tmp_path / "beat.log"
    schedule_dir = tmp_path / "tmp"
    schedule_dir.mkdir()
    # TMPDIR is where beat keeps its schedule: /tmp in the image, an emptyDir under the chart.
    beat_environment = {**environment, "TMPDIR": str(schedule_dir)}
    with running(beat_environment, log_path, "beat") as process:
        wait_for_log(process, log_path, "beat: Starting...")
        deadline = time.monotonic() + 20
        while run_entrypoint(beat_environment, "alive", "beat").returncode != 0:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        assert stop(process, log_path) == 0
    assert list(schedule_dir.glob("celerybeat-schedule*")), log_path.read_text()


def test_alive_fails_for_a_stale_file_and_refuses_other_processes(
    environment: dict[str, str], tmp_path: Path
) -> None:
    probe_environment = {**environment, "TMPDIR": str(tmp_path)}
    stale = tmp_path / "marketplace-worker.alive"
    stale.touch()
    os.utime(stale, (time.time() - 120, time.time() - 120))
    result = run_entrypoint(probe_environment, "alive", "worker")
    assert result.returncode == 1 and "ago" in result.stderr
    stale.touch()
    assert run_entrypoint(probe_environment, "alive", "worker").returncode == 0
    assert run_entrypoint(probe_environment, "alive", "web").returncode == 64


# The script and the image


@pytest.mark.parametrize("process", ["web", "gateway", "worker", "beat", "migrate"])
def test_a_weak_secret_key_stops_every_entry_point_before_it_serves(
    environment: dict[str, str], process: str
) -> None:
    result = run_entrypoint({**environment, "SECRET_KEY": "change-me"}, process)
    assert result.returncode != 0
    assert "SECRET_KEY is too weak to run with DEBUG off" in result.stderr


@pytest.mark.parametrize("args", [(), ("scheduler",)], ids=["none", "unknown"])
def test_an_unknown_entry_point_is_refused_with_the_usage(
    environment: dict[str, str], args: tuple[str, ...]
) -> None:
    result = run_entrypoint(environment, *args)
    assert result.returncode == 64
    assert "usage: entrypoint web|gateway|worker|beat|migrate" in result.stderr


def test_static_files_collect_as_the_dockerfile_does(tmp_path: Path) -> None:
    """The Dockerfile's collectstatic step, its variables as written there, run against the source tree."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (step,) = re.findall(r"^RUN (SECRET_KEY=.*collectstatic --noinput)$", dockerfile, flags=re.MULTILINE)
    *assignments, _python, module, django, command, option = shlex.split(step)
    assert [module, django, command, option] == ["-m", "django", "collectstatic", "--noinput"]
    variables = dict(assignment.split("=", 1) for assignment in assignments)
    assert variables["STATIC_ROOT"] == "/app/static"
    variables["STATIC_ROOT"] = str(tmp_path / "static")
    result = subprocess.run(
        [sys.executable, "-m", "django", "collectstatic", "--noinput"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **variables},
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static" / "admin" / "css" / "base.css").exists()


def test_dockerfile_builds_one_pinned_non_root_image_around_the_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert base.startswith("python:3.11") and base.endswith("-slim")  # a fixed tag, not `latest`
    assert re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE) == [
        "${PYTHON_IMAGE}",
        "${ENGINE_IMAGE}",  # the trainer, built only with --target trainer
        "${PYTHON_IMAGE}",  # the last stage: what `docker build .` makes
    ]
    assert "USER 10001:10001" in dockerfile  # numeric, so runAsNonRoot can check it
    assert "COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/entrypoint" in dockerfile
    assert 'ENTRYPOINT ["entrypoint"]' in dockerfile
    assert "DJANGO_SETTINGS_MODULE=marketplace.settings" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!deploy/entrypoint.sh" in ignored and "*" in ignored


def test_the_trainer_stage_runs_the_training_jobs_program_with_the_cpu_trainers_libraries() -> None:
    """The trainer image (TRAINING_IMAGE) is the pinned engine image with the libraries the CPU trainer is
    checked with, and the files the Job's program imports; its entry point is the Job's command."""
    from learning.training import kube_job
    from serving.local.engine_env import ENGINE_PACKAGES
    from serving.spec import ENGINE_IMAGE

    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (engine,) = re.findall(r"^ARG ENGINE_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert engine == ENGINE_IMAGE
    stage = dockerfile.split("FROM ${ENGINE_IMAGE} AS trainer", 1)[1].split("\nFROM ", 1)[0]
    (install,) = re.findall(r"^RUN python3 -m pip install (.+)$", stage, flags=re.MULTILINE)
    pinned = {package for package in ENGINE_PACKAGES if package.split("==")[0] in ("peft", "trl", "datasets")}
    assert set(install.split()) == pinned
    copied = " ".join(re.findall(r"^COPY (.+)$", stage, flags=re.MULTILINE))
    for module in ("learning/__init__.py", "learning/training/__init__.py", "learning/training/job.py",
                   "learning/training/cpu_trainer.py", "learning/training/cpu_generate.py"):  # fmt: skip
        assert module in copied
    job = (ROOT / "learning" / "training" / "job.py").read_text()
    assert set(re.findall(r"^from learning\.training import (.+)$", job, flags=re.MULTILINE)) == {
        "cpu_generate, cpu_trainer"
    }
    assert f"ENTRYPOINT {json.dumps(kube_job.COMMAND)}" in stage


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    """A package missing from the image installs nothing and fails only at import, in production."""
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (pattern.rstrip("*") for pattern in patterns["include"]):
        assert f"COPY {package}/ {package}/" in dockerfile, package
        assert f"!{package}/" in ignored, package
