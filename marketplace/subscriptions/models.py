"""An organisation's subscription to a model, and the history of license acceptances behind it."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from marketplace.accounts.models import Organization
from marketplace.catalog.models import ModelCard


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    CANCELLED = "cancelled", "Cancelled"


class SubscriptionQuerySet(models.QuerySet["Subscription"]):
    def in_force(self) -> SubscriptionQuerySet:
        """Active subscriptions whose accepted license text is the card's current one."""
        return self.filter(
            status=SubscriptionStatus.ACTIVE,
            license_sha256=models.F("model_card__license_sha256"),
        )


class Subscription(models.Model):
    """One row per organisation and model. `license_sha256` is the hash of the license text last
    accepted; when the card's license text changes the subscription stops counting until re-accepted."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="subscriptions")
    model_card = models.ForeignKey(ModelCard, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    license_sha256 = models.CharField(max_length=64)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    accepted_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "model_card"], name="one_subscription_per_model"),
        ]
        ordering = ["-accepted_at"]

    def __str__(self) -> str:
        return f"{self.organization} → {self.model_card}"

    @property
    def license_current(self) -> bool:
        return self.license_sha256 == self.model_card.license_sha256

    @property
    def in_force(self) -> bool:
        return self.status == SubscriptionStatus.ACTIVE and self.license_current

    def live_deployment_names(self) -> list[str]:
        """The organisation's live deployments of this model, by name: while there are any, unsubscribing
        is refused (see services.unsubscribe), and the model page says so before anyone clicks."""
        from serving.models import Deployment  # serving builds on subscriptions, not the other way round

        return list(
            Deployment.objects.live()
            .filter(organization=self.organization_id, model_card=self.model_card_id)
            .order_by("name")
            .values_list("name", flat=True)
        )


class LicenseAcceptance(models.Model):
    """Who accepted which license text (by hash) for which organisation, and when. Never edited."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="acceptances")
    license_identifier = models.CharField(max_length=64)
    license_sha256 = models.CharField(max_length=64)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    accepted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-accepted_at"]

    def __str__(self) -> str:
        return f"{self.license_identifier} ({self.license_sha256[:12]}) at {self.accepted_at:%Y-%m-%d}"
