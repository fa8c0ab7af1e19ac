"""Named constants of the serving control plane."""

from django.db import models


class DeploymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    READY = "ready", "Ready"
    UPDATING = "updating", "Updating"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


# Statuses in which a deployment holds quota and its objects should exist.
LIVE_STATUSES = (
    DeploymentStatus.PENDING,
    DeploymentStatus.PROVISIONING,
    DeploymentStatus.READY,
    DeploymentStatus.UPDATING,
    DeploymentStatus.FAILED,
)


class AutoscalingPolicy(models.TextChoices):
    FIXED = "fixed", "Fixed replicas"
    QUEUE_DEPTH = "queue_depth", "Queue depth"
    KV_CACHE = "kv_cache", "KV-cache pressure"
    SCALE_TO_ZERO = "scale_to_zero", "Scale to zero when idle"


POLICY_EXPLANATIONS = {
    AutoscalingPolicy.FIXED: "Always run the minimum number of replicas; no autoscaling.",
    AutoscalingPolicy.QUEUE_DEPTH: (
        "Add replicas when more than the target number of requests wait in each replica's queue."
    ),
    AutoscalingPolicy.KV_CACHE: "Add replicas when the engines' KV cache is fuller than the target fraction.",
    AutoscalingPolicy.SCALE_TO_ZERO: (
        "Scale on queue depth, and to zero replicas after the idle period; the first request wakes it (KEDA)."
    ),
}


class Backend(models.TextChoices):
    KUBERNETES = "kubernetes", "Kubernetes"
    LOCAL = "local", "This machine"
