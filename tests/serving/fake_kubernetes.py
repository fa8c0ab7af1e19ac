"""A small stateful fake of the Kubernetes API, for testing the kubernetes backend without a cluster.

No API server can run on these machines (ENVIRONMENT.md), so this serves exactly the paths the backend
calls, over real HTTP on 127.0.0.1, so the official client is exercised end to end:

- PATCH one object with `application/apply-patch+yaml` (server-side apply): creates it when missing,
  otherwise deep-merges the applied fields into the stored object (maps merge, lists and scalars are
  replaced). That is simpler than real apply, which also removes fields the manager stopped applying.
  The server adds metadata.uid, resourceVersion, creationTimestamp and generation (bumped when spec
  changes).
- GET one; LIST with `labelSelector` (equality only: `a=b,c=d`; `fieldSelector` is ignored).
- DELETE one (a Success Status) and DELETE collection by `labelSelector` (the list of deleted objects,
  as a real server answers).
- Nodes (cluster-wide): GET one and LIST; tests place them with `add_node`.
- Secrets and batch/v1 Jobs (a tuning job's training run), and GET …/pods/<name>/log as plain text: tests
  play the kubelet and the Job controller with `add_pod`, `set_log` and `set_job_condition`.
- 404 Status replies for missing objects and for unknown resources: with `crds_installed=False` the KEDA
  ScaledObject resource is unknown, as in a cluster without KEDA. With `namespaces` given, writes into
  any other namespace get the real server's "namespace not found" reply.

It records every request (method, path, query) so tests can count API calls, and `fail_next(status,
times)` makes the next requests fail. Nothing runs controllers: tests place pods, events and Deployment
status with `add_pod`, `add_event` and `set_deployment_status`.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NAMESPACE = "marketplace-serving"
APPLY_PATCH = "application/apply-patch+yaml"

# (group/version, plural) → kind, for the resources the fake serves.
RESOURCES = {
    ("v1", "pods"): "Pod",
    ("v1", "services"): "Service",
    ("v1", "events"): "Event",
    ("apps/v1", "deployments"): "Deployment",
    ("policy/v1", "poddisruptionbudgets"): "PodDisruptionBudget",
    ("autoscaling/v2", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
    ("networking.k8s.io/v1", "networkpolicies"): "NetworkPolicy",
    ("v1", "secrets"): "Secret",
    ("batch/v1", "jobs"): "Job",
}
CRDS = {("keda.sh/v1alpha1", "scaledobjects"): "ScaledObject"}
# Cluster-wide resources (no namespace in their path); stored under the namespace "".
CLUSTER_RESOURCES = {("v1", "nodes"): "Node"}

Key = tuple[str, str, str, str]  # (group/version, plural, namespace, name)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str = ""
    body: Any = None


@dataclass
class _Failure:
    status: int
    times: int
    message: str


@dataclass
class FakeKubernetes:
    crds_installed: bool = True
    namespaces: set[str] | None = None  # None: every namespace exists
    no_delete_collection: set[str] = field(default_factory=set)  # plurals answering 405, as old servers do
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, pod) → its log

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._holds: list[tuple[str, str, threading.Event, threading.Event]] = []
        self._versions = itertools.count(1)
        self._ips = itertools.count(2)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def start(self) -> FakeKubernetes:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            # A short poll interval: stop() waits for it, once per test.
            target=self._server.serve_forever,
            args=(0.05,),
            name="fake-kubernetes",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # For tests.

    def hold_next(self, method: str, plural: str) -> tuple[threading.Event, threading.Event]:
        """The next `method` request on `plural` waits, unanswered and not applied, until released:
        (reached, release). For catching a client in the middle of a call, say to kill it there."""
        reached, release = threading.Event(), threading.Event()
        with self._lock:
            self._holds.append((method, plural, reached, release))
        return reached, release

    def fail_next(self, status: int, times: int = 1, message: str = "injected failure") -> None:
        """The next `times` requests (any path) get `status` with a Status reply."""
        with self._lock:
            self._failures.append(_Failure(status, times, message))

    def calls(self, method: str | None = None, plural: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, optionally only one method and/or one resource (by plural)."""
        return [
            request
            for request in self.requests
            if (method is None or request.method == method)
            and (plural is None or _parse_path(request.path)[1] == plural)
        ]

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def get(
        self, group_version: str, plural: str, name: str, namespace: str = NAMESPACE
    ) -> dict[str, Any] | None:
        with self._lock:
            obj = self.objects.get((group_version, plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, group_version: str, plural: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (gv, kind_plural, ns, _), obj in sorted(self.objects.items())
                if (gv, kind_plural, ns) == (group_version, plural, namespace)
            ]

    def add_object(self, group_version: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Place any object as another actor would (a controller, a person with kubectl)."""
        namespace = obj.get("metadata", {}).get("namespace") or NAMESPACE
        with self._lock:
            return self._store((group_version, plural, namespace, obj["metadata"]["name"]), obj, created=True)

    def add_pod(
        self,
        name: str,
        labels: dict[str, str],
        phase: str = "Running",
        ready: bool = True,
        *,
        container_statuses: list[dict[str, Any]] | None = None,
        conditions: list[dict[str, Any]] | None = None,
        init_container_statuses: list[dict[str, Any]] | None = None,
        pod_ip: str | None = None,
        namespace: str = NAMESPACE,
    ) -> dict[str, Any]:
        """A pod as the Deployment's ReplicaSet would make it; `conditions` replace the default Ready one."""
        if conditions is None:
            conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        if container_statuses is None:
            container_statuses = [
                {"name": "engine", "ready": ready, "restartCount": 0, "state": {"running": {}}}
            ]
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": container_statuses,
        }
        if init_container_statuses is not None:
            status["initContainerStatuses"] = init_container_statuses
        if phase != "Pending" or pod_ip:
            status["podIP"] = pod_ip or f"10.0.0.{next(self._ips)}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"containers": [{"name": "engine"}]},
            "status": status,
        }
        with self._lock:
            self._store(("v1", "pods", namespace, name), pod, created=True)
        return pod

    def add_event(
        self,
        involved_name: str,
        reason: str,
        message: str,
        type: str = "Warning",
        *,
        involved_kind: str = "Pod",
        count: int = 1,
        last_timestamp: str | None = None,
        namespace: str = NAMESPACE,
    ) -> dict[str, Any]:
        """A core/v1 Event about an object; like real events it has no labels."""
        name = f"{involved_name}.{uuid.uuid4().hex[:16]}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {"kind": involved_kind, "name": involved_name, "namespace": namespace},
            "reason": reason,
            "message": message,
            "type": type,
            "count": count,
            "lastTimestamp": last_timestamp or _now(),
        }
        with self._lock:
            self._store(("v1", "events", namespace, name), event, created=True)
        return event

    def add_node(
        self,
        name: str,
        *,
        gpu_product: str = "",
        gpus: int = 0,
        cpu: str = "8",
        ready: bool = True,
        unschedulable: bool = False,
    ) -> dict[str, Any]:
        """A node as the kubelet and GPU Feature Discovery describe it: allocatable `nvidia.com/gpu` and
        the `nvidia.com/gpu.product` label when it has GPUs."""
        labels = {"kubernetes.io/hostname": name}
        allocatable = {"cpu": cpu, "memory": "64Gi", "pods": "110"}
        if gpus:
            labels["nvidia.com/gpu.product"] = gpu_product
            allocatable["nvidia.com/gpu"] = str(gpus)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {
                "allocatable": allocatable,
                "capacity": dict(allocatable),
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
        with self._lock:
            self._store(("v1", "nodes", "", name), node, created=True)
        return node

    def set_deployment_status(
        self,
        name: str,
        *,
        replicas: int = 0,
        ready_replicas: int = 0,
        available_replicas: int | None = None,
        updated_replicas: int | None = None,
        conditions: list[dict[str, Any]] | None = None,
        namespace: str = NAMESPACE,
    ) -> None:
        """What the Deployment controller would write into an applied Deployment's status."""
        with self._lock:
            deployment = self.objects[("apps/v1", "deployments", namespace, name)]
            deployment["status"] = {
                "observedGeneration": deployment["metadata"].get("generation", 1),
                "replicas": replicas,
                "readyReplicas": ready_replicas,
                "availableReplicas": ready_replicas if available_replicas is None else available_replicas,
                "updatedReplicas": replicas if updated_replicas is None else updated_replicas,
                "conditions": conditions or [],
            }

    # Serving (called from the handler's threads).

    def handle(self, method: str, raw_path: str, content_type: str, raw_body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)  # the client sends JSON, which is also valid YAML
            except ValueError:
                return _status(400, "BadRequest", "the fake reads JSON bodies only")
        with self._lock:
            hold = next(
                (h for h in self._holds if h[0] == method and _parse_path(parts.path)[1] == h[1]), None
            )
            if hold is not None:
                self._holds.remove(hold)
        if hold is not None:
            hold[2].set()
            hold[3].wait()
            return _status(503, "ServiceUnavailable", "held by the test, then released")
        with self._lock:
            self.requests.append(RecordedRequest(method, parts.path, query, content_type, body))
            if self._failures:
                failure = self._failures[0]
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.pop(0)
                return _status(
                    failure.status, HTTPStatus(failure.status).phrase.replace(" ", ""), failure.message
                )
            log_of = _log_path(parts.path)
            if log_of is not None and method == "GET":
                if (log_of[0], log_of[1]) not in self.logs:
                    return _not_found("pods", "", log_of[1])
                return 200, self.logs[(log_of[0], log_of[1])]
            group_version, plural, namespace, name = _parse_path(parts.path)
            kind = RESOURCES.get((group_version, plural))
            if kind is None and self.crds_installed:
                kind = CRDS.get((group_version, plural))
            if kind is None and not namespace and method == "GET":
                kind = CLUSTER_RESOURCES.get((group_version, plural))
                if kind is not None:
                    namespace = ""
                    resource = _Resource(group_version, plural, kind, namespace)
                    return self._get(resource, name) if name else self._list(resource, query)
            if kind is None or not namespace:
                return _status(404, "NotFound", "the server could not find the requested resource")
            resource = _Resource(group_version, plural, kind, namespace)
            writes = method in ("PATCH", "DELETE")
            if writes and self.namespaces is not None and namespace not in self.namespaces:
                return _not_found("namespaces", "", namespace)
            if method == "GET" and name:
                return self._get(resource, name)
            if method == "GET":
                return self._list(resource, query)
            if method == "PATCH" and name:
                return self._apply(resource, name, query, content_type, body)
            if method == "DELETE" and name:
                return self._delete(resource, name)
            if method == "DELETE":
                return self._delete_collection(resource, query)
            return _status(405, "MethodNotAllowed", f"the fake does not serve {method} {parts.path}")

    def set_job_condition(
        self, name: str, condition: str, message: str = "", namespace: str = NAMESPACE
    ) -> None:
        """The Job controller's verdict on a Job: `Complete` or `Failed` (with the controller's message)."""
        with self._lock:
            job = self.objects[("batch/v1", "jobs", namespace, name)]
            counts = {"succeeded": 1} if condition == "Complete" else {"failed": 1}
            job["status"] = {
                **counts,
                "conditions": [{"type": condition, "status": "True", "message": message}],
            }

    def set_log(self, pod: str, text: str, namespace: str = NAMESPACE) -> None:
        """What GET …/pods/<pod>/log answers (text/plain), as a kubelet would serve a container's output."""
        with self._lock:
            self.logs[(namespace, pod)] = text

    def _get(self, resource: _Resource, name: str) -> tuple[int, dict[str, Any]]:
        obj = self.objects.get(resource.key(name))
        if obj is None:
            return _not_found(resource.plural, resource.group, name)
        return 200, copy.deepcopy(obj)

    def _list(self, resource: _Resource, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        selector = _parse_selector(query.get("labelSelector", [""])[0])
        items = [copy.deepcopy(obj) for obj in self._matching(resource, selector)]
        return 200, {
            "apiVersion": resource.group_version,
            "kind": f"{resource.kind}List",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    def _apply(
        self, resource: _Resource, name: str, query: dict[str, list[str]], content_type: str, body: Any
    ) -> tuple[int, dict[str, Any]]:
        if content_type != APPLY_PATCH:
            return _status(
                415, "UnsupportedMediaType", f"the fake serves server-side apply only, not {content_type}"
            )
        if not query.get("fieldManager"):
            return _status(400, "BadRequest", "fieldManager is required for apply requests")
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the applied object must be a map")
        metadata = body.get("metadata") or {}
        if metadata.get("name") != name:
            return _status(
                400,
                "BadRequest",
                f"the name of the object ({metadata.get('name')}) does not match the URL ({name})",
            )
        if (body.get("apiVersion"), body.get("kind")) != (resource.group_version, resource.kind):
            return _status(400, "BadRequest", f"expected {resource.group_version} {resource.kind}")
        if metadata.get("namespace", resource.namespace) != resource.namespace:
            return _status(400, "BadRequest", "the namespace of the object does not match the URL")
        key = resource.key(name)
        stored = self.objects.get(key)
        if stored is None:
            return 201, self._store(key, copy.deepcopy(body), created=True)
        merged = _deep_merge(copy.deepcopy(stored), body)
        if merged.get("spec") != stored.get("spec"):
            merged["metadata"]["generation"] = stored["metadata"].get("generation", 1) + 1
        return 200, self._store(key, merged, created=False)

    def _delete(self, resource: _Resource, name: str) -> tuple[int, dict[str, Any]]:
        obj = self.objects.pop(resource.key(name), None)
        if obj is None:
            return _not_found(resource.plural, resource.group, name)
        details = {
            "name": name,
            "group": resource.group,
            "kind": resource.plural,
            "uid": obj["metadata"]["uid"],
        }
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _delete_collection(
        self, resource: _Resource, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        if resource.plural in self.no_delete_collection:
            return _status(
                405, "MethodNotAllowed", f"the server does not allow this method on {resource.plural}"
            )
        selector = _parse_selector(query.get("labelSelector", [""])[0])
        deleted = list(self._matching(resource, selector))
        for obj in deleted:
            del self.objects[resource.key(obj["metadata"]["name"])]
        return 200, {
            "apiVersion": resource.group_version,
            "kind": f"{resource.kind}List",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": deleted,
        }

    def _matching(self, resource: _Resource, selector: dict[str, str]) -> list[dict[str, Any]]:
        found = []
        for (gv, plural, namespace, _), obj in sorted(self.objects.items()):
            if (gv, plural, namespace) != (resource.group_version, resource.plural, resource.namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(key) == value for key, value in selector.items()):
                found.append(obj)
        return found

    def _store(self, key: Key, obj: dict[str, Any], *, created: bool) -> dict[str, Any]:
        metadata = obj.setdefault("metadata", {})
        if key[2]:  # cluster-wide objects (nodes) have no namespace
            metadata["namespace"] = key[2]
        metadata["resourceVersion"] = str(next(self._versions))
        if created:
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = _now()
            metadata.setdefault("generation", 1)
        self.objects[key] = obj
        return copy.deepcopy(obj)


@dataclass(frozen=True)
class _Resource:
    group_version: str
    plural: str
    kind: str
    namespace: str

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    def key(self, name: str) -> Key:
        return (self.group_version, self.plural, self.namespace, name)


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeKubernetes
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        status, reply = self.server_fake.handle(self.command, self.path, content_type, raw_body)
        text = isinstance(reply, str)  # a pod's log
        data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the recorded requests when a test needs them."""


def _parse_path(path: str) -> tuple[str, str, str, str]:
    """/api/v1/namespaces/NS/PLURAL[/NAME] or /apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME] →
    (group/version, plural, namespace, name); empty strings for what the path lacks."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group_version, rest = parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return "", "", "", ""
    if rest and rest[0] != "namespaces" and (group_version, rest[0]) in CLUSTER_RESOURCES and len(rest) <= 2:
        return group_version, rest[0], "", rest[1] if len(rest) == 2 else ""
    if len(rest) < 3 or rest[0] != "namespaces" or len(rest) > 4:
        return group_version, "", "", ""
    return group_version, rest[2], rest[1], rest[3] if len(rest) == 4 else ""


def _log_path(path: str) -> tuple[str, str] | None:
    """/api/v1/namespaces/NS/pods/NAME/log → (NS, NAME); None for any other path."""
    parts = [part for part in path.split("/") if part]
    if (
        len(parts) == 7
        and parts[:3] == ["api", "v1", "namespaces"]
        and parts[4] == "pods"
        and parts[6] == "log"
    ):
        return parts[3], parts[5]
    return None


def _parse_selector(selector: str) -> dict[str, str]:
    pairs = {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        key, _, value = term.partition("=")
        pairs[key.strip()] = value.lstrip("=").strip()  # `a==b` is the same as `a=b`
    return pairs


def _deep_merge(stored: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
    for key, value in applied.items():
        if isinstance(value, dict) and isinstance(stored.get(key), dict):
            _deep_merge(stored[key], value)
        else:
            stored[key] = copy.deepcopy(value)
    return stored


def _status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    reply = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        reply["details"] = details
    return code, reply


def _not_found(plural: str, group: str, name: str) -> tuple[int, dict[str, Any]]:
    resource = f"{plural}.{group}" if group else plural
    details = {"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural}
    return _status(404, "NotFound", f'{resource} "{name}" not found', details)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
