"""An organisation's stored logs and datasets go with it.

Its index rows are deleted by the database's cascade; the objects they name would stay in the store for
ever (retention reads the index), so their keys are collected before the delete and handed, once the
delete has committed, to a task that removes them (retried while the store is unreachable)."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from learning.models import Dataset, InvocationLogObject, Router, RouterVersion
from marketplace.accounts.models import Organization

KEYS_PER_TASK = 1000


@receiver(pre_delete, sender=Organization, dispatch_uid="learning-delete-organization-logs")
def delete_organization_logs(sender: type[Organization], instance: Organization, **kwargs: Any) -> None:
    from learning.tasks import delete_log_objects

    keys = list(InvocationLogObject.objects.filter(organization=instance).values_list("key", flat=True))
    keys += Dataset.objects.filter(organization=instance).values_list("key", flat=True)
    for start in range(0, len(keys), KEYS_PER_TASK):
        transaction.on_commit(partial(delete_log_objects.delay, keys[start : start + KEYS_PER_TASK]))


@receiver(pre_delete, sender=Router, dispatch_uid="learning-delete-router-predictors")
def delete_router_predictors(sender: type[Router], instance: Router, **kwargs: Any) -> None:
    """A router's stored predictors go with it (deleted alone or with its organisation)."""
    from learning.tasks import delete_log_objects

    keys = list(RouterVersion.objects.filter(router=instance).values_list("key", flat=True))
    if keys:
        transaction.on_commit(partial(delete_log_objects.delay, keys))
