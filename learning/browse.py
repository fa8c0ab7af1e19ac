"""Reading the invocation log: filter records, page through them, export them.

Records live in objects (learning.storage), so a page is read object by object from the index, newest
object first and newest record first within it; a filter that matches little may read many objects, so
one page reads at most MAX_OBJECTS_PER_PAGE of them and hands back a cursor to continue from.
Who may read bodies (the request and the answer) is decided by the caller: members see none.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from learning.models import InvocationLogObject
from learning.storage import ObjectNotFound, ObjectStore, decode_records

MAX_OBJECTS_PER_PAGE = 50
# ASCII digits that fit the index's bigint key (str.isdigit also takes '²', which int() refuses)
CURSOR = re.compile(r"(?P<pk>[0-9]{1,18})\.(?P<position>[0-9]{1,9})")
BODY_FIELDS = ("request", "answer")


@dataclass(frozen=True)
class RecordFilter:
    deployment: str | None = None
    key_prefix: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    status: int | None = None
    errors_only: bool = False
    text: str | None = None  # searched in bodies: only over records whose bodies the caller may read

    @classmethod
    def from_query(cls, params: dict[str, Any]) -> RecordFilter:
        """From the API's validated query (learning.api.serializers.RecordQuerySerializer)."""
        status = params.get("status")
        return cls(
            deployment=params.get("deployment"),
            key_prefix=params.get("key"),
            since=params.get("since"),
            until=params.get("until"),
            status=status if isinstance(status, int) else None,
            errors_only=status == "errors",
            text=params.get("q"),
        )

    def objects(self, queryset: QuerySet[InvocationLogObject]) -> QuerySet[InvocationLogObject]:
        """The index rows that may hold matching records."""
        if self.deployment:
            queryset = queryset.filter(deployment_name=self.deployment)
        if self.since:
            queryset = queryset.filter(last_at__gte=self.since)
        if self.until:
            queryset = queryset.filter(first_at__lte=self.until)
        return queryset

    def matches(self, record: dict[str, Any], *, bodies_readable: bool) -> bool:
        if self.deployment and record.get("deployment") != self.deployment:
            return False
        if self.key_prefix and record.get("key_prefix") != self.key_prefix:
            return False
        if self.since or self.until:
            moment = datetime.datetime.fromisoformat(record["time"])
            if (self.since and moment < self.since) or (self.until and moment > self.until):
                return False
        if self.status is not None and record.get("status") != self.status:
            return False
        if self.errors_only and int(record.get("status") or 0) < 400:
            return False
        if self.text:
            if not bodies_readable:
                return False
            bodies = json.dumps([record.get(name) for name in BODY_FIELDS], ensure_ascii=False)
            return self.text.casefold() in bodies.casefold()
        return True


def record_id(obj: InvocationLogObject, record: dict[str, Any]) -> str:
    """A record's id in the API: its object's index row and its own id."""
    return f"{obj.pk}-{record['id']}"


def split_record_id(text: str) -> tuple[int, str] | None:
    """The index row's pk and the record's own id of an id made by `record_id`; None when `text` is not
    one (the caller answers 404)."""
    object_pk, _, request_id = text.partition("-")
    if not object_pk.isdigit() or not object_pk.isascii() or not request_id:
        return None
    return int(object_pk), request_id


def present(
    obj: InvocationLogObject, record: dict[str, Any], organization_slug: str, *, bodies: bool
) -> dict[str, Any]:
    """A record as the API shows it; without bodies, `request` and `answer` are absent, not null."""
    shown = {key: value for key, value in record.items() if bodies or key not in BODY_FIELDS}
    shown.pop("organization_id", None)
    shown.update(id=record_id(obj, record), request_id=record["id"], organization=organization_slug)
    shown["bodies_shown"] = bodies
    return shown


def read(store: ObjectStore, obj: InvocationLogObject) -> list[dict[str, Any]]:
    """An object's records; an object retention has just removed reads as empty."""
    try:
        return decode_records(store.get(obj.key))
    except ObjectNotFound:
        return []


@dataclass(frozen=True)
class Cursor:
    object_pk: int
    position: int  # records of that object already passed, newest first

    def __str__(self) -> str:
        return f"{self.object_pk}.{self.position}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        found = CURSOR.fullmatch(text)
        if found is None:
            raise ValueError("A cursor is the `next` value of a previous page.")
        return cls(int(found["pk"]), int(found["position"]))


def page(
    objects: QuerySet[InvocationLogObject],
    store: ObjectStore,
    record_filter: RecordFilter,
    *,
    readable: set[int],
    slugs: dict[int, str],
    limit: int,
    cursor: Cursor | None = None,
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Up to `limit` matching records, newest object first, and the cursor of the next page (None at the
    end). `readable`: ids of the organisations whose bodies the caller may read."""
    ordered = record_filter.objects(objects).order_by("-first_at", "-pk")
    skip = 0
    if cursor is not None:
        start = ordered.filter(pk=cursor.object_pk).first()
        if start is None:
            return [], None
        ordered = ordered.filter(
            Q(first_at__lt=start.first_at) | Q(first_at=start.first_at, pk__lte=start.pk)
        )
        skip = cursor.position
    results: list[dict[str, Any]] = []
    for scanned, obj in enumerate(ordered.iterator(chunk_size=MAX_OBJECTS_PER_PAGE)):
        if scanned == MAX_OBJECTS_PER_PAGE:
            return results, Cursor(obj.pk, 0)
        bodies = obj.organization_id in readable
        newest_first = list(reversed(read(store, obj)))
        for position in range(skip, len(newest_first)):
            record = newest_first[position]
            if record_filter.matches(record, bodies_readable=bodies):
                if len(results) == limit:
                    return results, Cursor(obj.pk, position)
                results.append(present(obj, record, slugs[obj.organization_id], bodies=bodies))
        skip = 0
    return results, None


def find(store: ObjectStore, obj: InvocationLogObject, request_id: str) -> dict[str, Any] | None:
    return next((record for record in read(store, obj) if record["id"] == request_id), None)


def export_lines(
    objects: Iterable[InvocationLogObject],
    store: ObjectStore,
    record_filter: RecordFilter,
    *,
    readable: set[int],
    slugs: dict[int, str],
) -> Iterator[bytes]:
    """Matching records as JSON Lines, oldest object first; reads one object at a time."""
    for obj in objects:
        bodies = obj.organization_id in readable
        for record in read(store, obj):
            if record_filter.matches(record, bodies_readable=bodies):
                shown = present(obj, record, slugs[obj.organization_id], bodies=bodies)
                yield (json.dumps(shown, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
