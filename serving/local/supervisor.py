"""The engine supervisor: runs the local backend's desired replicas as vLLM engine processes.

Each pass (twice a second):
1. Read the desired deployments from Redis.
2. Stop the replicas of deployments no longer desired, and replicas above the desired count.
3. For each wanted replica (oldest deployment first): start it on a free port if missing, on cores no
   other replica holds and only if the machine has the memory its model will grow to (serving/local/
   capacity.py), else leave it waiting with a sentence saying why and try again next pass; when its
   generation is old, replace it, one replica of a deployment at a time (so a rollout never takes all
   replicas down at once when there are several); when its process exited, restart it on the same cores
   after an exponential backoff (1, 2, 4 … 60 s).
4. Health-check running engines on /health, measure their memory; write what runs back to Redis with a
   heartbeat.
Engines run in their own process groups, each with its own log file and temporary folder, confined to
their cores (affinity and OpenMP binding), answering only callers with the gateway's key (engine_key.py),
and die with the supervisor (PR_SET_PDEATHSIG) should it be killed without a chance to stop them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from serving.local import capacity, engine_env, state
from serving.local.engine_key import engine_key, local_endpoint

log = logging.getLogger(__name__)

PASS_SECONDS = 0.5
HEALTH_EVERY_SECONDS = 1.0
STOP_GRACE_SECONDS = 10
MAX_BACKOFF_SECONDS = 60
LOG_TAIL_BYTES = 2000
# Set in every engine's environment to the supervisor's folder, so a person (or a test) can tell whose it is.
OWNER_VARIABLE = "MARKETPLACE_ENGINES"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _prepare_child(cores: tuple[int, ...]) -> Callable[[], None]:
    """What runs in the child before exec: SIGKILL it if the supervisor dies, however it dies; and keep
    it and every process it starts on its own cores."""

    def prepare() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if cores:
            os.sched_setaffinity(0, cores)

    return prepare


@dataclass
class Replica:
    slot: int
    generation: int
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    state: str = "starting"  # starting | ready | backoff | waiting (no cores or memory for it yet)
    cores: tuple[int, ...] = ()  # held from start to stop, restarts included
    model_path: str = ""
    memory: int = 0  # bytes (PSS) its processes held when last measured
    restarts: int = 0
    last_exit_code: int | None = None
    next_start_at: float = 0.0
    last_health_at: float = 0.0
    message: str = ""
    log_path: Path = field(default_factory=Path)
    # Made when the engine starts; None for a replica that never started (a waiting one), which has no
    # folder to remove (an empty Path would be the working directory).
    tmpdir: Path | None = None

    def report(self) -> dict[str, Any]:
        return {
            "slot": self.slot, "generation": self.generation, "port": self.port, "state": self.state,
            "restarts": self.restarts, "last_exit_code": self.last_exit_code, "message": self.message,
            "pid": self.process.pid if self.process else None, "log": str(self.log_path),
            "cpus": capacity.cpu_list(self.cores), "memory_bytes": self.memory,
        }  # fmt: skip

    @property
    def holds_resources(self) -> bool:
        """Started, or crashed and about to restart: its cores and memory are spoken for."""
        return self.state != "waiting"


class EngineSupervisor:
    def __init__(
        self,
        connection: redis.Redis,
        data_dir: Path,
        engine_dir: Path,
        *,
        cores: tuple[int, ...] | None = None,
        mem_available: Callable[[], int] = capacity.read_mem_available,
    ) -> None:
        self.connection = connection
        self.folder = data_dir / "engines"
        self.engine_dir = engine_dir
        self.cores = capacity.allowed_cores() if cores is None else cores
        self.mem_available = mem_available
        self.footprints = capacity.Footprints(self.folder / "footprints.json")
        self.last_measured_at = 0.0
        self.deployments: dict[int, dict[int, Replica]] = {}
        self.names: dict[int, str] = {}
        self.desired_counts: dict[int, int] = {}
        self.generations: dict[int, int] = {}

    # Lifecycle ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log.info("engine supervisor running; engines in %s", self.folder)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except redis.RedisError as error:
                    log.warning("Redis unreachable, engines keep running: %s", error)
                stop.wait(PASS_SECONDS)
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        for deployment_id in list(self.deployments):
            self._forget(deployment_id)
        with contextlib.suppress(redis.RedisError):
            self.connection.delete(state.ACTUAL, state.HEARTBEAT)

    # One pass -------------------------------------------------------------------------------------

    def step(self) -> None:
        desired = state.read_hash(self.connection, state.DESIRED)
        for deployment_id in list(self.deployments):
            if deployment_id not in desired:
                self._forget(deployment_id)
        for deployment_id, spec in sorted(desired.items()):  # the oldest deployment is placed first
            self._converge(deployment_id, spec)
        self._measure()
        state.write_actual(self.connection, self.report())

    def report(self) -> dict[int, dict[str, Any]]:
        return {
            deployment_id: {
                "name": self.names[deployment_id],
                "generation": self.generations[deployment_id],
                "desired": self.desired_counts[deployment_id],
                "replicas": [replica.report() for _, replica in sorted(replicas.items())],
            }
            for deployment_id, replicas in self.deployments.items()
        }

    def _forget(self, deployment_id: int) -> None:
        for replica in self.deployments.pop(deployment_id, {}).values():
            self._stop(replica)
        self.names.pop(deployment_id, None)
        self.desired_counts.pop(deployment_id, None)
        self.generations.pop(deployment_id, None)

    def _converge(self, deployment_id: int, spec: dict[str, Any]) -> None:
        replicas = self.deployments.setdefault(deployment_id, {})
        generation, wanted = int(spec["generation"]), int(spec["replicas"])
        self.names[deployment_id], self.generations[deployment_id] = spec["name"], generation
        self.desired_counts[deployment_id] = wanted
        for slot in [s for s in replicas if s >= wanted]:
            self._stop(replicas.pop(slot))
        for slot in range(wanted):
            replica = replicas.get(slot)
            if replica is None:
                replicas[slot] = self._place(deployment_id, slot, generation, spec["engine"])
            elif replica.generation != generation:
                rolling = any(r.generation == generation and r.state != "ready" for r in replicas.values())
                if not rolling:
                    self._stop(replicas.pop(slot))  # first: its cores go to the new generation
                    replicas[slot] = self._place(deployment_id, slot, generation, spec["engine"])
            elif replica.state == "waiting":
                replicas[slot] = self._place(deployment_id, slot, generation, spec["engine"], replica)
            else:
                self._poll(deployment_id, replica, spec["engine"])

    # Placement ------------------------------------------------------------------------------------

    def _running(self) -> list[Replica]:
        return [r for replicas in self.deployments.values() for r in replicas.values() if r.holds_resources]

    def _place(
        self,
        deployment_id: int,
        slot: int,
        generation: int,
        engine: dict[str, Any],
        waiting: Replica | None = None,
    ) -> Replica:
        """Start the replica on free cores when the machine can hold it; else a waiting replica that
        says why (tried again next pass)."""
        running = self._running()
        cores = capacity.pick_cores(self.cores, (core for r in running for core in r.cores))
        message = ""
        if cores is None:
            message = capacity.no_core_message(self.cores, len(running))
        else:
            needed = self.footprints.of(engine["model_path"])
            growing = (capacity.still_to_grow(self.footprints.of(r.model_path), r.memory) for r in running)
            room, left = capacity.fits(needed, self.mem_available(), growing)
            if not room:
                message = capacity.no_memory_message(needed, left)
        if cores is None or message:
            if waiting is not None and waiting.message.split(":")[0] == message.split(":")[0]:
                # The same reason in new figures (free memory moves all the time): keep the first
                # words, so the deployment's status, and its history of events, stay put.
                message = waiting.message
            else:
                log.info("replica %s/%s waits: %s", deployment_id, slot, message)
            return Replica(slot=slot, generation=generation, state="waiting", message=message,
                           model_path=engine["model_path"])  # fmt: skip
        return self._start(deployment_id, slot, generation, engine, cores=cores)

    # One replica ----------------------------------------------------------------------------------

    def _start(
        self,
        deployment_id: int,
        slot: int,
        generation: int,
        engine: dict[str, Any],
        *,
        cores: tuple[int, ...],
        restarts: int = 0,
    ) -> Replica:
        replica = Replica(
            slot=slot,
            generation=generation,
            port=free_port(),
            restarts=restarts,
            cores=cores,
            model_path=engine["model_path"],
        )
        replica.log_path = self.folder / f"{deployment_id}-{slot}.log"
        # Short, in the system's temp folder: vLLM puts IPC sockets there, and a socket path over 107
        # characters cannot be bound.
        replica.tmpdir = Path(tempfile.mkdtemp(prefix=f"engine-{deployment_id}-{slot}-"))
        command = engine_env.engine_command(
            engine["model_path"],
            port=replica.port,
            served_model_name=engine["served_model_name"],
            max_model_len=engine.get("max_model_len"),
            runner=engine.get("runner"),
            dtype=engine.get("dtype"),
            extra_args=engine.get("extra_args", ()),
            python=engine_env.engine_python(self.engine_dir),
        )
        with replica.log_path.open("ab") as output:
            cpus = capacity.cpu_list(cores)
            output.write(
                f"\n=== generation {generation}, port {replica.port}, CPU cores {cpus}: "
                f"{' '.join(command)}\n".encode()
            )
            output.flush()
            replica.process = subprocess.Popen(
                command,
                env={
                    **engine_env.engine_environment(
                        self.engine_dir,
                        replica.tmpdir,
                        cpus=cpus,
                        api_key=engine_key(local_endpoint(replica.port)),
                    ),
                    OWNER_VARIABLE: str(self.folder),
                },
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_prepare_child(cores),
            )
        replica.message = f"Running on CPU core{'s' if len(cores) != 1 else ''} {cpus}."
        log.info(
            "started %s replica %s (pid %s, port %s, CPU cores %s)",
            deployment_id, slot, replica.process.pid, replica.port, cpus,
        )  # fmt: skip
        return replica

    def _stop(self, replica: Replica) -> None:
        process = replica.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            # The engine's own helpers live in its process group; none may outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        replica.process = None
        if replica.tmpdir is not None:
            shutil.rmtree(replica.tmpdir, ignore_errors=True)
            replica.tmpdir = None

    def _poll(self, deployment_id: int, replica: Replica, engine: dict[str, Any]) -> None:
        now = time.monotonic()
        if replica.state == "backoff":
            if now >= replica.next_start_at:
                fresh = self._start(
                    deployment_id, replica.slot, replica.generation, engine,
                    cores=replica.cores, restarts=replica.restarts,
                )  # fmt: skip
                fresh.last_exit_code, fresh.message = replica.last_exit_code, replica.message
                self.deployments[deployment_id][replica.slot] = fresh
            return
        assert replica.process is not None
        code = replica.process.poll()
        if code is not None:
            self._stop(replica)
            replica.restarts += 1
            replica.last_exit_code = code
            replica.memory = 0  # it will grow to its footprint again
            replica.state = "backoff"
            replica.next_start_at = now + min(2 ** (replica.restarts - 1), MAX_BACKOFF_SECONDS)
            replica.message = _tail(replica.log_path)
            log.warning(
                "replica %s/%s exited with %s; restart %s",
                deployment_id,
                replica.slot,
                code,
                replica.restarts,
            )
            return
        if now - replica.last_health_at >= HEALTH_EVERY_SECONDS:
            replica.last_health_at = now
            replica.state = "ready" if _healthy(replica.port) else "starting"

    def _measure(self) -> None:
        """Once a second: every running engine's memory (one walk over /proc), and the largest a ready
        engine of each model reached, which is that model's footprint from then on (a loading engine's
        figure would understate it)."""
        now = time.monotonic()
        if now - self.last_measured_at < HEALTH_EVERY_SECONDS:
            return
        self.last_measured_at = now
        started = [r for r in self._running() if r.process is not None]
        used = capacity.process_groups_memory(r.process.pid for r in started if r.process is not None)
        for replica in started:
            assert replica.process is not None
            replica.memory = used.get(replica.process.pid, 0)
            if replica.state == "ready":
                self.footprints.record(replica.model_path, replica.memory)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _tail(path: Path) -> str:
    """The end of a log, for the person reading why a replica crashed."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            lines = handle.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-3:])
