"""The one rule that must hold however a row goes away, so it cannot live in a service function."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils import timezone

from marketplace.accounts.models import ApiKey


@receiver(pre_delete, sender=settings.AUTH_USER_MODEL)
def revoke_keys_of_a_deleted_person(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Deleting a person's account (the admin site, a script) removes their memberships by cascade,
    without services.remove_member: revoke the keys they created here, before `created_by` is cleared
    and nobody can tell whose they were."""
    ApiKey.objects.usable().filter(created_by=instance).update(revoked_at=timezone.now())
