"""The object store: the same behaviour from a real S3-compatible server and from a folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from learning.storage import (
    FolderStore,
    InvalidKey,
    ObjectNotFound,
    S3Store,
    decode_records,
    encode_records,
    get_store,
)

RECORDS = [{"id": "a", "text": "héllo"}, {"id": "b", "n": 2}]


@pytest.fixture(params=["s3", "folder"])
def store(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("s3_store" if request.param == "s3" else "folder_store")


def test_objects_are_gzip_compressed_json_lines() -> None:
    data = encode_records(RECORDS)
    lines = gzip.decompress(data).decode().splitlines()
    assert [json.loads(line) for line in lines] == RECORDS
    assert decode_records(data) == RECORDS


def test_the_same_records_give_the_same_bytes() -> None:
    assert encode_records(RECORDS) == encode_records(list(RECORDS))


def test_put_then_get_returns_the_records(store: Any) -> None:
    store.put("logs/org-1/a.jsonl.gz", encode_records(RECORDS))
    assert decode_records(store.get("logs/org-1/a.jsonl.gz")) == RECORDS


def test_put_replaces_an_object_whole(store: Any) -> None:
    store.put("logs/a.jsonl.gz", encode_records(RECORDS))
    store.put("logs/a.jsonl.gz", encode_records(RECORDS[:1]))
    assert decode_records(store.get("logs/a.jsonl.gz")) == RECORDS[:1]


def test_list_by_prefix_returns_only_that_prefix_sorted(store: Any) -> None:
    for key in ("logs/org-1/b", "logs/org-1/a", "logs/org-12/a", "other/x"):
        store.put(key, b"x")
    assert store.list("logs/org-1/") == ["logs/org-1/a", "logs/org-1/b"]


def test_delete_removes_and_a_missing_key_is_not_an_error(store: Any) -> None:
    store.put("logs/a", b"x")
    store.delete("logs/a")
    store.delete("logs/a")
    assert store.list("logs/") == []
    with pytest.raises(ObjectNotFound):
        store.get("logs/a")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "logs/../../x", "logs//a", "./a"])
def test_a_key_that_could_escape_the_store_is_refused(store: Any, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")


def test_s3_objects_say_they_are_gzip_json_lines(s3_store: S3Store) -> None:
    s3_store.put("logs/a", encode_records(RECORDS))
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="logs/a")
    assert (head["ContentType"], head["ContentEncoding"]) == ("application/x-ndjson", "gzip")


def test_s3_lists_past_one_page_of_keys(s3_store: S3Store) -> None:
    for number in range(1005):  # list_objects_v2 answers 1,000 keys a page
        s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"logs/{number:05}", Body=b"")
    assert len(s3_store.list("logs/")) == 1005


def test_the_folder_store_removes_emptied_folders(folder_store: FolderStore) -> None:
    folder_store.put("logs/org-1/2026/12/02/a", b"x")
    folder_store.delete("logs/org-1/2026/12/02/a")
    assert list(folder_store.root.iterdir()) == []


def test_without_a_bucket_the_store_is_a_folder_under_data_dir(settings: Any, tmp_path: Path) -> None:
    settings.OBJECT_STORE_BUCKET = ""
    settings.DATA_DIR = str(tmp_path)
    get_store.cache_clear()
    try:
        store = get_store()
        assert isinstance(store, FolderStore) and store.root == tmp_path / "objects"
    finally:
        get_store.cache_clear()


def test_with_a_bucket_the_store_is_that_bucket_at_the_endpoint(
    settings: Any, s3_server: str, s3_store: S3Store
) -> None:
    settings.OBJECT_STORE_BUCKET = s3_store.bucket
    settings.OBJECT_STORE_ENDPOINT_URL = s3_server
    settings.OBJECT_STORE_ACCESS_KEY_ID = "testing"
    settings.OBJECT_STORE_SECRET_ACCESS_KEY = "testing"
    get_store.cache_clear()
    try:
        get_store().put("logs/from-settings", encode_records(RECORDS))
    finally:
        get_store.cache_clear()
    assert decode_records(s3_store.get("logs/from-settings")) == RECORDS
