"""The engine supervisor on its own: a replica whose engine exits is restarted after a growing backoff,
and the reason (its exit code, the end of its log) is kept for the person reading the status. The
"engine" here is a small script standing in for vLLM (the real engine's start and stop are the local
end-to-end test's part)."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.local import state, supervisor

REDIS_DB = 12  # apart from anything else using the server


@pytest.fixture
def connection(settings: Any) -> redis.Redis:
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    client = redis.Redis.from_url(f"{base}/{REDIS_DB}")
    client.flushdb()
    yield client
    client.flushdb()


def crashing_engine(folder: Path) -> Path:
    """An engine environment whose `python` prints a reason and exits with 3."""
    python = folder / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'RuntimeError: the model could not be loaded'\nexit 3\n")
    python.chmod(0o755)
    return folder


def test_a_crashed_engine_is_restarted_with_backoff_and_its_reason_kept(
    connection: redis.Redis, tmp_path: Path
) -> None:
    engines = supervisor.EngineSupervisor(connection, tmp_path / "data", crashing_engine(tmp_path / "engine"))
    (tmp_path / "data" / "engines").mkdir(parents=True)
    spec = {"name": "chat", "generation": 1, "replicas": 1,
            "engine": {"model_path": "/models/x", "served_model_name": "chat"}}  # fmt: skip
    state.put_desired(connection, 7, spec)
    starts, seen = [], []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            engines.step()
            replica = state.read_hash(connection, state.ACTUAL)[7]["replicas"][0]
            if replica["pid"] and replica["pid"] not in {pid for pid, _ in starts}:
                starts.append((replica["pid"], time.monotonic()))
            seen.append(replica)
            if replica["restarts"] >= 3:
                break
            time.sleep(0.05)
    finally:
        engines.stop_all()
    last = seen[-1]
    assert last["restarts"] >= 3 and last["last_exit_code"] == 3
    assert "the model could not be loaded" in last["message"]
    assert any(r["state"] == "backoff" for r in seen)
    # 1 s, then 2 s between restarts: the backoff grows.
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(starts)]
    assert len(gaps) >= 2 and gaps[0] >= 0.9 and gaps[1] >= 1.9 and gaps[1] > gaps[0], gaps
    assert (tmp_path / "data" / "engines" / "7-0.log").read_text().count("=== generation 1") >= 3


def test_stop_all_leaves_no_engine_and_clears_the_report(connection: redis.Redis, tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    python = engine / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec sleep 60\n")
    python.chmod(0o755)
    engines = supervisor.EngineSupervisor(connection, tmp_path / "data", engine)
    (tmp_path / "data" / "engines").mkdir(parents=True)
    state.put_desired(connection, 8, {"name": "e", "generation": 1, "replicas": 2,
                                      "engine": {"model_path": "/m", "served_model_name": "e"}})  # fmt: skip
    engines.step()
    pids = [r["pid"] for r in state.read_hash(connection, state.ACTUAL)[8]["replicas"]]
    assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    engines.stop_all()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not connection.exists(state.ACTUAL)
