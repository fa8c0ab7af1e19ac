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
