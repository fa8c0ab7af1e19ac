"""From what a backend saw to a status and a sentence for a person. Pure: no database, no network.

1. No objects at all: the deployment still has to be created (PENDING stays, or PROVISIONING goes back).
2. Problems that need a person are FAILED with what to do: image pulls, crash loops, out-of-memory kills,
   startup probes that never pass, no node with enough free GPUs (after a grace period, since a cluster
   autoscaler may be adding one).
3. At least one replica ready: READY (or UPDATING while a new generation rolls out), with counts.
4. The Deployment's own conditions: the controller cannot create pods (ReplicaFailure: a namespace
   ResourceQuota, an admission webhook; FAILED after the same grace period as a missing node, since the
   controller keeps retrying) or the rollout missed its progress deadline: FAILED when nothing serves,
   UPDATING saying the rollout is stuck when old replicas do. The controller's own text stays in the
   cluster's events: it can name other tenants' usage of a shared namespace or in-cluster addresses.
5. Otherwise PROVISIONING, saying what it waits for (a node, the image, the model to load).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from serving.backends.base import Observation, PodState
from serving.choices import DeploymentStatus
from serving.manifests import FETCH_CONTAINER

# A pod may wait this long for a GPU node before we call it failed: cluster autoscalers need minutes.
UNSCHEDULABLE_GRACE_SECONDS = 600
CRASH_LOOP_RESTARTS = 3


@dataclass(frozen=True)
class Assessment:
    status: DeploymentStatus
    message: str
    ready_replicas: int
    desired_replicas: int
    endpoints: tuple[str, ...] = ()
    observed_generation: int | None = None


def _gpu_shortage(text: str) -> str | None:
    """'0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint…'"""
    if "nvidia.com/gpu" not in text:
        return None
    match = re.search(r"0/(\d+) nodes are available", text)
    short = re.search(r"(\d+) Insufficient nvidia\.com/gpu", text)
    if match and short:
        return f"{short.group(1)} of {match.group(1)} nodes lack enough free GPUs"
    return "no node has enough free GPUs"


def _pod_problem(pod: PodState) -> tuple[bool, str] | None:
    """(permanent, sentence) for the first problem of a pod, if any."""
    for container in pod.containers:
        if container.waiting_reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            return True, (
                f"The engine image cannot be pulled ({container.waiting_reason}): check VLLM_IMAGE and the "
                f"cluster's access to the registry. {container.waiting_message}".strip()
            )
        if container.last_terminated_reason == "OOMKilled":
            return True, (
                "The engine ran out of memory and was killed (OOMKilled): choose an instance type with more "
                "memory, or lower max model length or max concurrent sequences."
            )
        if container.name == FETCH_CONTAINER and container.waiting_reason == "CrashLoopBackOff":
            return True, (
                "The deployment's LoRA adapters could not be fetched from the platform's object store after "
                f"{container.restart_count} attempts: the replica's {FETCH_CONTAINER} log names the adapter "
                "and the error. A platform admin can check that the GPU nodes reach the object store; "
                "deleting and creating the deployment again retries."
            )
        if container.waiting_reason == "CrashLoopBackOff":
            code = f" (exit code {container.last_exit_code})" if container.last_exit_code is not None else ""
            return True, (
                f"The engine keeps crashing{code} after {container.restart_count} restarts: "
                "see the replica's "
                "log; a wrong engine option or a model the engine cannot load are the usual causes."
            )
    return None


def _condition_problem(observation: Observation) -> tuple[bool, str] | None:
    """(controller retries, sentence) for a Deployment condition that says the controller is stuck."""
    status, reason, message = observation.conditions.get("ReplicaFailure", ("", "", ""))
    if status == "True":
        if "exceeded quota" in message:
            why = "the serving namespace's ResourceQuota has no room for them"
        else:
            why = f"the cluster refused them ({reason or 'ReplicaFailure'})"
        return True, (
            f"Kubernetes cannot create the replicas: {why}. A platform admin can see the details in the "
            "cluster's events for this deployment and make room, or you can lower max replicas."
        )
    status, reason, _ = observation.conditions.get("Progressing", ("", "", ""))
    if status == "False" and reason == "ProgressDeadlineExceeded":
        return False, (
            "The rollout made no progress within its deadline (ProgressDeadlineExceeded): see the "
            "deployment's history above; scaling down or deleting it frees what it holds."
        )
    return None


def assess(
    observation: Observation | None,
    *,
    current: DeploymentStatus,
    generation: int,
    instance_description: str,
    seconds_in_status: float,
) -> Assessment:
    """What the deployment's status should be, given one observation (None: nothing exists)."""
    if observation is None:
        status = (
            DeploymentStatus.PENDING if current == DeploymentStatus.PENDING else DeploymentStatus.PROVISIONING
        )
        return Assessment(status, "Creating the engine's objects.", 0, 0)

    desired = observation.desired_replicas
    ready = observation.ready_replicas
    rolled_out = observation.generation == generation
    endpoints = tuple(observation.endpoints)

    for pod in observation.pods:
        problem = _pod_problem(pod)
        if problem:
            return Assessment(
                DeploymentStatus.FAILED, problem[1], ready, desired, endpoints, observation.generation
            )

    startup_failures = [
        e for e in observation.events if e.reason == "Unhealthy" and "Startup probe" in e.message
    ]
    unscheduled = [p.unschedulable_message for p in observation.pods if p.unschedulable_message]
    unscheduled += [e.message for e in observation.events if e.reason == "FailedScheduling"]

    condition = _condition_problem(observation)
    stuck = condition[1] if condition else None

    if ready >= 1:
        if not rolled_out or observation.updated_replicas < desired:
            message = f"Rolling out the change: {ready} of {desired} replicas ready."
            if stuck:
                message = f"{ready} of {desired} replicas still serve, but the change is stuck. {stuck}"
            return Assessment(
                DeploymentStatus.UPDATING, message, ready, desired, endpoints, observation.generation
            )
        if ready < desired:
            message = f"{ready} of {desired} replicas ready; starting the others."
            if unscheduled:  # say why they wait
                message += f" {(_gpu_shortage(unscheduled[0]) or unscheduled[0]).rstrip('.')}."
        else:
            message = f"Ready: {ready} of {desired} replicas serving."
        placement = observation.conditions.get("Placement")  # the local backend's CPU cores
        if placement:
            message += f" {placement[2]}"
        return Assessment(DeploymentStatus.READY, message, ready, desired, endpoints, observation.generation)

    if desired == 0:
        message = "Scaled to zero while idle; the next request starts a replica."
        return Assessment(DeploymentStatus.READY, message, 0, 0, endpoints, observation.generation)

    if unscheduled:
        shortage = _gpu_shortage(unscheduled[0])
        reason = shortage or unscheduled[0]
        if seconds_in_status > UNSCHEDULABLE_GRACE_SECONDS:
            message = (
                f"No node can take a replica on {instance_description}: {reason}. "
                "Free GPUs, add nodes of this "
                "instance type, or choose another instance type."
                if shortage
                else f"No room for a replica on {instance_description}: {reason.rstrip('.')}."
            )
            return Assessment(DeploymentStatus.FAILED, message, 0, desired, (), observation.generation)
        message = (
            f"Waiting for a node with free GPUs on {instance_description}: {reason}."
            if shortage
            else f"Waiting for room for a replica on {instance_description}: {reason.rstrip('.')}."
        )
        return Assessment(DeploymentStatus.PROVISIONING, message, 0, desired, (), observation.generation)

    if len(startup_failures) >= 1 and any(e.count >= 3 for e in startup_failures):
        message = (
            "The engine did not become healthy within its startup time: the model may be too slow to load "
            "here, or failing to load; see the replica's log."
        )
        return Assessment(DeploymentStatus.FAILED, message, 0, desired, (), observation.generation)

    if condition:
        retried, sentence = condition
        if retried and seconds_in_status <= UNSCHEDULABLE_GRACE_SECONDS:
            return Assessment(
                DeploymentStatus.PROVISIONING, f"Retrying. {sentence}", 0, desired, (), observation.generation
            )
        return Assessment(DeploymentStatus.FAILED, sentence, 0, desired, (), observation.generation)

    if any(p.phase == "Running" for p in observation.pods):
        message = f"Loading the model: 0 of {desired} replicas ready."
    elif observation.pods:
        message = f"Starting replicas on {instance_description} (pulling the image, preparing volumes)."
    else:
        message = f"Creating {desired} replica{'s' if desired != 1 else ''} on {instance_description}."
    status = (
        DeploymentStatus.UPDATING if current == DeploymentStatus.UPDATING else DeploymentStatus.PROVISIONING
    )
    return Assessment(status, message, 0, desired, (), observation.generation)
