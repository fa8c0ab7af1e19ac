"""The Kubernetes backend: every deployment as a vLLM Deployment and its companions in one namespace.

This is the only module that imports the official `kubernetes` client (STYLE.md, "one seam per outside
system"). The client serves for configuration, authentication and URLs only: every reply is read as plain
JSON (`_preload_content=False`), because
- typed kinds and the KEDA custom kind then share one code path;
- the client's generated models reject replies that lack fields they call required, and cannot parse
  some delete replies (a Status where they expect the object);
- nothing outside this module ever holds a client type.

Writes are server-side apply (`application/apply-patch+yaml`, field manager `model-marketplace`, forced),
so applying the same spec twice is harmless and a field another manager took is taken back. The client
only sends that content type when told to (`_content_type`): left alone it picks a strategic merge patch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3
from django.conf import settings
from django.utils.dateparse import parse_datetime
from kubernetes import client, config

from learning.training.kube_job import TRAINING_SELECTOR
from learning.training.kube_job import TUNING_JOB_LABEL as TRAINING_JOB_LABEL
from serving import manifests
from serving.backends.base import (
    ContainerState,
    EventState,
    NodeState,
    Observation,
    ObservationPass,
    PermanentBackendError,
    PodState,
    TransientBackendError,
)
from serving.spec import ClusterSettings, DeploymentSpec

TRAINING_RUNNING, TRAINING_SUCCEEDED, TRAINING_FAILED, TRAINING_MISSING = (
    "running",
    "succeeded",
    "failed",
    "missing",
)


@dataclass(frozen=True)
class TrainingState:
    """A training Job as the cluster reports it: its phase, its newest pod and that pod's log."""

    phase: str  # running | succeeded | failed | missing
    message: str = ""  # the Job's Failed condition, in the cluster's words
    pod: PodState | None = None  # its newest pod
    log: str = ""


FIELD_MANAGER = "model-marketplace"
APPLY_PATCH = "application/apply-patch+yaml"
# (connect, read) seconds: a hung API server must not hold a worker forever.
REQUEST_TIMEOUT = (5, 30)
KEDA_MISSING = "KEDA is not installed in the cluster: install it or set KEDA_ENABLED=False"


@dataclass(frozen=True)
class _Kind:
    """How one kind is reached through the client: a typed API and its method suffix, or a custom kind."""

    kind: str
    api_version: str
    plural: str
    api: str  # client class, e.g. "AppsV1Api"
    suffix: str = ""  # typed methods are `<verb>_<suffix>`; "" means a custom kind (CustomObjectsApi)
    namespaced: bool = True  # False for cluster-wide kinds (Node), listed without a namespace

    @property
    def custom(self) -> bool:
        return not self.suffix


DEPLOYMENT = _Kind("Deployment", "apps/v1", "deployments", "AppsV1Api", "namespaced_deployment")
SERVICE = _Kind("Service", "v1", "services", "CoreV1Api", "namespaced_service")
PDB = _Kind(
    "PodDisruptionBudget",
    "policy/v1",
    "poddisruptionbudgets",
    "PolicyV1Api",
    "namespaced_pod_disruption_budget",
)
HPA = _Kind(
    "HorizontalPodAutoscaler",
    "autoscaling/v2",
    "horizontalpodautoscalers",
    "AutoscalingV2Api",
    "namespaced_horizontal_pod_autoscaler",
)
SCALED_OBJECT = _Kind("ScaledObject", "keda.sh/v1alpha1", "scaledobjects", "CustomObjectsApi")
NETWORK_POLICY = _Kind(
    "NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", "NetworkingV1Api", "namespaced_network_policy"
)
POD = _Kind("Pod", "v1", "pods", "CoreV1Api", "namespaced_pod")
EVENT = _Kind("Event", "v1", "events", "CoreV1Api", "namespaced_event")
NODE = _Kind("Node", "v1", "nodes", "CoreV1Api", "node", namespaced=False)
# A tuning job's training run (learning/training/kube_job.py) is a Secret and a Job; a deployment of a model
# registered from an object store has a Secret holding its read key (manifests.build_weights_secret).
SECRET = _Kind("Secret", "v1", "secrets", "CoreV1Api", "namespaced_secret")
JOB = _Kind("Job", "batch/v1", "jobs", "BatchV1Api", "namespaced_job")
TRAINING_KINDS = {(kind.api_version, kind.kind): kind for kind in (SECRET, JOB)}
# A training log is a line a step, read every few seconds: its newest lines are the ones not seen yet.
LOG_TAIL_LINES = 2000
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

