"""Subscribing: an organisation accepts a model's license. The one place these rules live."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions

from marketplace.accounts.models import Organization
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.models import LicenseAcceptance, Subscription, SubscriptionStatus


@transaction.atomic
def subscribe(
    *,
    organization: Organization,
    card: ModelCard,
    license_sha256: str | None,
    user: User,
) -> tuple[Subscription, bool]:
    """Accept the card's current license for `organization`. Returns (subscription, created).

    Licenses are accepted by a person, so an API key cannot subscribe. Idempotent: accepting the text
    in force again changes nothing. `license_sha256`, when
    given, must be the hash of the text the person read; if the text changed meanwhile they must read
    it again.
    """
    current = card.license_sha256
    if license_sha256 is not None and license_sha256 != current:
        raise exceptions.ValidationError(
            {
                "license_sha256": [
                    "The license text changed since you read it; read the current text and accept it."
                ]
            }
        )
    now = timezone.now()
    subscription = (
        Subscription.objects.select_for_update().filter(organization=organization, model_card=card).first()
    )
    created = subscription is None
    if subscription is None:
        subscription = Subscription.objects.create(
            organization=organization,
            model_card=card,
            license_sha256=current,
            accepted_by=user,
            accepted_at=now,
        )
    elif not subscription.in_force:
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.license_sha256 = current
        subscription.accepted_by = user
        subscription.accepted_at = now
        subscription.cancelled_at = None
        subscription.save()
    if subscription.accepted_at == now:
        LicenseAcceptance.objects.create(
            subscription=subscription,
            license_identifier=card.license.identifier,
            license_sha256=current,
            accepted_by=user,
        )
    return subscription, created


def unsubscribe(subscription: Subscription) -> Subscription:
    """Idempotent; the acceptance history stays."""
    Subscription.objects.filter(pk=subscription.pk, status=SubscriptionStatus.ACTIVE).update(
        status=SubscriptionStatus.CANCELLED, cancelled_at=timezone.now()
    )
    subscription.refresh_from_db()
    return subscription


def subscription_in_force(organization: Organization, card: ModelCard) -> bool:
    return Subscription.objects.in_force().filter(organization=organization, model_card=card).exists()
