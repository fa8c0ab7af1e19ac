"""Organisations, the people in them, their quotas and their API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from marketplace.accounts.choices import Role

API_KEY_PREFIX = "mk-"
# The visible part of a key (after "mk-") that lists and logs may show.
API_KEY_VISIBLE_CHARS = 8


class Organization(models.Model):
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="organizations"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="one_membership_per_user"),
        ]
        ordering = ["organization", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Quota(models.Model):
    """What an organisation may use. Edited by platform admins only; deployments reserve against it
    under a row lock (select_for_update on this row)."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="quota")
    max_gpus = models.PositiveIntegerField(default=8, help_text="GPUs across all GPU models")
    gpus_per_model = models.JSONField(
        default=dict, blank=True, help_text='GPUs per GPU model, e.g. {"NVIDIA H100 80GB SXM5": 8}'
    )
    max_deployments = models.PositiveIntegerField(default=5)
    # A replica on a CPU instance type holds no GPU but a whole engine process on the platform's own
    # machine (SERVING_BACKEND=local): without this limit CPU replicas would escape every quota.
    max_cpu_replicas = models.PositiveIntegerField(
        default=4, help_text="Replicas on CPU instance types, across all deployments"
    )
    monthly_token_budget = models.PositiveBigIntegerField(default=100_000_000)
    requests_per_minute = models.PositiveIntegerField(default=600)
    tokens_per_minute = models.PositiveBigIntegerField(default=200_000)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Quota of {self.organization}"

    def gpu_limit(self, gpu_model: str) -> int:
        """GPUs of this model the organisation may use: its own limit, else the total limit."""
        return int(self.gpus_per_model.get(gpu_model, self.max_gpus))


def hash_api_key(key: str) -> str:
    """Keys are long random secrets, so one SHA-256 suffices (no slow KDF needed to resist guessing)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def usable(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """An organisation's key for the API. Only the SHA-256 of the secret is stored; the secret is
    returned once, at creation."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    hashed_key = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Limits of this key on top of its organisation's; null means only the organisation's apply.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    # Names of the deployments this key may call; empty means all of its organisation's.
    allowed_deployments = models.JSONField(default=list, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def generate(cls) -> tuple[str, str, str]:
        """A new secret, its visible prefix and its hash."""
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        return secret, secret[: len(API_KEY_PREFIX) + API_KEY_VISIBLE_CHARS], hash_api_key(secret)

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.hashed_key, hash_api_key(key))


# Budgets: what an organisation (or one of its deployments) may cost in a calendar month (UTC), and the
# alerts and webhook deliveries its crossings caused (marketplace/accounts/budgets.py).

DEFAULT_BUDGET_THRESHOLDS = [50, 80, 100]


def default_thresholds() -> list[int]:
    return list(DEFAULT_BUDGET_THRESHOLDS)


class Budget(models.Model):
    """A monthly cost budget in USD. Without a deployment it covers the whole organisation.

    The webhook secret is stored encrypted (marketplace/accounts/crypto.py); only its owner sees it, once,
    when it is made. At 100% an owner may have the organisation's deployments (or this budget's one)
    scaled down to their minimum.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="budgets")
    deployment = models.ForeignKey(
        "serving.Deployment", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    monthly_amount_usd = models.DecimalField(max_digits=14, decimal_places=2)
    thresholds = models.JSONField(default=default_thresholds, help_text="Percentages of the amount, 1–100")
    webhook_url = models.URLField(max_length=500, blank=True)
    webhook_secret_encrypted = models.TextField(blank=True, editable=False)
    scale_down_at_limit = models.BooleanField(
        default=False, help_text="At 100%, scale the deployments it covers down to their minimum"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization", "deployment_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=models.Q(deployment__isnull=True),
                name="one_organization_budget",
            ),
            models.UniqueConstraint(fields=["organization", "deployment"], name="one_budget_per_deployment"),
        ]

    def __str__(self) -> str:
        scope = f"deployment {self.deployment_id}" if self.deployment_id else "the organisation"
        return f"Budget of {self.organization} for {scope}: ${self.monthly_amount_usd}/month"


class BudgetAlert(models.Model):
    """A threshold of a budget crossed in a month. The unique constraint makes the crossing happen once,
    however many checkers see it at the same moment: the one whose insert succeeds alerts."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    month = models.DateField(help_text="The first day of the month (UTC)")
    threshold = models.PositiveSmallIntegerField()
    spent_usd = models.DecimalField(max_digits=14, decimal_places=2)
    amount_usd = models.DecimalField(max_digits=14, decimal_places=2)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "month", "threshold"], name="one_alert_per_threshold"),
        ]

    def __str__(self) -> str:
        return f"{self.budget} at {self.threshold}% in {self.month:%Y-%m}"


class WebhookDelivery(models.Model):
    """One attempt to deliver an alert to its budget's webhook: what came back, or why nothing did."""

    alert = models.ForeignKey(BudgetAlert, on_delete=models.CASCADE, related_name="deliveries")
    attempt = models.PositiveSmallIntegerField()
    url = models.URLField(max_length=500)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    delivered = models.BooleanField(default=False)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"attempt {self.attempt} of alert {self.alert_id}: {self.status_code or self.error}"


class IdleSummary(models.Model):
    """The weekly list of an organisation's idle deployments, with what each cost while idle; written by
    a periodic task, shown on the organisation page."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="idle_summaries")
    week = models.DateField(help_text="The Monday the week starts (UTC)")
    deployments = models.JSONField(default=list)
    total_cost_usd = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-week"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "week"], name="one_idle_summary_per_week"),
        ]

    def __str__(self) -> str:
        return f"Idle deployments of {self.organization}, week of {self.week}"
