"""The contract between the control plane and a place that runs engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from serving.spec import DeploymentSpec


class TransientBackendError(Exception):
    """The backend could not be reached or answered 5xx/429: retry with backoff."""


class PermanentBackendError(Exception):
    """The backend refused the request for a reason retrying will not fix (e.g. 403, 422).

    `public` is the reason in words a tenant may read (no hosts, paths or credentials), when there is
    one; the full message is for the platform's admins, in the worker's log.
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


@dataclass(frozen=True)
class ContainerState:
    name: str
    ready: bool = False
    restart_count: int = 0
    waiting_reason: str = ""  # e.g. ImagePullBackOff, ErrImagePull, CrashLoopBackOff, ContainerCreating
    waiting_message: str = ""
    last_terminated_reason: str = ""  # e.g. OOMKilled, Error
    last_exit_code: int | None = None


@dataclass(frozen=True)
class PodState:
    name: str
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool
    containers: tuple[ContainerState, ...] = ()
    unschedulable_message: str = ""  # the PodScheduled=False condition's message, when unschedulable
    unschedulable_since: datetime | None = None  # that condition's lastTransitionTime, when given
    address: str = ""  # where the engine answers: "http://10.0.0.5:8000" (pods) or "http://127.0.0.1:PORT"


@dataclass(frozen=True)
class EventState:
    object_name: str  # involvedObject.name
    reason: str  # e.g. FailedScheduling, Unhealthy, BackOff, Failed
    message: str
    type: str = "Warning"
    count: int = 1


@dataclass
class Observation:
    """What a backend saw of one deployment in one pass."""

    deployment_id: int
    generation: int | None = None  # the generation of the spec last applied (from an annotation)
    desired_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    updated_replicas: int = 0
    conditions: dict[str, tuple[str, str, str]] = field(
        default_factory=dict
    )  # type → (status, reason, message)
    pods: list[PodState] = field(default_factory=list)
    events: list[EventState] = field(default_factory=list)
    # Base URLs of ready replicas, for the gateway.
    endpoints: list[str] = field(default_factory=list)


@dataclass
class ObservationPass:
    """Everything one reconcile pass saw, and how many backend calls it took."""

    observations: dict[int, Observation]
    api_calls: int = 0
    # Deployment ids that own objects in the backend (including ones with no Deployment object left).
    owned_ids: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class NodeState:
    """A machine engines can run on, as capacity planning needs it."""

    name: str
    gpu_product: str = ""  # the nvidia.com/gpu.product label (GPU Feature Discovery); "" without GPUs
    gpus: int = 0  # allocatable nvidia.com/gpu
    cpu_cores: float = 0
    ready: bool = True
    schedulable: bool = True  # False when cordoned (spec.unschedulable)


class Backend(Protocol):
    name: str

    def apply(self, spec: DeploymentSpec) -> None:
        """Create or update every object of `spec`. Idempotent: applying twice is harmless."""

    def scale(self, spec: DeploymentSpec) -> None:
        """Bring replica bounds to spec.autoscaling's. Idempotent."""

    def delete(self, deployment_id: int) -> None:
        """Remove every object of the deployment. Idempotent: not found means done."""

    def observe(self) -> ObservationPass:
        """Read actual state: one list call per kind, selecting the platform's objects by label."""

    def nodes(self) -> list[NodeState]:
        """The machines engines can run on, with their GPUs (one call)."""
