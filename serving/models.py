"""Deployments and their history (the serving control plane's rows)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from serving.choices import LIVE_STATUSES, AutoscalingPolicy, Backend, DeploymentStatus


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def live(self) -> DeploymentQuerySet:
        """Deployments that hold quota and should have objects in their backend."""
        return self.filter(status__in=LIVE_STATUSES)


class Deployment(models.Model):
    """A model served on an instance type with an autoscaling policy.

    Status moves only by conditional updates (see serving.services.transition); each move writes a
    DeploymentEvent. `generation` counts changes of what should run; `observed_generation` is the last
    generation the backend reported running, so "rolled out" means they are equal.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=40)
    model_card = models.ForeignKey(ModelCard, on_delete=models.PROTECT, related_name="deployments")
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="deployments")
    backend = models.CharField(max_length=16, choices=Backend.choices)
    min_replicas = models.PositiveSmallIntegerField(default=1)
    max_replicas = models.PositiveSmallIntegerField(default=1)
    autoscaling_policy = models.CharField(
        max_length=16, choices=AutoscalingPolicy.choices, default=AutoscalingPolicy.FIXED
    )
    autoscaling_target = models.FloatField(default=5.0)
    idle_seconds = models.PositiveIntegerField(default=900)
    scale_up_window_seconds = models.PositiveIntegerField(default=0)
    scale_down_window_seconds = models.PositiveIntegerField(default=300)
    tensor_parallel_size = models.PositiveSmallIntegerField(default=1)
    engine_options = models.JSONField(default=dict, blank=True)
    # GPUs this deployment holds against the quota: max replicas × GPUs per replica.
    reserved_gpus = models.PositiveIntegerField(default=0)
    gpu_model = models.CharField(max_length=100, blank=True)

    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING
    )
    status_message = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    ready_replicas = models.PositiveSmallIntegerField(default=0)
    desired_replicas = models.PositiveSmallIntegerField(default=0)
    generation = models.PositiveIntegerField(default=1)
    observed_generation = models.PositiveIntegerField(default=0)
    endpoints = models.JSONField(default=list, blank=True, help_text="Base URLs of ready replicas")
    # On a cluster: when the URLs its engine pods fetch LoRA adapters from were last signed (null: none);
    # the reconciler renews them before they expire (serving.services.ADAPTER_URL_RENEW_SECONDS).
    adapter_urls_signed_at = models.DateTimeField(null=True, blank=True, editable=False)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A name is unique among an organisation's live deployments; a deleted one frees it.
            models.UniqueConstraint(
                fields=["organization", "name"],
                condition=~models.Q(status=DeploymentStatus.DELETED),
                name="one_live_deployment_per_name",
            ),
            models.CheckConstraint(
                condition=models.Q(min_replicas__lte=models.F("max_replicas")), name="min_le_max"
            ),
        ]
        indexes = [models.Index(fields=["status"], name="deployment_status")]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.name}"


class DeploymentAdapter(models.Model):
    """A LoRA adapter served beside a deployment's own model, on the same engine: one base model's weights,
    many adapters, each called through the gateway as `<deployment>:<name>` (a name no deployment or router
    can have, so it never means two things). The adapter is a custom model registered on the weights the
    deployment serves (serving.services.check_adapters)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="adapters")
    # A live deployment's adapter cannot be deleted (marketplace.catalog.custom_models refuses); a deleted
    # deployment's attachment goes with the adapter.
    model_card = models.ForeignKey(ModelCard, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=40)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "name"], name="one_adapter_per_name"),
        ]

    def __str__(self) -> str:
        return self.served_name

    @property
    def served_name(self) -> str:
        return served_adapter_name(self.deployment.name, self.name)


def served_adapter_name(deployment: str, adapter: str) -> str:
    """What apps call an adapter served beside a deployment: `support:tickets`."""
    return f"{deployment}:{adapter}"


# Who acted, as a history entry names an entry nobody asked for (the reconciler, a budget's alert).
PLATFORM = "the platform"


class DeploymentEvent(models.Model):
    """One line of a deployment's history, written for a person, saying who acted.

    `actor` is the person who asked (create, scale, update, delete), or null when the platform acted
    (the reconciler, a worker, a budget) or an API key did. `actor_name` is what the history shows,
    written with the entry: the person's username or the key's name, so an entry still names who
    acted after the account or key is gone; empty means the platform.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=DeploymentStatus.choices)
    message = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.status}: {self.message} (by {self.by})"

    @property
    def by(self) -> str:
        """Who acted, for a person to read: a username, an API key, or the platform."""
        return self.actor_name or PLATFORM


