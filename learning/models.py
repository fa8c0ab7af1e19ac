"""Invocation logging: what an organisation chose to keep of its traffic, and the index of what is kept.

The records themselves live in the object store (learning.storage) as gzip-compressed JSON Lines, one
object per organisation, deployment and few minutes; PostgreSQL holds only the settings a person edits
and one index row per object, to find objects by time and deployment without listing the store.

A record (one line of an object) is a JSON object with these fields (`learning.records.parse_record`
checks them):
    id                       the gateway's request id (hex, ≤ 64 characters), unique per invocation
    time                     ISO 8601 with offset: when the request arrived
    organization_id          the caller's organisation
    key_prefix               the API key's visible prefix (`mk-abcdefgh`), null for the web playground
    deployment_id, deployment   the deployment that answered (id may be null once it is deleted) and its name
    route                    `openai.chat`, `openai.completions`, `openai.embeddings`, `bedrock.converse`…
    request                  the request as sent to the engine (JSON), or null when bodies are not kept
    answer                   the answer (JSON; a stream assembled, with its usage and finish reason), or null
    tokens                   {"prompt": int, "completion": int}
    latency_ms               time to the last byte
    time_to_first_token_ms   null when not streamed
    status                   the HTTP status the caller got
    masked                   how many pieces of personal data were replaced (0 when masking is off)
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from learning.choices import DatasetPart, DatasetSource, EvaluationStatus
from marketplace.accounts.models import Organization

MAX_RETENTION_DAYS = 3650
DEFAULT_RETENTION_DAYS = 30


class InvocationLogSettings(models.Model):
    """One per organisation; absent means logging is off. Narrowing lists hold names people see (a
    deployment's name, a key's prefix) so that a deleted deployment narrows to nothing rather than
    silently widening to everything."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="invocation_log_settings"
    )
    enabled = models.BooleanField(default=False)
    deployments = models.JSONField(
        default=list, blank=True, help_text="Names of the deployments to log; empty: all of them"
    )
    api_keys = models.JSONField(
        default=list, blank=True, help_text="Prefixes of the API keys to log (mk-…); empty: all of them"
    )
    sample_rate = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of matching invocations to keep, 0 to 1",
    )
    keep_requests = models.BooleanField(default=True, help_text="Keep the request sent to the engine")
    keep_answers = models.BooleanField(default=True, help_text="Keep the engine's answer")
    retention_days = models.PositiveIntegerField(
        default=DEFAULT_RETENTION_DAYS,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_RETENTION_DAYS)],
    )
    mask_personal_data = models.BooleanField(
        default=True, help_text="Replace e-mail addresses, phone, card and IBAN numbers, IP addresses"
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name_plural = "invocation log settings"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(sample_rate__gte=0) & models.Q(sample_rate__lte=1),
                name="log_sample_rate_0_to_1",
            ),
            models.CheckConstraint(
                condition=models.Q(retention_days__gte=1) & models.Q(retention_days__lte=MAX_RETENTION_DAYS),
                name="log_retention_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"Invocation logging of {self.organization} ({'on' if self.enabled else 'off'})"


class InvocationLogObject(models.Model):
    """The index row of one object of records. The object is written before its row, and rows are
    upserted by key, so a writer that dies in between leaves at worst an object the next run indexes."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invocation_log_objects"
    )
    deployment = models.ForeignKey(
        "serving.Deployment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="invocation_log_objects",
    )
    deployment_name = models.CharField(max_length=40, blank=True)
    key = models.CharField(max_length=300, unique=True, help_text="The object's key in the store")
    first_at = models.DateTimeField(help_text="Time of the object's earliest record")
    last_at = models.DateTimeField(help_text="Time of the object's latest record")
    records = models.PositiveIntegerField()
    bytes = models.PositiveBigIntegerField(help_text="Compressed size")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-first_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "first_at"], name="log_object_org_time"),
            models.Index(fields=["last_at"], name="log_object_last_at"),
        ]

    def __str__(self) -> str:
        return self.key


class Dataset(models.Model):
    """One version of a named dataset: an immutable list of records in one object of the store (see
    learning.datasets for a record's fields), and this index row. A new upload under the same name is a
    new version; nothing edits a version once written. The object is written before the row, so a row
    always names an object that exists."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=60)
    version = models.PositiveIntegerField()
    description = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=16, choices=DatasetSource.choices)
    key = models.CharField(max_length=300, unique=True, help_text="The object's key in the store")
    records = models.PositiveIntegerField()
    train_records = models.PositiveIntegerField()
    heldout_records = models.PositiveIntegerField()
    heldout_fraction = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(0.9)],
        help_text="Share of records held out of training, for evaluations",
    )
    seed = models.BigIntegerField(help_text="The seed of the train/held-out split")
    bytes = models.PositiveBigIntegerField(help_text="Compressed size")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the stored object")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name", "version"], name="dataset_name_version"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Evaluation(models.Model):
    """A dataset (or one of its parts) run through deployments of the organisation and scored.

    Deployments are held by name, as the gateway resolves them, so results outlive a deleted deployment.
    `prices` is what each deployment cost per hour when the evaluation was created ({name: {"hourly_usd",
    "replicas"}}). The status moves only by conditional updates (learning.evaluations.move), each with an
    event; `lease_until` is the running worker's claim, renewed while it works, so a killed worker's
    evaluation is taken over once the lease lapses."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="evaluations")
    name = models.CharField(max_length=80)
    dataset = models.ForeignKey(Dataset, on_delete=models.RESTRICT, related_name="evaluations")
    part = models.CharField(max_length=16, choices=DatasetPart.choices, default=DatasetPart.HELDOUT)
    deployments = models.JSONField(help_text="Names of the deployments that answer")
    scorers = models.JSONField(help_text="The scorers and their options (learning.scorers)")
    max_tokens = models.PositiveIntegerField(default=256)
    temperature = models.FloatField(default=0.0)
    concurrency = models.PositiveSmallIntegerField(default=4)
    prices = models.JSONField(default=dict, blank=True)
    total_items = models.PositiveIntegerField(help_text="Records of the part times deployments")
    status = models.CharField(
        max_length=16, choices=EvaluationStatus.choices, default=EvaluationStatus.PENDING
    )
    status_message = models.TextField(blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "lease_until"], name="evaluation_status_lease")]

    def __str__(self) -> str:
        return self.name


class EvaluationEvent(models.Model):
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=EvaluationStatus.choices)
    message = models.TextField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class EvaluationItem(models.Model):
    """One record answered by one deployment, and its scores. Written once: the unique constraint makes
    a second write of the same item (a resumed run) a no-op, so nothing is counted twice."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="items")
    deployment = models.CharField(max_length=40)
    item_id = models.CharField(max_length=20, help_text="The dataset record's id")
    started_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField()
    error = models.TextField(blank=True)
    answer = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    scoring_tokens = models.PositiveIntegerField(default=0, help_text="Tokens the judge and embeddings spent")
    scores = models.JSONField(default=dict, help_text="{scorer: score, or null when it could not score}")
    notes = models.JSONField(default=dict, help_text="{scorer: the judge's reason, or why there is no score}")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["item_id", "deployment"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "deployment", "item_id"], name="evaluation_item_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment} on item {self.item_id}"
