"""The fleet against what is promised and asked of it, per GPU model, for platform admins.

For each GPU model (the catalog's name, e.g. "NVIDIA L4 24GB"):
- on nodes: allocatable `nvidia.com/gpu` of the backend's nodes whose `nvidia.com/gpu.product` label (the
  one the manifests' nodeSelectors use) is that model's product; cordoned and not-ready nodes are counted
  apart, since nothing new lands on them;
- promised by quotas: the sum of the organisations' limits for that model (`gpus_per_model`), each capped
  by the organisation's total; organisations with no limit of their own for it are counted apart, since
  their total may go to any model;
- reserved by deployments (max replicas × GPUs per replica) and used by running replicas (ready
  replicas × GPUs per replica);
- waiting: replicas wanted but not ready (the larger of desired and minimum, less ready), and how many
  of their GPUs do not fit in what the schedulable nodes have free.
"Oversubscribed" means the quotas promise more than the nodes have. On the local backend the one node is
this machine, with CPU cores and no GPU: a CPU row counts engine replicas against its cores.

Who reads the nodes: on Kubernetes, the worker (the one component with a service account token and the
ClusterRole granting `list` on nodes) reads them every NODES_INTERVAL_SECONDS (`remember_nodes`, a beat
task) and leaves them in the cache; the page and the API read that, with its age, so web pods hold no
cluster credentials and a slow API server never slows the page. On the local backend the web process is
on the machine it describes and reads it directly.

Reads: no backend call on Kubernetes (one on the local backend) and three queries, whatever the number
of deployments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import F
from django.utils import timezone

from marketplace.accounts.models import Quota
from marketplace.catalog.models import InstanceType
from serving.backends import get_backend
from serving.backends.base import NodeState, PermanentBackendError, TransientBackendError
from serving.choices import LIVE_STATUSES, DeploymentStatus
from serving.models import Deployment

CPU = "CPU"
NODES_KEY = "capacity:nodes"
NODES_INTERVAL_SECONDS = 60
# A snapshot older than this says so: the worker or beat has stopped reading the nodes.
NODES_STALE_SECONDS = 5 * NODES_INTERVAL_SECONDS
NODES_KEPT_SECONDS = 86400


@dataclass
class Waiting:
    deployment_id: int
    organization: str
    name: str
    gpu_model: str
    replicas: int
    gpus: int
    status: str
    message: str


@dataclass
class ModelCapacity:
    gpu_model: str
    gpu_product: str
    on_nodes: int = 0
    unschedulable: int = 0  # on cordoned or not-ready nodes
    nodes: int = 0
    promised_by_quotas: int = 0
    organizations_without_limit: int = 0
    reserved_by_deployments: int = 0
    used_by_replicas: int = 0
    waiting_replicas: int = 0
    waiting_gpus: int = 0

    @property
    def schedulable(self) -> int:
        return self.on_nodes - self.unschedulable

    @property
    def free(self) -> int:
        return max(0, self.schedulable - self.used_by_replicas)

    @property
    def waiting_without_room(self) -> int:
        """GPUs of waiting replicas that the free GPUs cannot hold."""
        return max(0, self.waiting_gpus - self.free)

    @property
    def oversubscribed(self) -> bool:
        return self.promised_by_quotas > self.on_nodes

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu_model": self.gpu_model,
            "gpu_product": self.gpu_product,
            "nodes": self.nodes,
            "on_nodes": self.on_nodes,
            "unschedulable": self.unschedulable,
            "free": self.free,
            "promised_by_quotas": self.promised_by_quotas,
            "organizations_without_limit": self.organizations_without_limit,
            "oversubscribed": self.oversubscribed,
            "reserved_by_deployments": self.reserved_by_deployments,
            "used_by_replicas": self.used_by_replicas,
            "waiting_replicas": self.waiting_replicas,
            "waiting_gpus": self.waiting_gpus,
            "waiting_without_room": self.waiting_without_room,
        }


@dataclass
class Capacity:
    backend: str
    nodes: list[NodeState]
    models: list[ModelCapacity]
    waiting: list[Waiting] = field(default_factory=list)
    cpu: dict[str, Any] | None = None  # the local backend's machine
    total_gpus: int = 0
    total_promised: int = 0
    # Why the nodes could not be read, when they could not: the rest still stands (it is the database's).
    nodes_error: str = ""
    nodes_read_at: datetime | None = None  # when the worker read them (Kubernetes); None: just now

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "nodes_error": self.nodes_error,
            "nodes_read_at": self.nodes_read_at.isoformat() if self.nodes_read_at else None,
            "total_gpus": self.total_gpus,
            "total_promised_by_quotas": self.total_promised,
            "gpu_models": [model.as_dict() for model in self.models],
            "cpu": self.cpu,
            "nodes": [
                {
                    "name": n.name,
                    "gpu_product": n.gpu_product,
                    "gpus": n.gpus,
                    "cpu_cores": n.cpu_cores,
                    "ready": n.ready,
                    "schedulable": n.schedulable,
                }
                for n in self.nodes
            ],
            "waiting": [vars(w) for w in self.waiting],
        }


def _wanted(row: Any) -> int:
    if row["status"] == DeploymentStatus.FAILED and row["ready_replicas"] == 0:
        return 0  # stays failed until a person changes something: it waits for nothing
    return max(row["desired_replicas"], row["min_replicas"]) - row["ready_replicas"]


def current() -> Capacity:
    """The capacity of the backend this platform deploys to: on Kubernetes with the nodes the worker
    read last (`remember_nodes`), on this machine with the machine read now."""
    if settings.SERVING_BACKEND != "kubernetes":
        return measure(_backend(), settings.SERVING_BACKEND)
    remembered = _Remembered(cache.get(NODES_KEY))
    measured = measure(remembered, settings.SERVING_BACKEND)
    measured.nodes_read_at = remembered.read_at
    return measured


def _backend() -> Any:
    try:
        return get_backend(settings.SERVING_BACKEND)
    except PermanentBackendError as error:  # a kubeconfig that cannot be read, say
        return _Unreachable(error)


def remember_nodes() -> dict[str, Any]:
    """Read the backend's nodes (one call) and keep them, or why they could not be read, for the
    capacity page and API; run by the worker every NODES_INTERVAL_SECONDS. What was kept."""
    error = ""
    nodes: list[NodeState] = []
    try:
        nodes = _backend().nodes()
    except (TransientBackendError, PermanentBackendError) as failure:
        error = str(failure)
    snapshot = {
        "read_at": timezone.now().isoformat(),
        "nodes": [asdict(node) for node in nodes],
        "error": error,
    }
    cache.set(NODES_KEY, snapshot, NODES_KEPT_SECONDS)
    return snapshot


class _Unreachable:
    def __init__(self, error: PermanentBackendError) -> None:
        self.error = error

    def nodes(self) -> list[NodeState]:
        raise self.error


class _Remembered:
    """The nodes as the worker last read them, served like a backend's `nodes()`."""

    def __init__(self, snapshot: dict[str, Any] | None) -> None:
        self.snapshot = snapshot
        self.read_at = datetime.fromisoformat(snapshot["read_at"]) if snapshot else None

    def nodes(self) -> list[NodeState]:
        if self.snapshot is None:
            raise TransientBackendError(
                "the worker has not read them yet (it does every minute; is the worker and beat running?)"
            )
        if self.snapshot["error"]:
            raise TransientBackendError(f"the worker could not read them: {self.snapshot['error']}")
        assert self.read_at is not None
        age = (timezone.now() - self.read_at).total_seconds()
        if age > NODES_STALE_SECONDS:
            raise TransientBackendError(
                f"the worker last read them {int(age // 60)} minutes ago (it should every minute; is "
                "the worker and beat running?)"
            )
        return [NodeState(**node) for node in self.snapshot["nodes"]]


