"""The object store: where bulk data (invocation logs, later datasets) lives, as gzip-compressed JSON Lines.

Two backends behind one small interface, chosen by the environment:
- S3: any S3-compatible store (AWS S3, MinIO, Ceph, R2…) through boto3, when OBJECT_STORE_BUCKET is set.
- Folder: files under DATA_DIR/objects, the embedded default, when it is not.

Keys are relative paths with `/` separators (`invocation-logs/org-3/2026/12/02/…`). Writing a key that
exists replaces it whole (S3's PUT; an atomic rename in a folder), so writing the same object twice is
harmless; deleting a key that does not exist is not an error. This is the only module that imports boto3.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

CONTENT_TYPE = "application/x-ndjson"
CONTENT_ENCODING = "gzip"


class InvalidKey(ValueError):
    """A key that could escape its store (absolute, `..`) or is empty."""


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise InvalidKey(f"An object key is a relative path without empty, '.' or '..' parts, not {key!r}.")
    return key


def encode_records(records: Iterable[dict[str, Any]]) -> bytes:
    """One JSON object per line, gzip-compressed. mtime 0: the same records always give the same bytes."""
    lines = "".join(
        json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n" for record in records
    )
    return gzip.compress(lines.encode(), mtime=0)


def decode_records(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line]


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class ObjectNotFound(LookupError):
    """The key names no object."""


class FolderStore:
    """Objects as files under one folder. A write goes to a temporary file renamed into place, so a reader
    never sees half an object."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(handle, "wb") as output:
                output.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Empty day folders would pile up under retention; remove them up to the root.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def list(self, prefix: str) -> list[str]:
        # Walk only the folder the prefix's complete parts name (`invocation-logs/org-3/` → that folder).
        folder = self.root.joinpath(*[part for part in prefix.split("/")[:-1] if part not in ("", ".", "..")])
        if not folder.is_dir():
            return []
        keys = (
            path.relative_to(self.root).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not path.name.startswith(".part-")
        )
        return sorted(key for key in keys if key.startswith(prefix))


class S3Store:
    """Objects in one bucket of an S3-compatible store."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=check_key(key),
            Body=data,
            ContentType=CONTENT_TYPE,
            ContentEncoding=CONTENT_ENCODING,
        )

    def get(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=check_key(key))
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(key) from None
        return bytes(answer["Body"].read())

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def list(self, prefix: str) -> list[str]:
        return sorted(self._keys(prefix))

    def _keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield item["Key"]


class CannotPresign(RuntimeError):
    """The store has no URLs to hand out (the folder store): nothing outside this machine can reach it."""


def presigned_url(store: ObjectStore, key: str, *, write: bool, expires_seconds: int) -> str:
    """A URL that reads (GET) or writes (PUT) one object without credentials until it expires: what a
    training Job's pod uses, so it holds no store credentials. Only an S3 store can give one."""
    if not isinstance(store, S3Store):
        raise CannotPresign("Objects in a folder on this machine have no URL another machine can use.")
    return str(
        store.client.generate_presigned_url(
            "put_object" if write else "get_object",
            Params={"Bucket": store.bucket, "Key": check_key(key)},
            ExpiresIn=expires_seconds,
        )
    )


def s3_client(endpoint_url: str, region: str, access_key_id: str, secret_access_key: str) -> Any:
    """A boto3 S3 client with bounded timeouts and retries; path-style addressing, which every
    S3-compatible store understands (virtual-host style needs DNS per bucket)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 4, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


# s3://bucket/prefix: a bucket name as S3 allows it (3-63 lowercase letters, digits, dots and hyphens).
STORE_URI = re.compile(r"\As3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?\Z")
# S3's answers that say the key or the bucket is wrong: nothing a retry changes.
REFUSALS = {
    "AccessDenied": "the key given may not read it",
    "InvalidAccessKeyId": "the store knows no such access key id",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "NoSuchBucket": "there is no such bucket",
    "AllAccessDisabled": "the bucket refuses every reader",
    "NoSuchKey": "the file is not there (any more)",
}
KEY_REFUSALS = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
# A file name in a folder the platform copies from: one path part of a sane length, nothing that climbs.
UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f]")


class StoreAccessError(Exception):
    """Reading another store failed, in words for the person who named it; `transient` when trying again
    later may succeed (the store could not be reached)."""

    def __init__(self, message: str, *, transient: bool = False, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.code = code  # S3's error code (AccessDenied, NoSuchBucket …), "" when there was no answer

    @property
    def about_the_key(self) -> bool:
        """The store refused the key (rather than the folder being absent or out of reach)."""
        return self.code in KEY_REFUSALS


def parse_store_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/folder` → ("bucket", "some/folder/"); ValueError naming what is wrong."""
    match = STORE_URI.match(uri.strip())
    if match is None:
        raise ValueError("An object-store folder: s3://bucket/path/to/model (a bucket name in lowercase).")
    prefix = (match["prefix"] or "").strip("/")
    if prefix:
        check_key(prefix)
        prefix += "/"
    return match["bucket"], prefix


