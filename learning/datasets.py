"""Datasets: named, versioned, immutable lists of records, made from invocation logs or uploaded.

A record (one line of a dataset's object, gzip-compressed JSON Lines in the store like the logs):
    id          its position in the dataset, from "1": stable, since a version never changes
    messages    the prompt as chat messages [{"role": "system" | "user" | "assistant", "content": str}],
                ending with a user message
    reference   the reference answer (str), or null
    metadata    a JSON object (may be empty)
    split       "train" or "heldout"

Uploads are JSON Lines, one conversation a line, in either fine-tuning format:
- OpenAI chat: {"messages": [{"role", "content"}…], "metadata"?}; content is a string or a list of text
  parts ({"type": "text", "text": …}).
- Bedrock conversation: {"schemaVersion": "bedrock-conversation-2024", "system"?: [{"text"}…],
  "messages": [{"role": "user" | "assistant", "content": [{"text"}…]}…]}.
In both, a final assistant message is the reference answer and the messages before it are the prompt.

Every line is checked before anything is stored; the errors name the line and the field. Only a file
that passes entirely is written (the object first, then its index row in the same transaction as the
version number; a row that cannot be saved removes its object), so a bad upload leaves nothing behind.

The split is a function of the record count, the held-out fraction and the seed alone: the same three
always hold out the same records.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max

from learning.choices import DatasetPart, DatasetSource
from learning.models import Dataset
from learning.storage import ObjectNotFound, ObjectStore, decode_records, encode_records
from marketplace.accounts.models import Organization

OBJECT_PREFIX = "datasets"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,59}")
ROLES = ("system", "user", "assistant")
MAX_RECORDS = 50_000
MAX_ERRORS = 20  # an upload with more problems than this reports the first ones
MAX_CONTENT_CHARACTERS = 200_000
BEDROCK_SCHEMA = "bedrock-conversation-2024"


class RecordError(ValueError):
    """One field of one line that is not as it should be."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class UploadError(ValueError):
    """An upload that cannot become a dataset; `errors` are sentences naming the line and the field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _text_of(content: Any, field: str) -> str:
    """A message's content as text: a string, or a list of text parts (OpenAI's or Bedrock's)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and content:
        pieces = []
        for index, part in enumerate(content):
            where = f"{field}[{index}]"
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise RecordError(where, 'must be a text part ({"text": "…"}); only text is supported')
            if part.get("type", "text") != "text":
                raise RecordError(f"{where}.type", f"must be 'text', not {part.get('type')!r:.40}")
            pieces.append(part["text"])
        text = "".join(pieces)
    else:
        raise RecordError(field, "must be a string or a non-empty list of text parts")
    if len(text) > MAX_CONTENT_CHARACTERS:
        raise RecordError(field, f"is {len(text)} characters long; the limit is {MAX_CONTENT_CHARACTERS}")
    return text