APPLIED_KINDS = {
    (kind.api_version, kind.kind): kind
    for kind in (NETWORK_POLICY, SECRET, DEPLOYMENT, SERVICE, PDB, HPA, SCALED_OBJECT)
}
AUTOSCALERS = (SCALED_OBJECT, HPA)
# Autoscalers first, so nothing scales the Deployment back up while it goes; the NetworkPolicy last, so
# the engines stay unreachable around the gateway until they are gone.
# An object-store model's key Secret goes before the Deployment: `observe` sees a deployment by its
# Deployment, so a Secret that could not be deleted keeps the deployment DELETING (and retried) rather than
# left behind holding an organisation's key. Running engines keep the key they started with.
DELETE_ORDER = (SCALED_OBJECT, HPA, SECRET, DEPLOYMENT, SERVICE, PDB, NETWORK_POLICY)


class _Refused(PermanentBackendError):
    """A 4xx reply that callers may want to look at (404: gone or unknown kind; 405: verb unsupported)."""

    def __init__(self, message: str, status: int, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.details = details

    @property
    def namespace_missing(self) -> bool:
        return self.details.get("kind") == "namespaces"


def cluster_settings() -> ClusterSettings:
    """Where and how deployments run on the cluster, from the platform's settings."""
    return ClusterSettings(
        namespace=settings.KUBERNETES_NAMESPACE,
        image=settings.VLLM_IMAGE,
        keda=settings.KEDA_ENABLED,
        prometheus_url=settings.PROMETHEUS_URL,
        model_cache_pvc=settings.MODEL_CACHE_PVC,
        model_volumes=tuple(settings.CUSTOM_MODEL_VOLUMES.items()),
        hf_token_secret=settings.HF_TOKEN_SECRET,
        media_domains=tuple(settings.ENGINE_MEDIA_DOMAINS),
        network_policy=settings.NETWORK_POLICY_ENABLED,
        gateway_namespace=settings.GATEWAY_NAMESPACE,
        gateway_pod_labels=dict(settings.GATEWAY_POD_LABELS),
        prometheus_namespace=settings.PROMETHEUS_NAMESPACE,
        prometheus_pod_labels=dict(settings.PROMETHEUS_POD_LABELS),
    )


class KubernetesBackend:
    """Runs deployments on a cluster through server-side apply; reads them back by label.

    Every method is idempotent: apply is create-or-update, delete of what is gone is done, and observe
    only reads.
    """

    name = "kubernetes"

    def __init__(self, api_client: Any, cluster: ClusterSettings) -> None:
        """`api_client` is a `kubernetes.client.ApiClient`: tests point its host at a fake API server."""
        self.api_client = api_client
        self.cluster = cluster
        self._apis: dict[str, Any] = {
            name: getattr(client, name)(api_client)
            for name in (
                "CoreV1Api",
                "AppsV1Api",
                "PolicyV1Api",
                "AutoscalingV2Api",
                "NetworkingV1Api",
                "BatchV1Api",
                "CustomObjectsApi",
            )
        }

    @classmethod
    def from_settings(cls) -> KubernetesBackend:
        """The backend for this process: the kubeconfig KUBECONFIG names, else the pod's service account."""
        cluster = cluster_settings()
        try:
            if settings.KUBECONFIG:
                # persist_config=False: a refreshed token must not be written into a (maybe read-only) file.
                api_client = config.new_client_from_config(
                    config_file=settings.KUBECONFIG, persist_config=False
                )
            else:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api_client = client.ApiClient(configuration)
        except (config.ConfigException, OSError) as error:
            where = (
                f"the kubeconfig {settings.KUBECONFIG}"
                if settings.KUBECONFIG
                else "the pod's service account"
            )
            raise PermanentBackendError(
                f"Cannot configure the Kubernetes client from {where}: {str(error).rstrip('.')}. Set "
                "KUBECONFIG to a readable kubeconfig, run the platform inside the cluster, or set "
                "SERVING_BACKEND=local."
            ) from error
        return cls(api_client, cluster)

    # The Backend protocol.

    def apply(self, spec: DeploymentSpec) -> None:
        """Server-side apply every object the manifests build, then delete the autoscaler kind the policy
        no longer wants (fixed now, or an HPA↔ScaledObject switch), the NetworkPolicy when
        NETWORK_POLICY_ENABLED was turned off, and the weights Secret when nothing needs it any more.

        The stale autoscaler is deleted by name, never by label: KEDA copies a ScaledObject's labels onto
        the HPA it creates (`keda-hpa-<name>`), and deleting that by label would fight KEDA.
        """
        try:
            objects = manifests.build_objects(spec, self.cluster)
        except ValueError as error:  # e.g. scale to zero without KEDA: no retry will change that
            raise PermanentBackendError(str(error), public=str(error)) from error
        for obj in objects:
            self._apply_object(obj)
        wanted = {obj["kind"] for obj in objects}
        name = manifests.object_name(spec)
        for kind in (*AUTOSCALERS, NETWORK_POLICY):
            if kind.kind not in wanted:
                self._delete_named(kind, name)
        if SECRET.kind not in wanted:  # credentials no longer needed (adapters dropped …) leave the cluster
            self._delete_named(SECRET, manifests.weights_secret_name(spec))

    def scale(self, spec: DeploymentSpec) -> None:
        """Same as apply: the replica bounds live in the Deployment (fixed) or the autoscaler, and applying
        everything keeps one path that is known to converge."""
        self.apply(spec)

    def delete(self, deployment_id: int) -> None:
        """Delete every kind of the deployment's objects by label (one delete-collection call per kind).

        Not found means done. Pods go with their Deployment (background propagation); `observe` reports
        what remains until the cluster has finished.
        """
        selector = f"{manifests.MANAGED_SELECTOR},{manifests.DEPLOYMENT_ID_LABEL}={deployment_id}"
        for kind in DELETE_ORDER:
            self._delete_collection(
                kind, selector, f"deleting the {kind.kind}s of deployment {deployment_id}"
            )

    def observe(self) -> ObservationPass:
        """Read what runs, in one list call per kind, whatever the number of deployments.

        1. Deployments (managed selector): one Observation per deployment id, with desired replicas (spec),
           status counts, conditions and the generation last applied (annotation).
        2. Pods (managed selector): PodStates on their deployment's Observation; ready pods with an IP are
           its endpoints.
        3. Events of the namespace (they carry no labels, so one unfiltered list): kept when they concern
           one of our Deployments, its ReplicaSets or its Pods; newest first.
        4. Services, PodDisruptionBudgets, HPAs and ScaledObjects: only their ids, so that objects left
           without a Deployment (orphans, half-done deletions) show in `owned_ids`. A 404 on ScaledObjects
           means KEDA is not installed: none.
        Seven calls in all, counted in `api_calls`. NetworkPolicies are not read: delete removes them by
        label with the rest, and one left behind selects pods that no longer exist, which is harmless.
        """
        seen = ObservationPass(observations={})
        by_name: dict[tuple[str, str], int] = {}  # (kind, name) → deployment id, to place events

        for item in self._list(DEPLOYMENT, seen):
            deployment_id = _deployment_id(item)
            if deployment_id is None:
                continue
            seen.observations[deployment_id] = _deployment_observation(deployment_id, item)
            by_name[("Deployment", item["metadata"]["name"])] = deployment_id

        for item in self._list(POD, seen):
            deployment_id = _deployment_id(item)
            observation = seen.observations.get(deployment_id) if deployment_id is not None else None
            if observation is None:
                continue
            pod = _pod_state(item)
            observation.pods.append(pod)
            by_name[("Pod", pod.name)] = observation.deployment_id
            if pod.ready and pod.address and not item["metadata"].get("deletionTimestamp"):
                observation.endpoints.append(pod.address)

        events = self._list(EVENT, seen, managed_only=False)
        for item in sorted(events, key=_event_time, reverse=True):
            deployment_id = _event_owner(item.get("involvedObject") or {}, by_name)
            if deployment_id is not None and deployment_id in seen.observations:
                seen.observations[deployment_id].events.append(_event_state(item))

        for kind in (SERVICE, PDB, HPA, SCALED_OBJECT):
            for item in self._list(kind, seen):
                deployment_id = _deployment_id(item)
                if deployment_id is not None:
                    seen.owned_ids.add(deployment_id)

        for observation in seen.observations.values():
            observation.endpoints.sort()
        return seen

    def nodes(self) -> list[NodeState]:
        """The cluster's nodes (one list call; needs `list` on nodes in the platform's ClusterRole), with
        their allocatable GPUs and the GPU product label the manifests' nodeSelectors use."""
        reply = self._request("listing Nodes", "list", NODE)
        return [_node_state(item) for item in reply.get("items") or []]

    # Training runs (learning.tuning_kube): a Secret and a Job per tuning job, labelled with its id.

    def apply_training(self, objects: list[dict[str, Any]]) -> None:
        """Server-side apply a training run's objects; the same objects twice change nothing, so a
        resumed worker re-attaches to the Job already running."""
        for obj in objects:
            if (obj.get("apiVersion"), obj.get("kind")) not in TRAINING_KINDS:
                raise ValueError(f"A training run is a Secret and a Job, not {obj.get('kind')}.")
            self._apply_object(obj)

    def training_state(self, job_id: int) -> TrainingState:
        """Where a tuning job's training Job is (three calls: the Job, its pods, the newest pod's log)."""
        selector = f"{TRAINING_SELECTOR},{TRAINING_JOB_LABEL}={job_id}"
        jobs = self._request("listing training Jobs", "list", JOB, label_selector=selector).get("items") or []
        if not jobs:
            return TrainingState(phase=TRAINING_MISSING)
        status = jobs[0].get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        pods = self._request("listing training pods", "list", POD, label_selector=selector).get("items") or []
        pods.sort(key=lambda pod: pod["metadata"].get("creationTimestamp") or "")
        pod = _pod_state(pods[-1]) if pods else None
        log = self._log(pod.name) if pod is not None and pod.phase != "Pending" else ""
        if "Complete" in conditions:
            return TrainingState(phase=TRAINING_SUCCEEDED, pod=pod, log=log)
        if "Failed" in conditions:
            failed = conditions["Failed"]
            message = failed.get("message") or failed.get("reason") or "the Job failed"
            return TrainingState(phase=TRAINING_FAILED, message=str(message), pod=pod, log=log)
        return TrainingState(phase=TRAINING_RUNNING, pod=pod, log=log)

    def delete_training(self, job_id: int) -> None:
        """Delete a training run's Job (its pods with it) and Secret; gone already is done."""
        selector = f"{TRAINING_SELECTOR},{TRAINING_JOB_LABEL}={job_id}"
        for kind in (JOB, SECRET):
            self._delete_collection(
                kind, selector, f"deleting the training {kind.kind}s of tuning job {job_id}"
            )

    def training_job_ids(self) -> set[int]:
        """The tuning jobs that have a training Job in the cluster (one call), for the reconciler to find
        runs nobody wants any more."""
        reply = self._request("listing training Jobs", "list", JOB, label_selector=TRAINING_SELECTOR)
        found = set()
        for item in reply.get("items") or []:
            value = (item["metadata"].get("labels") or {}).get(TRAINING_JOB_LABEL, "")
            if value.isdigit():
                found.add(int(value))
        return found

    def _log(self, pod: str) -> str:
        try:
            response = self._apis["CoreV1Api"].read_namespaced_pod_log(
                pod, self.cluster.namespace, container="trainer", tail_lines=LOG_TAIL_LINES,
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
            return bytes(response.data).decode("utf-8", errors="replace")
        except client.ApiException as error:
            if int(error.status or 0) in (400, 404):  # the container has not started, or the pod is gone
                return ""
            raise self._api_error(error, f"reading the log of {pod}") from error
        except urllib3.exceptions.HTTPError as error:
            raise TransientBackendError(
                f"The Kubernetes API at {self._host()} cannot be reached while reading {pod}'s log: "
                f"{_reason(error)}."
            ) from error

    # Requests.

    def _apply_object(self, obj: dict[str, Any]) -> None:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        kind = APPLIED_KINDS.get(key) or TRAINING_KINDS.get(key)
        if kind is None:
            raise ValueError(f"The kubernetes backend cannot apply {obj.get('apiVersion')} {obj.get('kind')}")
        name = obj["metadata"]["name"]
        try:
            self._request(
                f"applying {kind.kind} {name}",
                "patch",
                kind,
                name,
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )
        except _Refused as error:
            if error.status != 404:
                raise
            if error.namespace_missing:
                missing = self._namespace_missing()
                raise PermanentBackendError(missing, public=missing) from error
            if kind is SCALED_OBJECT:
                raise PermanentBackendError(KEDA_MISSING, public=KEDA_MISSING) from error
            raise

    def _delete_named(self, kind: _Kind, name: str) -> None:
        try:
            self._request(f"deleting {kind.kind} {name}", "delete", kind, name)
        except _Refused as error:
            if error.status != 404:  # gone already, or the kind is not installed: either way, done
                raise

    def _delete_collection(self, kind: _Kind, selector: str, action: str) -> None:
        options: dict[str, Any] = {"label_selector": selector}
        if not kind.custom:
            options["propagation_policy"] = "Background"
        try:
            self._request(action, "delete_collection", kind, **options)
        except _Refused as error:
            if error.status == 404:
                return
            if error.status != 405:
                raise
            # Older API servers have no delete-collection for Services: delete them one by one.
            reply = self._request(action, "list", kind, label_selector=selector)
            for item in reply.get("items") or []:
                self._delete_named(kind, item["metadata"]["name"])

    def _list(self, kind: _Kind, seen: ObservationPass, *, managed_only: bool = True) -> list[dict[str, Any]]:
        """One list call in the namespace (only the platform's objects unless told), counted in `seen`."""
        options: dict[str, Any] = {"label_selector": manifests.MANAGED_SELECTOR} if managed_only else {}
        seen.api_calls += 1
        try:
            reply = self._request(f"listing {kind.kind}s", "list", kind, **options)
        except _Refused as error:
            if error.status == 404 and kind.custom:
                return []
            raise
        return list(reply.get("items") or [])

    def _request(
        self, action: str, verb: str, kind: _Kind, name: str | None = None, body: Any = None, **options: Any
    ) -> dict[str, Any]:
        """Call `verb` (patch, delete, delete_collection, list) on `kind` in our namespace; the reply as JSON.

        Client and transport errors become TransientBackendError or PermanentBackendError (`_Refused`
        for a 4xx) with a message for a person; `action` says what was being done.
        """
        api = self._apis[kind.api]
        args: list[Any]
        if kind.custom:
            group, version = kind.api_version.split("/")
            method = getattr(api, f"{verb}_namespaced_custom_object")
            args = [group, version, self.cluster.namespace, kind.plural]
            if name is not None:
                args.append(name)
        else:
            method = getattr(api, f"{verb}_{kind.suffix}")
            namespace = [self.cluster.namespace] if kind.namespaced else []
            args = namespace if name is None else [name, *namespace]
        if body is not None:
            args.append(body)
        try:
            response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **options)
            data = response.data
        except client.ApiException as error:
            raise self._api_error(error, action) from error
        except urllib3.exceptions.HTTPError as error:
            raise TransientBackendError(
                f"The Kubernetes API at {self._host()} cannot be reached while {action}: {_reason(error)}."
            ) from error
        try:
            return json.loads(data) if data else {}
        except ValueError as error:
            raise TransientBackendError(
                f"The Kubernetes API sent an unreadable reply while {action}."
            ) from error

    def _api_error(self, error: Any, action: str) -> Exception:
        """A person-readable backend error for an ApiException (0 means no HTTP reply: TLS, proxy)."""
        status = int(error.status or 0)
        reply = _status_reply(error.body)
        detail = reply.get("message") or error.reason or "no details given"
        if status == 0:
            return TransientBackendError(
                f"The Kubernetes API at {self._host()} cannot be reached while {action}: {detail}."
            )
        if status == 429:
            return TransientBackendError(f"The Kubernetes API is rate limiting the platform while {action}.")
        if status >= 500:
            return TransientBackendError(f"The Kubernetes API failed while {action} ({status}): {detail}.")
        if status == 409:
            return TransientBackendError(f"Kubernetes reported a conflict while {action}: {detail}.")
        if status == 401:
            message = (
                f"The Kubernetes API rejected the platform's credentials while {action} (401): check "
                "KUBECONFIG or the service account token."
            )
        elif status == 403:
            message = (
                f"The platform is not allowed to do this in namespace {self.cluster.namespace} while "
                f"{action} (403): {detail}. Grant it in the platform's Role."
            )
        else:
            message = f"Kubernetes refused the request while {action} ({status}): {detail}."
        return _Refused(message, status, reply.get("details") or {})

    def _namespace_missing(self) -> str:
        return (
            f"The namespace {self.cluster.namespace} does not exist in the cluster: create it or set "
            "KUBERNETES_NAMESPACE."
        )

    def _host(self) -> str:
        return str(getattr(self.api_client.configuration, "host", "") or "(unknown host)")


# Reading objects (plain JSON) into observations.


def _deployment_id(obj: dict[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(manifests.DEPLOYMENT_ID_LABEL, "")
    try:
        return int(value)
    except ValueError:
        return None


def _deployment_observation(deployment_id: int, obj: dict[str, Any]) -> Observation:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    try:
        generation: int | None = int((metadata.get("annotations") or {})[manifests.GENERATION_ANNOTATION])
    except (KeyError, ValueError):
        generation = None
    desired = spec.get("replicas")
    return Observation(
        deployment_id=deployment_id,
        generation=generation,
        # spec.replicas is what we or an autoscaler want (0 when scaled to zero); status.replicas is what is.
        desired_replicas=int(desired if desired is not None else status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        conditions={
            condition["type"]: (
                condition.get("status", ""),
                condition.get("reason", ""),
                condition.get("message", ""),
            )
            for condition in status.get("conditions") or []
            if condition.get("type")
        },
    )


def _pod_state(obj: dict[str, Any]) -> PodState:
    status = obj.get("status") or {}
    conditions = {condition.get("type"): condition for condition in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    unscheduled = scheduled.get("status") == "False"
    ip = status.get("podIP") or ""
    address = ""
    if ip:
        address = f"http://[{ip}]:{manifests.PORT}" if ":" in ip else f"http://{ip}:{manifests.PORT}"
    # Init containers first: a failing model download stops the engine before it starts.
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return PodState(
        name=obj["metadata"]["name"],
        phase=status.get("phase") or "Unknown",
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        containers=tuple(_container_state(item) for item in statuses),
        unschedulable_message=scheduled.get("message", "") if unscheduled else "",
        unschedulable_since=_timestamp(scheduled.get("lastTransitionTime")) if unscheduled else None,
        address=address,
    )


def _timestamp(value: Any) -> datetime | None:
    """An API server's RFC 3339 time (`2026-12-03T10:00:00Z`), or None when absent or unreadable."""
    try:
        return parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _container_state(item: dict[str, Any]) -> ContainerState:
    waiting = (item.get("state") or {}).get("waiting") or {}
    terminated = (item.get("lastState") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    return ContainerState(
        name=item.get("name", ""),
        ready=bool(item.get("ready")),
        restart_count=int(item.get("restartCount") or 0),
        waiting_reason=waiting.get("reason", ""),
        waiting_message=waiting.get("message", ""),
        last_terminated_reason=terminated.get("reason", ""),
        last_exit_code=int(exit_code) if exit_code is not None else None,
    )


def _node_state(obj: dict[str, Any]) -> NodeState:
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    allocatable = status.get("allocatable") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return NodeState(
        name=metadata.get("name", ""),
        gpu_product=(metadata.get("labels") or {}).get(GPU_PRODUCT_LABEL, ""),
        gpus=_quantity(allocatable.get(GPU_RESOURCE, 0)),
        cpu_cores=_cpu(allocatable.get("cpu", 0)),
        ready=conditions.get("Ready") == "True",
        schedulable=not (obj.get("spec") or {}).get("unschedulable", False),
    )


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _cpu(value: Any) -> float:
    """A CPU quantity: "8" or "7910m" → cores."""
    text = str(value)
    try:
        return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 0


def _event_owner(involved: dict[str, Any], by_name: dict[tuple[str, str], int]) -> int | None:
    """The deployment id an event is about: one of our Pods or Deployments, or a ReplicaSet of one of our
    Deployments (`<deployment>-<pod-template-hash>`, where e.g. quota refusals are reported)."""
    kind, name = involved.get("kind", ""), involved.get("name", "")
    if kind == "ReplicaSet":
        kind, name = "Deployment", name.rsplit("-", 1)[0]
    return by_name.get((kind, name))


def _event_time(obj: dict[str, Any]) -> str:
    # RFC 3339 timestamps in UTC sort as strings.
    return str(
        obj.get("lastTimestamp")
        or obj.get("eventTime")
        or (obj.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def _event_state(obj: dict[str, Any]) -> EventState:
    count = obj.get("count") or (obj.get("series") or {}).get("count") or 1
    return EventState(
        object_name=(obj.get("involvedObject") or {}).get("name", ""),
        reason=obj.get("reason", ""),
        message=obj.get("message", ""),
        type=obj.get("type") or "Normal",
        count=int(count),
    )


def _status_reply(body: Any) -> dict[str, Any]:
    """The Status object of an error reply, or {} when the body is not one (a proxy's HTML page)."""
    try:
        reply = json.loads(body) if body else {}
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}


def _reason(error: urllib3.exceptions.HTTPError) -> str:
    """MaxRetryError wraps the real cause (refused, timed out, name not resolved)."""
    cause = getattr(error, "reason", None) or error
    return str(cause)