@dataclass(frozen=True)
class StoredFile:
    name: str  # relative to the folder
    size: int
    etag: str


class StoreFolder:
    """Read-only access to one folder (a prefix) of a bucket another party owns, with the key they gave:
    what a custom model's weights are registered and copied from. The platform's own credentials are never
    used here, so an organisation reads only what its own key may."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def connect(
        cls, *, uri: str, endpoint_url: str, region: str, access_key_id: str, secret_access_key: str
    ) -> StoreFolder:
        bucket, prefix = parse_store_uri(uri)
        client = s3_client(endpoint_url, region or "us-east-1", access_key_id, secret_access_key)
        return cls(client, bucket, prefix)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _error(self, error: Exception, what: str) -> StoreAccessError:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            reason = REFUSALS.get(code)
            if reason:
                return StoreAccessError(f"{what} in {self.uri}: {reason} ({code}).", code=code)
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status == 404:  # a ranged or ordinary GET of a file gone since the folder was listed
                return StoreAccessError(f"{what} in {self.uri}: {REFUSALS['NoSuchKey']}.", code="NoSuchKey")
            return StoreAccessError(
                f"{what} in {self.uri}: the store answered {code or status}.",
                transient=status >= 500,
                code=code,
            )
        if isinstance(error, BotoCoreError):
            return StoreAccessError(
                f"{what} in {self.uri}: the store could not be reached ({type(error).__name__}); try again.",
                transient=True,
            )
        raise error

    def files(self) -> dict[str, StoredFile]:
        """The folder's own files (not those of folders inside it), by name; a name that could not be a
        file of this folder on a disk (a path, `..`, a control character, over 255 bytes) is left out."""
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[str, StoredFile] = {}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for item in page.get("Contents", ()):
                    key = str(item["Key"])
                    name = key[len(self.prefix) :]
                    if (
                        key.startswith(self.prefix)
                        and name not in ("", ".", "..")
                        and not UNSAFE_NAME.search(name)
                        and len(name.encode()) <= 255
                    ):
                        found[name] = StoredFile(
                            name, int(item["Size"]), str(item.get("ETag", "")).strip('"')
                        )
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, "Listing the files") from None
        return found

    def read(self, name: str, start: int = 0, length: int | None = None) -> bytes:
        """A file's bytes, or `length` of them from `start` (one ranged GET: a safetensors header out of
        gigabytes of weights). At most `length` bytes are read, even from a store that ignores the range."""
        from botocore.exceptions import BotoCoreError, ClientError

        options: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + name}
        if length is not None and length <= 0:
            return b""
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            options["Range"] = f"bytes={start}-{end}"
        try:
            body = self.client.get_object(**options)["Body"]
            try:
                return bytes(body.read() if length is None else body.read(length))
            finally:
                body.close()
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, f"Reading {name}") from None

    def download(self, name: str, path: Path, progress: Callable[[int], None] | None = None) -> None:
        """Copy a file to `path`, through a temporary file renamed into place (a half copy is never taken
        for a whole one); `progress` hears the bytes as they arrive."""
        from botocore.exceptions import BotoCoreError, ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name_of_part = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        os.close(handle)
        temporary = Path(name_of_part)
        try:
            self.client.download_file(self.bucket, self.prefix + name, str(temporary), Callback=progress)
            os.replace(temporary, path)
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, f"Copying {name}") from None
        finally:
            temporary.unlink(missing_ok=True)


@cache
def get_store() -> ObjectStore:
    """The store the settings name: S3 when OBJECT_STORE_BUCKET is set, else DATA_DIR/objects.
    One per process (boto3 clients are thread-safe)."""
    if settings.OBJECT_STORE_BUCKET:
        client = s3_client(
            settings.OBJECT_STORE_ENDPOINT_URL,
            settings.OBJECT_STORE_REGION,
            settings.OBJECT_STORE_ACCESS_KEY_ID,
            settings.OBJECT_STORE_SECRET_ACCESS_KEY,
        )
        return S3Store(client, settings.OBJECT_STORE_BUCKET)
    return FolderStore(Path(settings.DATA_DIR) / "objects")