class UsageRecord(models.Model):
    """One invocation through the gateway: who called what, how much it cost in tokens, how fast.

    Written off the hot path: the gateway queues records in Redis and a periodic task inserts them in
    batches. `request_id` is unique, so re-inserting a batch after a crash changes nothing.
    """

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="usage_records")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    model = models.CharField(max_length=100, help_text="The model name the caller asked for")
    route = models.CharField(max_length=40, help_text="e.g. chat.completions, embeddings, bedrock.converse")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField()
    streamed = models.BooleanField(default=False)
    router = models.CharField(
        max_length=40, blank=True, help_text="The router the caller called, which chose the deployment"
    )
    router_choice = models.CharField(
        max_length=40,
        blank=True,
        help_text="The deployment the router chose; in shadow mode, the one it would have chosen",
    )
    audio_seconds = models.PositiveIntegerField(
        default=0, help_text="Seconds of audio the call transcribed or translated (the audio routes)"
    )
    guardrail_interventions = models.JSONField(
        default=list,
        blank=True,
        help_text="What the gateway's guardrails did: [{guardrail_id, guardrail, version, direction, kind, "
        "name, action}] (serving.gateway.guardrails; never the matched text)",
    )
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="usage_org_time"),
            # A deployment's last request (serving.idle): one index probe instead of all its rows.
            models.Index(fields=["deployment", "created_at"], name="usage_deployment_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status_code}"


class UsageDay(models.Model):
    """A UTC day of UsageRecords of one organisation, deployment and API key, summed: what reports by day
    or coarser read (tokens in serving.costs, /api/usage/), so they read one row per key and deployment a
    day however many calls there were.

    Kept exact by the flush that inserts the UsageRecords (serving.gateway.metering.write_batch): in the
    same transaction it adds the rows it really inserted (an UPSERT that adds), so a batch retried after a
    crash, or two flushes racing on one record, count each record once. A record whose key or deployment
    is deleted has it nulled; its day's counts move to the row without it (serving.usage_days).
    """

    # The unique constraint's first column: its index serves lookups by organisation.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    # DO_NOTHING: deleting a deployment or key merges its rows into the null one (serving.usage_days).
    deployment = models.ForeignKey(Deployment, null=True, on_delete=models.DO_NOTHING, related_name="+")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, on_delete=models.DO_NOTHING, related_name="+")
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(
        default=0, help_text="Requests answered with a status of 400 or more"
    )
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    latency_ms = models.BigIntegerField(default=0, help_text="The sum of the requests' latencies")
    time_to_first_token_ms = models.BigIntegerField(default=0, help_text="The sum over requests that had one")
    time_to_first_token_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "deployment", "api_key", "day"],
                nulls_distinct=False,
                name="one_usage_day_per_key_and_deployment",
            )
        ]
        indexes = [models.Index(fields=["organization", "day"], name="usage_day_org_time")]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.deployment_id}/{self.api_key_id} {self.day}: {self.requests}"


class ReplicaMeter(models.Model):
    """The last observation of a deployment's ready replicas: one end of the next metered interval.

    It survives worker restarts, so the interval from this observation to the next is metered however long
    the reconciler was away (serving.costs.record_replicas says how a gap is attributed). Every reading
    from `metered_until` to `observed_at` saw `ready_replicas`; that stretch is not in ReplicaHour yet
    (written when the count changes or it is METER_FLUSH old, so a steady pass writes one timestamp).
    """

    deployment = models.OneToOneField(
        Deployment, primary_key=True, on_delete=models.CASCADE, related_name="replica_meter"
    )
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="+")
    ready_replicas = models.PositiveSmallIntegerField()
    observed_at = models.DateTimeField()
    metered_until = models.DateTimeField(help_text="ReplicaHour holds this deployment's time until here")

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.ready_replicas} ready at {self.observed_at:%Y-%m-%d %H:%M:%S}"


class ReplicaHour(models.Model):
    """Replica-seconds a deployment ran on an instance type within one UTC hour, and the hourly price in
    force at the hour's start (the system of record for costs; ReplicaDay rolls it up)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_hours")
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField()
    replica_seconds = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    hourly_price_usd = models.DecimalField(max_digits=12, decimal_places=6)
    price_is_estimate = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "instance_type", "hour"], name="one_replica_hour_per_deployment"
            )
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="replica_hour_org_time")]

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.hour:%Y-%m-%d %H}h: {self.replica_seconds} replica-seconds"


class ReplicaDay(models.Model):
    """A UTC day's ReplicaHours of one deployment and instance type, summed with their cost: what cost
    reports read, so a quarter of a thousand deployments is ~90,000 rows, not two million. Metering adds
    to it exactly what it adds to the hours; a new price version rewrites it from them (serving.costs)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_days")
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    replica_seconds = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=9, default=0)
    price_is_estimate = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "instance_type", "day"], name="one_replica_day_per_deployment"
            )
        ]
        indexes = [models.Index(fields=["organization", "day"], name="replica_day_org_time")]

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.day}: ${self.cost_usd}"


