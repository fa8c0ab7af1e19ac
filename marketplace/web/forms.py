"""Forms of the web UI, validated by the same serializers and services as the REST API.

A page posts plain form fields; `form_data` turns them into what the API's serializers take, and
`field_errors` turns a serializer's or a service's refusal into messages shown next to each field, so
a rule and its wording live in one place for both the API and the UI.
"""

from __future__ import annotations

from typing import Any

from django.http import QueryDict
from rest_framework import exceptions

from marketplace import wording

NON_FIELD = "form"


def form_data(
    post: QueryDict, fields: tuple[str, ...], *, nested: dict[str, tuple[str, ...]] | None = None
) -> dict[str, Any]:
    """The named fields that were filled in (an empty field means "not given", so defaults apply);
    `nested` groups prefixed fields (`engine_options.dtype`) into a dictionary."""
    data: dict[str, Any] = {
        name: str(post[name]).strip() for name in fields if str(post.get(name, "")).strip()
    }
    for group, names in (nested or {}).items():
        values = {
            name: str(post[f"{group}.{name}"]).strip()
            for name in names
            if str(post.get(f"{group}.{name}", "")).strip()
        }
        data[group] = values
    return data


def field_errors(error: exceptions.ValidationError | dict[str, Any] | list[Any]) -> dict[str, list[str]]:
    """{field: [message, …]} from a refusal; nested fields become `group.field`, errors that name no
    field go under NON_FIELD."""
    detail = error.detail if isinstance(error, exceptions.ValidationError) else error
    found: dict[str, list[str]] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                name = NON_FIELD if key in ("non_field_errors", "__all__", NON_FIELD) else key
                walk(inner, f"{prefix}.{name}" if prefix and name != NON_FIELD else name)
        elif isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            for inner in value:
                walk(inner, prefix)
        else:
            messages = value if isinstance(value, list) else [value]
            found.setdefault(prefix or NON_FIELD, []).extend(wording.reword(str(m)) for m in messages)

    walk(detail, "")
    return found


def optional_numbers(post: QueryDict, fields: tuple[str, ...]) -> dict[str, Any]:
    """Every named field of a form that shows them all: an empty one is None ("no limit")."""
    return {name: str(post.get(name, "")).strip() or None for name in fields}


def error_summary(errors: dict[str, list[str]], labels: dict[str, str]) -> list[dict[str, str]]:
    """Every refusal of a form as one list for the top of the page, each with the label of its field and
    a link to it when the form shows that field (`labels`: field → label). A refusal of a field the form
    does not show (a quota, a status) still appears, on its own: nothing the service says is lost."""
    summary = []
    for name, messages in errors.items():
        label = labels.get(name, "")
        for message in messages:
            summary.append({"label": label, "message": message, "anchor": f"id-{name}" if label else ""})
    return summary