def normalize_messages(messages: Any, field: str = "messages") -> list[dict[str, str]]:
    """Chat messages as [{"role", "content": str}], or RecordError naming the first bad field."""
    if not isinstance(messages, list) or not messages:
        raise RecordError(field, "must be a non-empty list of messages")
    normalized = []
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise RecordError(where, "must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise RecordError(f"{where}.role", f"must be one of {', '.join(ROLES)}, not {role!r:.40}")
        normalized.append({"role": role, "content": _text_of(message.get("content"), f"{where}.content")})
    return normalized


def split_prompt(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
    """(prompt, reference): a final assistant message is the reference. The prompt must end with a user
    message, since that is what a deployment is asked to answer."""
    reference = None
    if messages[-1]["role"] == "assistant":
        reference, messages = messages[-1]["content"], messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise RecordError(
            "messages", "must end with a user message (optionally followed by the reference answer)"
        )
    return messages, reference


def parse_line(line: str) -> dict[str, Any]:
    """One upload line as {"messages", "reference", "metadata"}, or RecordError naming the field."""
    try:
        raw = json.loads(line)
    except ValueError as error:
        raise RecordError("line", f"is not JSON ({error.args[0]})") from None
    if not isinstance(raw, dict):
        raise RecordError("line", "must be a JSON object")
    system: list[dict[str, str]] = []
    if "schemaVersion" in raw:
        if raw["schemaVersion"] != BEDROCK_SCHEMA:
            found = raw["schemaVersion"]
            raise RecordError("schemaVersion", f"must be '{BEDROCK_SCHEMA}', not {found!r:.40}")
        if "system" in raw:
            if not isinstance(raw["system"], list):
                raise RecordError("system", 'must be a list of text blocks ([{"text": "…"}])')
            system = [{"role": "system", "content": _text_of(raw["system"], "system")}]
        listed = raw.get("messages")
        for index, message in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(message, dict) and message.get("role") == "system":
                raise RecordError(
                    f"messages[{index}].role", "must be user or assistant (put system text in 'system')"
                )
    messages, reference = split_prompt(system + normalize_messages(raw.get("messages")))
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RecordError("metadata", "must be a JSON object")
    return {"messages": messages, "reference": reference, "metadata": metadata}


def parse_upload(data: bytes) -> list[dict[str, Any]]:
    """Every line of an upload parsed, or UploadError with up to MAX_ERRORS sentences ("Line 3:
    messages[1].role: …"). Blank lines are skipped but counted, so numbers match an editor's."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UploadError([f"The file is not UTF-8 text (byte {error.start} cannot be read)."]) from None
    records, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_line(line))
        except RecordError as error:
            errors.append(f"Line {number}: {error}")
            if len(errors) == MAX_ERRORS:
                errors.append("Stopped after the first problems; fix these and upload again.")
                break
    if not errors and not records:
        errors.append("The file holds no records: one JSON object a line.")
    if not errors and len(records) > MAX_RECORDS:
        errors.append(f"The file holds {len(records)} records; a dataset holds at most {MAX_RECORDS}.")
    if errors:
        raise UploadError(errors)
    return records


def fingerprint(record: dict[str, Any]) -> str:
    """Equal prompts have equal fingerprints (roles and contents, whitespace at the ends ignored)."""
    prompt = [[m["role"], m["content"].strip()] for m in record["messages"]]
    return hashlib.sha256(json.dumps(prompt, ensure_ascii=False).encode()).hexdigest()


def deduplicate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first record of every distinct prompt, in order."""
    seen: set[str] = set()
    kept = []
    for record in records:
        key = fingerprint(record)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def heldout_positions(count: int, fraction: float, seed: int) -> set[int]:
    """Which of `count` records (0-based) are held out: round(count × fraction) of them, at least one
    and never all when the fraction is above 0 and there are two records or more; drawn by the seed."""
    held = round(count * fraction)
    if fraction > 0 and count >= 2:
        held = min(max(held, 1), count - 1)
    elif count < 2:
        held = 0
    order = list(range(count))
    random.Random(seed).shuffle(order)  # noqa: S311 (reproducible by design, not a secret)
    return set(order[:held])


def finish(records: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """Records as stored: numbered from 1, each with its split."""
    held = heldout_positions(len(records), fraction, seed)
    return [
        {
            "id": str(position + 1),
            "messages": record["messages"],
            "reference": record.get("reference"),
            "metadata": record.get("metadata") or {},
            "split": "heldout" if position in held else "train",
        }
        for position, record in enumerate(records)
    ]


def in_part(records: list[dict[str, Any]], part: str) -> list[dict[str, Any]]:
    if part == DatasetPart.ALL:
        return records
    return [record for record in records if record["split"] == part]


# --- From invocation logs ------------------------------------------------------------------------------


def answer_text(answer: Any) -> str | None:
    """The text of a logged answer: an OpenAI chat completion's first choice, or a Bedrock Converse
    output; None for anything else (an embedding, an error)."""
    if not isinstance(answer, dict):
        return None
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    output = answer.get("output")
    if isinstance(output, dict) and isinstance(output.get("message"), dict):
        try:
            return _text_of(output["message"].get("content"), "content")
        except RecordError:
            return None
    return None


def from_log_record(log: dict[str, Any], *, with_reference: bool) -> dict[str, Any] | None:
    """A dataset record from a logged chat call, or None when the log cannot make one (no request body
    kept, not a chat call, a failed call)."""
    request = log.get("request")
    if not isinstance(request, dict) or log.get("status") != 200:
        return None
    try:
        messages, reference = split_prompt(normalize_messages(request.get("messages")))
    except RecordError:
        return None
    reference = answer_text(log.get("answer")) if with_reference else None
    metadata = {"request_id": log.get("id"), "deployment": log.get("deployment"), "time": log.get("time")}
    return {"messages": messages, "reference": reference, "metadata": metadata}


@dataclass(frozen=True)
class LogSelection:
    """Logged calls that become a dataset: those of the filter, de-duplicated, then `sample_size` of
    them drawn by `seed` (all of them when there are fewer)."""

    sample_size: int
    seed: int
    deduplicate: bool = True
    with_reference: bool = True

    def choose(self, logs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        candidates = [
            record
            for record in (from_log_record(log, with_reference=self.with_reference) for log in logs)
            if record is not None
        ]
        if self.deduplicate:
            candidates = deduplicate(candidates)
        if len(candidates) <= self.sample_size:
            return candidates
        draw = random.Random(self.seed)  # noqa: S311 (reproducible by design, not a secret)
        chosen = sorted(draw.sample(range(len(candidates)), self.sample_size))
        return [candidates[position] for position in chosen]


# --- Storage ---------------------------------------------------------------------------------------------


def object_key(organization_id: int, name: str) -> str:
    """A fresh key per write: a version is written once, and a failed write never collides with the next."""
    return f"{OBJECT_PREFIX}/org-{organization_id}/{name}/{uuid.uuid4().hex}.jsonl.gz"


def organization_prefix(organization_id: int) -> str:
    return f"{OBJECT_PREFIX}/org-{organization_id}/"


def save(
    store: ObjectStore,
    *,
    organization_id: int,
    name: str,
    records: list[dict[str, Any]],
    source: str,
    heldout_fraction: float,
    seed: int,
    description: str = "",
    created_by_id: int | None = None,
) -> Dataset:
    """Write records as the next version of `name`. The object goes first; the row takes the next version
    number under a lock of the organisation's row (so two saves of one name never race for a number), and
    when the row cannot be saved the object is removed."""
    stored = finish(records, heldout_fraction, seed)
    data = encode_records(stored)
    key = object_key(organization_id, name)
    store.put(key, data)
    held = sum(record["split"] == "heldout" for record in stored)
    try:
        with transaction.atomic():
            Organization.objects.select_for_update().filter(pk=organization_id).first()
            latest = Dataset.objects.filter(organization_id=organization_id, name=name).aggregate(
                version=Max("version")
            )["version"]
            return Dataset.objects.create(
                organization_id=organization_id, name=name, version=(latest or 0) + 1,
                description=description, source=source, key=key, records=len(stored),
                train_records=len(stored) - held, heldout_records=held,
                heldout_fraction=heldout_fraction, seed=seed, bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(), created_by_id=created_by_id,
            )  # fmt: skip
    except BaseException:
        store.delete(key)
        raise


class DamagedRecords(ObjectNotFound):
    """The stored object is there but cannot be read back (not gzip, cut short, not JSON). A kind of
    ObjectNotFound, so every reader that copes with a missing dataset copes with a damaged one."""


# What decoding raises on damaged bytes; a store that cannot be reached raises others, which may pass.
DAMAGE = (gzip.BadGzipFile, zlib.error, EOFError, ValueError)


def load(store: ObjectStore, dataset: Dataset) -> list[dict[str, Any]]:
    """The dataset's records; ObjectNotFound when its object is missing, DamagedRecords when it cannot
    be read."""
    data = store.get(dataset.key)
    try:
        return decode_records(data)
    except DAMAGE as error:
        raise DamagedRecords(f"{dataset.key}: {type(error).__name__}") from error


class RecordsUnavailable(Exception):
    """A dataset's stored records are missing or cannot be read; the message says which, for a person."""


def load_part(store: ObjectStore, dataset: Dataset, part: str) -> list[dict[str, Any]]:
    """The records of one part of the dataset. RecordsUnavailable, saying what happened and what to do,
    when its object is missing or damaged."""
    try:
        return in_part(load(store, dataset), part)
    except ObjectNotFound as error:
        raise RecordsUnavailable(
            f"The stored records of {dataset} {missing_or_damaged(error)}; upload it again."
        ) from error


def missing_or_damaged(error: ObjectNotFound) -> str:
    """How a dataset's stored records failed to load, for a sentence ("The stored records of x v1 …")."""
    if isinstance(error, DamagedRecords):
        return f"cannot be read ({error.__cause__.__class__.__name__})"
    return "are missing from the object store"


def create_from_upload(store: ObjectStore, data: bytes, **fields: Any) -> Dataset:
    """Parse the whole upload (UploadError names every problem found) and save it; nothing is written
    unless every line passes."""
    return save(store, records=parse_upload(data), source=DatasetSource.UPLOAD, **fields)
