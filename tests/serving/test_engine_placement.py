"""Local engines that fit this machine: each replica keeps CPU cores of its own (its processes' affinity
and vLLM's OpenMP binding), a replica for which no core or not enough memory is left waits with a
sentence saying why and starts once room is freed, the binding shows in the deployment's status, and
every engine demands the key only the gateway can derive. The engines here are small scripts standing
in for vLLM (the real engine's binding and key are the local end-to-end test's part)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.backends import local
from serving.choices import DeploymentStatus
from serving.local import capacity, state, supervisor
from serving.local.engine_key import engine_key, local_endpoint
from serving.status import assess

REDIS_DB = 13  # apart from anything else using the server
GIB = capacity.GIB


@pytest.fixture
def connection(settings: Any) -> redis.Redis:
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    client = redis.Redis.from_url(f"{base}/{REDIS_DB}")
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    """An engine environment whose `python` sleeps, like an engine serving quietly."""
    python = tmp_path / "engine" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec sleep 60\n")
    python.chmod(0o755)
    return tmp_path / "engine"


@pytest.fixture
def model(tmp_path: Path) -> str:
    """A model folder without weights: its estimated footprint is the engine's overhead alone."""
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    return str(folder)


def engines(connection: redis.Redis, tmp_path: Path, engine_dir: Path, **options: Any):
    (tmp_path / "data" / "engines").mkdir(parents=True, exist_ok=True)
    options.setdefault("mem_available", lambda: 64 * GIB)
    return supervisor.EngineSupervisor(connection, tmp_path / "data", engine_dir, **options)


def want(connection: redis.Redis, deployment_id: int, replicas: int, model: str) -> None:
    state.put_desired(connection, deployment_id, {
        "name": f"d{deployment_id}", "generation": 1, "replicas": replicas,
        "engine": {"model_path": model, "served_model_name": f"d{deployment_id}"},
    })  # fmt: skip


def replicas_of(connection: redis.Redis, deployment_id: int) -> list[dict[str, Any]]:
    return list(state.read_hash(connection, state.ACTUAL)[deployment_id]["replicas"])


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_each_replica_gets_its_own_core(connection, tmp_path, engine_dir, model) -> None:
    placed = engines(connection, tmp_path, engine_dir, cores=(0, 1))
    want(connection, 7, 2, model)
    try:
        placed.step()
        replicas = replicas_of(connection, 7)
        assert [r["cpus"] for r in replicas] == ["0", "1"]
        for replica, core in zip(replicas, (0, 1), strict=True):
            assert os.sched_getaffinity(replica["pid"]) == {core}
            assert environment_of(replica["pid"])["VLLM_CPU_OMP_THREADS_BIND"] == str(core)
    finally:
        placed.stop_all()


def test_a_replica_waits_when_no_core_is_free_and_starts_once_one_is(
    connection, tmp_path, engine_dir, model
) -> None:
    placed = engines(connection, tmp_path, engine_dir, cores=(0, 1))
    want(connection, 7, 2, model)
    want(connection, 8, 1, model)
    try:
        placed.step()
        waiting = replicas_of(connection, 8)[0]
        assert (waiting["state"], waiting["pid"], waiting["cpus"]) == ("waiting", None, "")
        assert waiting["message"].startswith(
            "This machine has no free CPU core for another engine: its 2 cores (0-1) are held by 2 running "
            "engines, one core each."
        )
        assert "lower this or another deployment's replicas, or delete one" in waiting["message"]
        want(connection, 7, 1, model)  # scaled down: core 1 is freed
        placed.step()
        started = replicas_of(connection, 8)[0]
        assert started["state"] == "starting" and started["cpus"] == "1"
        assert os.sched_getaffinity(started["pid"]) == {1}
    finally:
        placed.stop_all()


def test_a_replica_waits_when_memory_is_short_counting_what_started_engines_will_grow_to(
    connection, tmp_path, engine_dir, model
) -> None:
    free = {"bytes": 5 * GIB}
    placed = engines(connection, tmp_path, engine_dir, cores=(0, 1), mem_available=lambda: free["bytes"])
    want(connection, 7, 2, model)  # each needs about 3 GiB (the estimate); the first has taken none yet
    try:
        placed.step()
        first, second = replicas_of(connection, 7)
        assert first["state"] == "starting" and second["state"] == "waiting"
        assert second["message"] == (
            "This machine cannot hold another engine of this model: it needs about 3.0 GB of memory and "
            "2.0 GB is free once the running engines have grown to their size. The replica starts when "
            "memory is freed: lower this or another deployment's replicas, or delete one."
        )
        free["bytes"] = 5 * GIB + 100 * 1024**2  # still short: the same sentence, so no new status event
        placed.step()
        assert replicas_of(connection, 7)[1]["message"] == second["message"]
        free["bytes"] = 8 * GIB
        placed.step()
        assert [r["state"] for r in replicas_of(connection, 7)] == ["starting", "starting"]
    finally:
        placed.stop_all()


