"""The local backend: a deployment's replicas are vLLM engine processes on this machine.

`apply` writes the desired replicas to Redis; the engine supervisor (`manage.py run_engines`, started by
`run.py`) starts, health-checks, restarts and stops the processes and writes back what runs. `observe`
reads that back in one call. Only CPU-capable models that `make engine` prepared can run here.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import redis

from serving.backends.base import (
    ContainerState,
    NodeState,
    Observation,
    ObservationPass,
    PodState,
    TransientBackendError,
)
from serving.local import engine_env, state
from serving.local.engine_key import local_endpoint
from serving.spec import DeploymentSpec, card_engine_args, lora_args, served_model_name
from serving.status import CRASH_LOOP_RESTARTS

# The KV cache is 1 GiB on CPU (VLLM_CPU_KVCACHE_SPACE): a long default context would not fit in it.
# New deployments record the length that fits their model (fits.cpu_context); older rows have none.
LOCAL_MAX_MODEL_LEN = 2048


class SupervisorNotRunning(TransientBackendError):
    pass


def desired_replicas(spec: DeploymentSpec) -> int:
    return spec.autoscaling.min_replicas


def served_max_model_len(spec: DeploymentSpec) -> int:
    """The max model length a replica's engine runs with: the deployment's (set when it was created,
    from fits.cpu_context), else, for a deployment made before it was recorded, LOCAL_MAX_MODEL_LEN."""
    options = {**engine_env.LOCAL_MODEL_ARGS.get(spec.model.weights_slug, {}), **spec.engine_options}
    return int(options.get("max_model_len") or min(spec.model.context_length, LOCAL_MAX_MODEL_LEN))


def engine_arguments(spec: DeploymentSpec) -> dict[str, Any]:
    """What the supervisor needs to start a replica: the model folder and the engine's flags."""
    directory = engine_env.engine_dir()
    # A custom model registered from a folder is served from it; catalog models (and an adapter's catalog
    # base) from what `make engine` made.
    slug = spec.model.weights_slug
    path = (
        Path(spec.model.weights_path) if spec.model.weights_path else engine_env.model_path(directory, slug)
    )
    if path is None:
        raise TransientBackendError(f"The model {slug} is not prepared on this machine: run `make engine`.")
    options = {**engine_env.LOCAL_MODEL_ARGS.get(slug, {}), **spec.engine_options}
    return {
        "model_path": str(path),
        "served_model_name": served_model_name(spec),
        "max_model_len": served_max_model_len(spec),
        "runner": options.get("runner"),
        "dtype": options.get("dtype"),
        # The flags the card's kind needs, as on Kubernetes (one builder: serving.spec.card_engine_args).
        "extra_args": card_engine_args(spec.model, options) + lora_args(spec),
    }


class LocalBackend:
    name = "local"

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    @classmethod
    def from_settings(cls) -> LocalBackend:
        return cls(state.client())

    def apply(self, spec: DeploymentSpec) -> None:
        desired = {
            "name": spec.name,
            "generation": spec.generation,
            "replicas": desired_replicas(spec),
            "engine": engine_arguments(spec),
        }
        try:
            state.put_desired(self.connection, spec.deployment_id, desired)
        except redis.RedisError as error:
            raise TransientBackendError(f"Redis is unreachable: {error}") from error

    def scale(self, spec: DeploymentSpec) -> None:
        self.apply(spec)

    def delete(self, deployment_id: int) -> None:
        try:
            state.remove_desired(self.connection, deployment_id)
        except redis.RedisError as error:
            raise TransientBackendError(f"Redis is unreachable: {error}") from error

    def observe(self) -> ObservationPass:
        """1. Read the supervisor's heartbeat and actual state (one round trip).
        2. Without a heartbeat, say plainly that the supervisor is not running.
        3. Map each deployment's replicas to pods the status rules understand."""
        try:
            pipe = self.connection.pipeline(transaction=False)
            pipe.exists(state.HEARTBEAT)
            pipe.hgetall(state.ACTUAL)
            alive, raw = pipe.execute()
        except redis.RedisError as error:
            raise TransientBackendError(f"Redis is unreachable: {error}") from error
        if not alive:
            raise SupervisorNotRunning(
                "Waiting for the local engine supervisor, which `python3 run.py` starts "
                "(manage.py run_engines)."
            )
        actual = {int(key): json.loads(value) for key, value in raw.items()}
        observations = {}
        for deployment_id, entry in actual.items():
            observations[deployment_id] = _observation(deployment_id, entry)
        return ObservationPass(observations=observations, api_calls=1, owned_ids=set(actual))

    def nodes(self) -> list[NodeState]:
        """This machine: the cores engines may be bound to, and no GPU."""
        from serving.local import capacity

        return [NodeState(name=socket.gethostname(), cpu_cores=len(capacity.allowed_cores()))]


def _observation(deployment_id: int, entry: dict[str, Any]) -> Observation:
    """Replicas as pods: one the supervisor could not place (no free core, not enough memory) is a pod
    the scheduler cannot place, with the supervisor's sentence as the reason."""
    pods = []
    for replica in entry.get("replicas", []):
        if replica["state"] == "waiting":
            pods.append(
                PodState(
                    name=f"{entry['name']}-{replica['slot']}",
                    phase="Pending",
                    ready=False,
                    unschedulable_message=replica.get("message", ""),
                )
            )
            continue
        # Like Kubernetes, a replica that crashed only once or twice is restarting, not crash-looping.
        crash_looping = replica["state"] == "backoff" and replica.get("restarts", 0) >= CRASH_LOOP_RESTARTS
        waiting = "CrashLoopBackOff" if crash_looping else ""
        pods.append(
            PodState(
                name=f"{entry['name']}-{replica['slot']}",
                phase="Running" if replica["state"] in ("starting", "ready") else "Pending",
                ready=replica["state"] == "ready",
                containers=(
                    ContainerState(
                        name="engine",
                        ready=replica["state"] == "ready",
                        restart_count=replica.get("restarts", 0),
                        waiting_reason=waiting,
                        waiting_message=replica.get("message", ""),
                        last_exit_code=replica.get("last_exit_code"),
                    ),
                ),
                address=local_endpoint(replica["port"]),
            )
        )
    ready = [pod for pod in pods if pod.ready]
    generation = entry.get("generation")
    placement = placement_note(entry.get("replicas", []))
    return Observation(
        deployment_id=deployment_id,
        generation=generation,
        desired_replicas=entry.get("desired", 0),
        ready_replicas=len(ready),
        available_replicas=len(ready),
        updated_replicas=sum(1 for r in entry.get("replicas", []) if r.get("generation") == generation),
        pods=pods,
        endpoints=[pod.address for pod in ready],
        conditions={"Placement": ("True", "CoresBound", placement)} if placement else {},
    )


def placement_note(replicas: list[dict[str, Any]]) -> str:
    """Which cores each started replica keeps to itself, for the deployment's status:
    "CPU cores: replica 0 on 0, replica 1 on 1." (empty when none has started)."""
    bound = [
        f"replica {r['slot']} on {r['cpus']}" for r in replicas if r.get("cpus") and r["state"] != "waiting"
    ]
    return f"CPU cores: {', '.join(bound)}." if bound else ""