# Coarser roll-ups of ReplicaDay and UsageDay, for reports over many deployments or days. PostgreSQL keeps
# them (triggers installed by migration 0009, described in serving.cost_rollups): every statement that
# changes a daily row adds its change to them in the same transaction, so they are exact whoever writes.
# Each counts the daily rows it holds (`*_days`), so a row with nothing in it is deleted, and a report
# tells "no rows" from "rows of zero" as the daily tables do. Counters are plain integers: a trigger adds
# a change that may be negative (a day re-priced from an estimate), which a CHECK would refuse.


class ReplicaMonth(models.Model):
    """A UTC calendar month of one deployment's ReplicaDays on one instance type, summed (`month` is the
    month's first day)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="+")
    month = models.DateField()
    replica_seconds = models.DecimalField(max_digits=22, decimal_places=6, default=0, db_default=0)
    cost_usd = models.DecimalField(max_digits=26, decimal_places=9, default=0, db_default=0)
    estimated_days = models.IntegerField(default=0, db_default=0, help_text="Days priced at an estimate")
    days = models.IntegerField(default=0, db_default=0, help_text="ReplicaDay rows summed here")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "instance_type", "month"], name="one_replica_month_per_deployment"
            )
        ]
        indexes = [models.Index(fields=["organization", "month"], name="replica_month_org_time")]

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.month:%Y-%m}: ${self.cost_usd}"


class UsageMonth(models.Model):
    """A UTC calendar month of one deployment's UsageDays by one API key (None: no key, or a deleted
    one), tokens summed. Only calls a deployment answered: the tokens cost reports count."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    # DO_NOTHING: deleting a key merges its UsageDays into the rows without it, and so its months.
    api_key = models.ForeignKey("accounts.ApiKey", null=True, on_delete=models.DO_NOTHING, related_name="+")
    month = models.DateField()
    tokens = models.BigIntegerField(default=0, db_default=0, help_text="Prompt and completion tokens")
    days = models.IntegerField(default=0, db_default=0, help_text="UsageDay rows summed here")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "month", "deployment", "api_key"],
                nulls_distinct=False,
                name="one_usage_month_per_key_and_deployment",
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id}/{self.api_key_id} {self.month:%Y-%m}: {self.tokens} tokens"


class DeploymentDay(models.Model):
    """A UTC day of one deployment: its ReplicaDays (every instance type) and the tokens of its UsageDays
    (every key), summed. What reports by day and deployment read: one row per deployment a day."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    replica_seconds = models.DecimalField(max_digits=22, decimal_places=6, default=0, db_default=0)
    cost_usd = models.DecimalField(max_digits=26, decimal_places=9, default=0, db_default=0)
    estimated_days = models.IntegerField(
        default=0, db_default=0, help_text="ReplicaDays priced at an estimate"
    )
    replica_days = models.IntegerField(default=0, db_default=0, help_text="ReplicaDay rows summed here")
    tokens = models.BigIntegerField(default=0, db_default=0, help_text="Prompt and completion tokens")
    usage_days = models.IntegerField(default=0, db_default=0, help_text="UsageDay rows summed here")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "day"], name="one_deployment_day")]
        indexes = [models.Index(fields=["organization", "day"], name="deployment_day_org_time")]

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.day}: ${self.cost_usd}, {self.tokens} tokens"


class OrganizationDay(models.Model):
    """A UTC day of one organisation: its DeploymentDays summed, and how many there are (the rows of
    its report by day and deployment that day)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()
    replica_seconds = models.DecimalField(max_digits=24, decimal_places=6, default=0, db_default=0)
    cost_usd = models.DecimalField(max_digits=28, decimal_places=9, default=0, db_default=0)
    estimated_days = models.IntegerField(
        default=0, db_default=0, help_text="ReplicaDays priced at an estimate"
    )
    tokens = models.BigIntegerField(default=0, db_default=0, help_text="Prompt and completion tokens")
    deployments = models.IntegerField(default=0, db_default=0, help_text="DeploymentDay rows summed here")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "day"], name="one_organization_day")]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day}: ${self.cost_usd}"