def test_stopping_a_replica_that_never_started_removes_no_folder(
    connection, tmp_path, engine_dir, model, monkeypatch
) -> None:
    """A waiting replica has no temporary folder of its own: scaling it away, or stopping everything,
    must remove nothing else (least of all the supervisor's working directory)."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("the platform's own files")
    monkeypatch.chdir(workdir)
    placed = engines(connection, tmp_path, engine_dir, cores=())
    want(connection, 7, 2, model)
    try:
        placed.step()
        assert [r["state"] for r in replicas_of(connection, 7)] == ["waiting", "waiting"]
        want(connection, 7, 1, model)  # slot 1 is stopped
        placed.step()
    finally:
        placed.stop_all()  # slot 0 is stopped
    assert (workdir / "keep.txt").read_text() == "the platform's own files"


def test_a_ready_engines_measured_memory_becomes_its_models_footprint(tmp_path: Path) -> None:
    footprints = capacity.Footprints(tmp_path / "footprints.json")
    assert footprints.of("/models/tiny") == capacity.ENGINE_OVERHEAD_BYTES  # estimated: no weights
    footprints.record("/models/tiny", 2 * GIB)
    footprints.record("/models/tiny", 1 * GIB)  # a smaller figure never lowers it
    assert capacity.Footprints(tmp_path / "footprints.json").of("/models/tiny") == 2 * GIB  # kept


def test_every_engine_demands_the_key_only_the_gateway_derives(connection, tmp_path, engine_dir, model):
    placed = engines(connection, tmp_path, engine_dir, cores=(0, 1))
    want(connection, 7, 2, model)
    try:
        placed.step()
        keys = set()
        for replica in replicas_of(connection, 7):
            environment = environment_of(replica["pid"])
            assert environment["VLLM_API_KEY"] == engine_key(local_endpoint(replica["port"]))
            assert "SECRET_KEY" not in environment
            keys.add(environment["VLLM_API_KEY"])
        assert len(keys) == 2  # one key per replica
    finally:
        placed.stop_all()


def test_the_engine_key_depends_on_the_secret_and_the_replica(settings: Any) -> None:
    one = engine_key("http://127.0.0.1:8001")
    assert len(one) == 64 and one != engine_key("http://127.0.0.1:8002")
    settings.SECRET_KEY = "another-secret-key-long-enough-for-production-0123456789abcdef"
    assert engine_key("http://127.0.0.1:8001") != one


def assessed(entry: dict[str, Any]) -> str:
    observation = local._observation(7, entry)
    return assess(
        observation,
        current=DeploymentStatus.PROVISIONING,
        generation=1,
        instance_description="This machine (CPU)",
        seconds_in_status=5,
    ).message


def test_the_deployments_status_shows_each_replicas_cores() -> None:
    entry = {"name": "chat", "generation": 1, "desired": 2, "replicas": [
        {"slot": 0, "generation": 1, "port": 8001, "state": "ready", "cpus": "0"},
        {"slot": 1, "generation": 1, "port": 8002, "state": "ready", "cpus": "1"},
    ]}  # fmt: skip
    assert assessed(entry) == "Ready: 2 of 2 replicas serving. CPU cores: replica 0 on 0, replica 1 on 1."


def test_the_deployments_status_says_why_a_replica_waits() -> None:
    why = capacity.no_core_message((0, 1), 2)
    alone = {"name": "chat", "generation": 1, "desired": 1, "replicas": [
        {"slot": 0, "generation": 1, "port": 0, "state": "waiting", "cpus": "", "message": why},
    ]}  # fmt: skip
    assert assessed(alone) == f"Waiting for room for a replica on This machine (CPU): {why}"
    beside = {"name": "chat", "generation": 1, "desired": 2, "replicas": [
        {"slot": 0, "generation": 1, "port": 8001, "state": "ready", "cpus": "0"},
        {"slot": 1, "generation": 1, "port": 0, "state": "waiting", "cpus": "", "message": why},
    ]}  # fmt: skip
    assert assessed(beside) == (
        f"1 of 2 replicas ready; starting the others. {why} CPU cores: replica 0 on 0."
    )


@pytest.mark.parametrize(
    ("cores", "written"), [((0,), "0"), ((0, 1), "0-1"), ((0, 1, 2, 5, 7, 8), "0-2,5,7-8"), ((), "")]
)
def test_cores_are_written_as_linux_and_vllm_write_them(cores, written) -> None:
    assert capacity.cpu_list(cores) == written


def test_free_cores_are_picked_lowest_first_or_none() -> None:
    assert capacity.pick_cores((0, 1, 2, 3), held=(0, 2)) == (1,)
    assert capacity.pick_cores((0, 1, 2, 3), held=(0,), count=2) == (1, 2)
    assert capacity.pick_cores((0, 1), held=(0, 1)) is None


def test_available_memory_is_read_from_meminfo() -> None:
    meminfo = "MemTotal:       24684084 kB\nMemFree:        20097972 kB\nMemAvailable:   23940680 kB\n"
    assert capacity.mem_available(meminfo) == 23940680 * 1024
