"""Usage records survive Redis: what the gateway cannot hand to Redis waits in a local spool and is pushed
when Redis answers again (or by the next process, when its own has stopped), a persisted Redis keeps
what it holds across a kill, the worker says loudly when Redis would not, and whatever is still lost is
counted. Every test here that stops or kills Redis runs its own redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio
from aiohttp import web
from django.utils import timezone
from prometheus_client import REGISTRY

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog.models import ModelCard
from marketplace.launcher import _embedded_valkey
from marketplace.subscriptions.services import subscribe
from serving.gateway import metering
from serving.gateway.asgi import GatewayFront
from serving.gateway.metering import QUEUE_KEY, Spool, UsageQueue, check_persistence
from serving.models import UsageRecord
from tests.conftest import database_url_for_processes, make_user
from tests.serving.gateway.conftest import CHAT, ROOT, deploy, free_port, stop_group, wait_healthy


class RedisServer:
    """A redis-server of the test's own, which the test may kill and start again on the same port and
    data folder."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.folder, self.options = folder, options
        self.port = free_port()  # a fixed port would be shared by the test processes running side by side
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--daemonize", "no", "--logfile", str(self.folder / "redis.log"), *self.options],
            start_new_session=True,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.process.poll() is None, f"redis-server exited: see {self.folder / 'redis.log'}"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--save", "").start()
    yield server
    server.kill()


def record(organization_id: int = 1) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4().hex, "organization_id": organization_id, "api_key_id": None,
        "deployment_id": None, "model": "chat", "route": "chat.completions", "prompt_tokens": 3,
        "completion_tokens": 5, "latency_ms": 12, "time_to_first_token_ms": None, "status_code": 200,
        "streamed": False, "created_at": timezone.now().isoformat(),
    }  # fmt: skip


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def queued(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(raw) for raw in client.lrange(QUEUE_KEY, 0, -1)]
    finally:
        client.close()


def test_records_redis_cannot_take_are_spooled_then_pushed_when_it_returns(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    records = [record() for _ in range(3)]
    spooled_before = counter("marketplace_gateway_usage_records_spooled_total")

    async def scenario() -> None:
        queue = UsageQueue(redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=1), spool)
        redis_server.kill()
        for one in records:
            await queue.push(one)
        assert spool.path is not None and len(spool.path.read_bytes().splitlines()) == 3
        await asyncio.get_running_loop().run_in_executor(None, redis_server.start)
        deadline = time.monotonic() + 10
        while spool.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert queued(redis_server.url) == records
    assert spool.path is not None and spool.path.read_bytes() == b""
    assert counter("marketplace_gateway_usage_records_spooled_total") - spooled_before == 3


def test_a_spool_left_by_a_stopped_process_is_pushed_when_a_gateway_starts(
    redis_server: RedisServer, tmp_path: Path, settings: Any
) -> None:
    settings.REDIS_URL, settings.GATEWAY_SPOOL_DIR = redis_server.url, str(tmp_path / "spool")
    left = [record() for _ in range(2)]
    (tmp_path / "spool").mkdir()
    orphan = tmp_path / "spool" / "usage-999999-deadbeef.jsonl"
    orphan.write_bytes(b"".join(json.dumps(one).encode() + b"\n" for one in left))

    async def scenario() -> None:
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            if len(inbox) == 1:  # serving: give the background replay a moment before shutting down
                deadline = time.monotonic() + 10
                while orphan.exists() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            pass

        await GatewayFront(None)({"type": "lifespan"}, receive, send)

    asyncio.run(scenario())
    assert not orphan.exists()
    assert queued(redis_server.url) == left