def measure(backend: Any, backend_name: str) -> Capacity:
    """The figures; when the nodes cannot be read, every figure but theirs, and a sentence saying why."""
    nodes_error = ""
    try:
        nodes = backend.nodes()
    except (TransientBackendError, PermanentBackendError) as error:
        nodes = []
        nodes_error = (
            f"The nodes could not be read: {str(error).rstrip('.')}. GPUs on nodes show as 0 until they can "
            "be: try again, or grant the worker's service account `list` on nodes (the chart's ClusterRole "
            "does)."
        )
    products = dict(
        InstanceType.objects.filter(gpu_count__gt=0)
        .exclude(gpu_product="")
        .values_list("gpu_product", "gpu_model")
        .distinct()
    )
    models: dict[str, ModelCapacity] = {}

    def model(name: str, product: str = "") -> ModelCapacity:
        if name not in models:
            models[name] = ModelCapacity(gpu_model=name, gpu_product=product)
        elif product and not models[name].gpu_product:
            models[name].gpu_product = product
        return models[name]

    for node in nodes:
        if not node.gpus:
            continue
        entry = model(products.get(node.gpu_product, node.gpu_product or "Unlabelled GPUs"), node.gpu_product)
        entry.on_nodes += node.gpus
        entry.nodes += 1
        if not (node.ready and node.schedulable):
            entry.unschedulable += node.gpus

    quotas = list(Quota.objects.values("max_gpus", "gpus_per_model", "max_cpu_replicas"))
    for quota in quotas:
        for name, limit in (quota["gpus_per_model"] or {}).items():
            model(name).promised_by_quotas += min(int(limit), quota["max_gpus"])

    rows = list(
        Deployment.objects.filter(status__in=LIVE_STATUSES)
        .values(
            "pk", "name", "status", "status_message", "gpu_model", "reserved_gpus", "ready_replicas",
            "desired_replicas", "min_replicas", organization_slug=F("organization__slug"),
            gpus_per_replica=F("instance_type__gpu_count"),
        )
        .order_by("organization__slug", "name")
    )  # fmt: skip
    waiting: list[Waiting] = []
    cpu_used = cpu_waiting = 0
    for row in rows:
        replicas = max(0, _wanted(row))
        if not row["gpus_per_replica"]:
            cpu_used += row["ready_replicas"]
            cpu_waiting += replicas
        else:
            entry = model(row["gpu_model"])
            entry.reserved_by_deployments += row["reserved_gpus"]
            entry.used_by_replicas += row["ready_replicas"] * row["gpus_per_replica"]
            entry.waiting_replicas += replicas
            entry.waiting_gpus += replicas * row["gpus_per_replica"]
        if replicas:
            waiting.append(
                Waiting(
                    deployment_id=row["pk"],
                    organization=row["organization_slug"],
                    name=row["name"],
                    gpu_model=row["gpu_model"] or CPU,
                    replicas=replicas,
                    gpus=replicas * row["gpus_per_replica"],
                    status=row["status"],
                    message=row["status_message"],
                )
            )
    for entry in models.values():
        entry.organizations_without_limit = sum(
            1 for quota in quotas if entry.gpu_model not in (quota["gpus_per_model"] or {})
        )

    cpu = None
    if backend_name == "local":
        from serving.local.capacity import CORES_PER_REPLICA

        cores = int(sum(node.cpu_cores for node in nodes))
        cpu = {
            "cores": cores,
            "replicas_that_fit": cores // CORES_PER_REPLICA,
            "used_by_replicas": cpu_used,
            "waiting_replicas": cpu_waiting,
            "promised_by_quotas": sum(quota["max_cpu_replicas"] for quota in quotas),
            "gpus": 0,
        }
    ordered = sorted(models.values(), key=lambda m: (-m.on_nodes, m.gpu_model))
    return Capacity(
        backend=backend_name,
        nodes=nodes,
        models=ordered,
        waiting=waiting,
        cpu=cpu,
        total_gpus=sum(node.gpus for node in nodes),
        total_promised=sum(quota["max_gpus"] for quota in quotas),
        nodes_error=nodes_error,
    )
