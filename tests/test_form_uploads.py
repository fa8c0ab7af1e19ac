"""A posted form is checked for NUL characters without reading its files: an upload larger than
DATA_UPLOAD_MAX_MEMORY_SIZE (a dataset may be up to 50 MB) still reaches its view, and a NUL in one of
the form's own fields is still refused; a multipart form that cannot be read is refused in the REST
API's format."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from learning.models import Dataset
from learning.storage import get_store

pytestmark = pytest.mark.django_db

URL = "/api/datasets/"
FORM_MEMORY_LIMIT = 1024


@pytest.fixture
def small_form_limit(settings: Any, tmp_path: Path) -> Iterator[None]:
    """Form fields may hold 1 KB in memory; datasets are stored in a folder of this test."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = FORM_MEMORY_LIMIT
    settings.OBJECT_STORE_BUCKET = ""
    settings.DATA_DIR = str(tmp_path)
    get_store.cache_clear()
    yield
    get_store.cache_clear()


def dataset_file(records: int) -> io.BytesIO:
    lines = (
        json.dumps({"messages": [{"role": "user", "content": f"Question number {n} of the upload?"}]})
        for n in range(records)
    )
    handle = io.BytesIO("\n".join(lines).encode())
    handle.name = "data.jsonl"
    return handle


def test_a_file_larger_than_the_form_memory_limit_reaches_the_view(client_for, owner, small_form_limit):
    upload = dataset_file(100)
    assert len(upload.getvalue()) > 4 * FORM_MEMORY_LIMIT
    answer = client_for(owner).post(
        URL, {"name": "support", "organization": "acme", "file": upload}, format="multipart"
    )
    assert answer.status_code == 201, answer.content
    assert Dataset.objects.get().records == 100


def test_a_nul_in_a_field_of_a_multipart_form_is_still_refused(client_for, owner, small_form_limit):
    answer = client_for(owner).post(
        URL, {"name": "sup\x00port", "organization": "acme", "file": dataset_file(3)}, format="multipart"
    )
    assert answer.status_code == 400
    assert "NUL" in answer.json()["name"][0]
    assert not Dataset.objects.exists()


def test_a_multipart_form_without_a_boundary_is_refused_in_the_apis_format(
    client_for, owner, small_form_limit
):
    answer = client_for(owner).generic("POST", URL, b"name=support", content_type="multipart/form-data")
    assert answer.status_code == 400
    assert "multipart form could not be read" in answer.json()["detail"]
    assert not Dataset.objects.exists()