def test_a_spool_its_living_process_still_holds_is_left_to_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "spool").mkdir()
    busy = tmp_path / "spool" / "usage-1-cafe.jsonl"
    busy.write_bytes(json.dumps(record()).encode() + b"\n")
    with busy.open("ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as its process holds it while it lives

        async def scenario() -> int:
            connection = redis.asyncio.Redis.from_url(redis_server.url)
            return await Spool(tmp_path / "spool").replay(connection)

        assert asyncio.run(scenario()) == 0
    assert busy.exists() and queued(redis_server.url) == []


def test_a_record_neither_redis_nor_the_disk_takes_is_counted_as_lost(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    spool = Spool(tmp_path / "not-a-folder" / "spool")
    lost_before = counter("marketplace_gateway_usage_records_lost_total")

    async def scenario() -> None:
        nobody = f"redis://127.0.0.1:{free_port()}/0"
        queue = UsageQueue(redis.asyncio.Redis.from_url(nobody, socket_timeout=1), spool)
        await queue.push(record())
        await metering.settle_spools(timeout=0.1)

    asyncio.run(scenario())
    assert counter("marketplace_gateway_usage_records_lost_total") - lost_before == 1


@pytest.mark.parametrize(
    ("options", "warning"),
    [
        (("--appendonly", "yes", "--save", ""), None),
        (("--appendonly", "no", "--save", "60 1"), "persists only snapshots"),
        (("--appendonly", "no", "--save", ""), "REDIS HAS NO PERSISTENCE"),
        (("--appendonly", "yes", "--rename-command", "CONFIG", '""'), "does not allow CONFIG GET"),
    ],
    ids=["append-only", "snapshots", "nothing", "managed"],
)
def test_the_worker_says_loudly_when_redis_would_lose_queued_records(
    tmp_path: Path, caplog: Any, options: tuple[str, ...], warning: str | None
) -> None:
    server = RedisServer(tmp_path / "redis", *options).start()
    try:
        with caplog.at_level(logging.WARNING, logger="serving.gateway.metering"):
            check_persistence(redis.Redis.from_url(server.url))
    finally:
        server.kill()
    messages = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warning in messages[0]


def test_a_worker_checks_redis_persistence_as_it_starts(tmp_path: Path, settings: Any, caplog: Any) -> None:
    from celery.signals import worker_ready

    import serving.tasks  # noqa: F401 - as the worker imports its tasks, which connects the check

    server = RedisServer(tmp_path / "redis", "--appendonly", "no", "--save", "").start()
    settings.REDIS_URL = server.url
    try:
        with caplog.at_level(logging.WARNING, logger="serving.gateway.metering"):
            worker_ready.send(sender=None)
    finally:
        server.kill()
    assert any("REDIS HAS NO PERSISTENCE" in r.getMessage() for r in caplog.records)


def test_the_embedded_valkey_keeps_what_it_acknowledged_when_killed(tmp_path: Path) -> None:
    with _embedded_valkey(tmp_path / "valkey", persist=True) as url:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.rpush(QUEUE_KEY, b"a record")
        pid = int((tmp_path / "valkey" / "valkey.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        client.close()
        gone(pid)  # reaped by the machine's init, which may take seconds
    with _embedded_valkey(tmp_path / "valkey", persist=True) as url:
        client = redis.Redis.from_url(url)
        try:
            assert client.lrange(QUEUE_KEY, 0, -1) == [b"a record"]
        except redis.ConnectionError as error:
            log = tmp_path / "valkey" / "valkey.log"
            raise AssertionError(
                f"{error}; Valkey's log: {log.read_text() if log.exists() else 'none'}"
            ) from error
        client.close()


def gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():  # a zombie keeps its entry until reaped
        assert time.monotonic() < deadline, f"process {pid} was not reaped within {timeout}s"
        time.sleep(0.05)


def test_a_flush_whose_lock_passed_to_another_flush_removes_nothing(
    redis_server: RedisServer, acme: Organization, monkeypatch: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.rpush(QUEUE_KEY, json.dumps(record(acme.pk)))
    real = metering.write_batch

    def stalled(batch: Any) -> Any:
        client.set(metering.FLUSH_LOCK_KEY, "another flush")  # ours expired while the database stalled
        return real(batch)

    monkeypatch.setattr(metering, "write_batch", stalled)
    assert metering.flush_usage(client) == 1
    assert client.llen(QUEUE_KEY) == 1  # left to the flush that holds the lock (it inserts nothing twice)
    assert client.get(metering.FLUSH_LOCK_KEY) == b"another flush"


def test_a_flush_never_runs_beside_another(redis_server: RedisServer, acme: Organization) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.rpush(QUEUE_KEY, json.dumps(record(acme.pk)))
    client.set(metering.FLUSH_LOCK_KEY, "another flush", px=metering.FLUSH_LOCK_MS)
    assert metering.flush_usage(client) == 0
    assert client.llen(QUEUE_KEY) == 1 and UsageRecord.objects.count() == 0


# Redis killed under load, for real.


@contextlib.contextmanager
def fast_engine() -> Iterator[str]:
    """A stand-in engine that answers every chat completion at once, with usage."""
    message = {"role": "assistant", "content": "hi"}
    answer = {"id": "c", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip

    async def complete(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    port = free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def gateway(redis_url: str, spool: Path, tmp_path: Path) -> Iterator[str]:
    """The platform under gunicorn with two uvicorn workers, as in production, on the test database."""
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    environment = {
        **os.environ, "DATABASE_URL": database_url_for_processes(), "REDIS_URL": redis_url,
        "GATEWAY_SPOOL_DIR": str(spool), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "marketplace.asgi:application", "--worker-class",
         "marketplace.server.UvicornWorker", "--workers", "2", "--bind", f"127.0.0.1:{port}",
         "--graceful-timeout", "5"],
        cwd=ROOT, env=environment, start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(process)


def flush_until(stop: threading.Event, errors: list[str]) -> None:
    """The periodic flush, as beat runs it (every 0.2 s here), through a Redis that comes and goes."""
    from django.db import connection

    from serving.tasks import flush_usage

    try:
        while not stop.wait(0.2):
            try:
                flush_usage()
            except redis.RedisError as error:  # Celery would log it; the next run tries again
                errors.append(str(error))
    finally:
        connection.close()


async def load(url: str, key: str, calls: int, concurrency: int, redis_server: RedisServer) -> list[int]:
    """`calls` chat completions, `concurrency` at a time; Redis is killed once a quarter of them are
    answered and started again 2 s later, while the load goes on."""
    statuses: list[int] = []
    todo = iter(range(calls))
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}
    headers = {"Authorization": f"Bearer {key}"}

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in todo:
            try:
                async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
                    await answer.read()
                    statuses.append(answer.status)
            except aiohttp.ClientError:
                statuses.append(0)
            if statuses[-1] != 200:
                await asyncio.sleep(0.05)  # as a client backs off, so the outage does not use up the calls

    async def outage() -> None:
        while len(statuses) < calls // 4:
            await asyncio.sleep(0.01)
        redis_server.kill()
        await asyncio.sleep(2)
        await asyncio.get_running_loop().run_in_executor(None, redis_server.start)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(outage(), *(client(session) for _ in range(concurrency)))
    return statuses


@pytest.mark.slow
def test_redis_killed_under_load_loses_no_usage_record(
    transactional_catalog: None, tmp_path: Path, settings: Any
) -> None:
    # As the README asks of production Redis: every write on disk before it is acknowledged (with
    # `everysec`, a kill can lose what Redis acknowledged while an fsync held its writes back).
    options = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
    server = RedisServer(tmp_path / "redis", *options).start()
    settings.REDIS_URL = server.url
    owner = make_user("uma")
    organization = account_services.create_organization(slug="durable", name="Durable", owner=owner)
    Quota.objects.filter(organization=organization).update(
        requests_per_minute=100_000, tokens_per_minute=10**8
    )
    subscribe(
        organization=organization, card=ModelCard.objects.get(slug=CHAT), license_sha256=None, user=owner
    )
    _, key = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    spool = tmp_path / "spool"
    stop, errors = threading.Event(), []
    flusher = threading.Thread(target=flush_until, args=(stop, errors))
    try:
        with fast_engine() as engine, gateway(server.url, spool, tmp_path) as url:
            deploy(organization, "chat", CHAT, engine)
            flusher.start()
            statuses = asyncio.run(load(url, key, calls=4000, concurrency=50, redis_server=server))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                queued(server.url) or any(path.read_bytes() for path in spool.glob("*.jsonl"))
            ):
                time.sleep(0.2)
        stop.set()
        flusher.join(30)
        from serving.tasks import flush_usage

        flush_usage()  # the last run, now that the gateway has stopped
        dead = redis.Redis.from_url(server.url).llen(metering.DEAD_LETTER_KEY)
    finally:
        stop.set()
        server.kill()
        shutil.rmtree(tmp_path / "redis", ignore_errors=True)
    answered = statuses.count(200)
    refused = len(statuses) - answered
    assert errors, "the flush never met the outage: Redis was not killed while it ran"
    assert refused > 0, "no call met the outage"
    assert answered > 4000 // 4  # calls were answered after Redis came back, not only before it went
    rows = UsageRecord.objects.filter(organization=organization)
    assert rows.count() == answered
    assert rows.filter(status_code=200).count() == answered
    assert dead == 0
