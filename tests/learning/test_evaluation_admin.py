"""The admin lists datasets and evaluations read-only: their rows describe stored objects and runs that
only the services move."""

from __future__ import annotations

import pytest
from django.test import Client

from learning import datasets
from learning.choices import DatasetSource
from learning.models import Dataset
from learning.storage import FolderStore
from marketplace.accounts.models import Organization


def test_the_admin_lists_datasets_and_evaluations(
    admin_client: Client, acme: Organization, configured_store: FolderStore
) -> None:
    dataset = datasets.save(
        configured_store, organization_id=acme.pk, name="listed",
        records=[{"messages": [{"role": "user", "content": "Hi"}], "reference": None}],
        source=DatasetSource.UPLOAD, heldout_fraction=0.0, seed=0,
    )  # fmt: skip
    page = admin_client.get("/admin/learning/dataset/")
    assert page.status_code == 200 and b"listed" in page.content
    assert admin_client.get("/admin/learning/evaluation/").status_code == 200
    assert admin_client.get(f"/admin/learning/dataset/{dataset.pk}/change/").status_code == 200  # a view


@pytest.mark.parametrize("model", ["dataset", "evaluation"])
def test_nothing_is_added_in_the_admin(admin_client: Client, model: str) -> None:
    assert admin_client.get(f"/admin/learning/{model}/add/").status_code == 403


def test_a_dataset_is_not_deleted_in_the_admin(
    admin_client: Client, acme: Organization, configured_store: FolderStore
) -> None:
    dataset = datasets.save(
        configured_store, organization_id=acme.pk, name="kept",
        records=[{"messages": [{"role": "user", "content": "Hi"}], "reference": None}],
        source=DatasetSource.UPLOAD, heldout_fraction=0.0, seed=0,
    )  # fmt: skip
    assert (
        admin_client.post(f"/admin/learning/dataset/{dataset.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert Dataset.objects.filter(pk=dataset.pk).exists()
