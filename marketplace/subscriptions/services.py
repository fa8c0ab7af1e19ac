"""Subscribing: an organisation accepts a model's license. The one place these rules live."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions

from marketplace.accounts.models import Organization, Quota
from marketplace.api import Conflict
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


@transaction.atomic
def unsubscribe(subscription: Subscription) -> Subscription:
    """Cancel a subscription. Idempotent; the acceptance history stays.

    Refused (409, naming them) while the organisation has live deployments of the model: giving up the
    license while still serving the model would leave the customer serving it without one, and stopping
    them silently would take an app down by surprise. So they are deleted first, on purpose.
    """
    # The quota row is the lock create_deployment admits under: a deployment being admitted now is
    # either committed before the count below, or admitted after the cancellation (and then refused).
    Quota.objects.select_for_update().filter(organization=subscription.organization_id).first()
    names = subscription.live_deployment_names()
    if names:
        several = len(names) > 1
        raise Conflict(
            f"{subscription.organization.name} still runs {len(names)} deployment{'s' if several else ''} "
            f"of {subscription.model_card.name}: {', '.join(names)}. Delete {'them' if several else 'it'} "
            "first, then unsubscribe."
        )
    Subscription.objects.filter(pk=subscription.pk, status=SubscriptionStatus.ACTIVE).update(
        status=SubscriptionStatus.CANCELLED, cancelled_at=timezone.now()
    )
    subscription.refresh_from_db()
    return subscription


def subscription_in_force(organization: Organization, card: ModelCard) -> bool:
    return Subscription.objects.in_force().filter(organization=organization, model_card=card).exists()


def lapse_reason(organization: Organization, card: ModelCard) -> str | None:
    """Why `organization`'s subscription to `card` is not in force, as a sentence saying what to do;
    None when it is. Pure apart from one read."""
    subscription = Subscription.objects.filter(organization=organization, model_card=card).first()
    if subscription is None or subscription.status != SubscriptionStatus.ACTIVE:
        return (
            f"{organization.name} is not subscribed to {card.name}: an owner or admin subscribes again on "
            "the model's page."
        )
    if subscription.license_sha256 != card.license_sha256:
        return (
            f"The license terms of {card.name} changed since {organization.name} accepted them: an owner or "
            "admin accepts the new terms on the model's page."
        )
    return None


def require_in_force(organization: Organization, card: ModelCard, *, refused: str) -> None:
    """Raise 409, naming the field `model`, unless the subscription is in force. `refused` completes
    "Until then, …" with what cannot be done (e.g. "this deployment cannot be updated")."""
    reason = lapse_reason(organization, card)
    if reason is not None:
        raise Conflict({"model": [f"{reason} Until then, {refused}, and the API does not serve it."]})
