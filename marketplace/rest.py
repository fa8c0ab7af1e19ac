"""What every REST endpoint shares: pagination and the error format.

Kept apart from the viewsets: DRF imports these by name while its own generic views are being defined.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import exceptions, pagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from marketplace import wording


class Pagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = settings.API_PAGE_SIZE_MAX


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the two Django errors a write can still raise past validation.

    A constraint violation here means a race with another request; answer 409 rather than 500.
    """
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, IntegrityError):
        set_rollback()
        return Response(
            {"detail": "This conflicts with a change made at the same time; reload and try again."},
            status=409,
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        response.data = wording.reword_all(response.data)  # the framework's generic refusals, in our words
    return response


# The answers every operation can give besides its own, as the schema documents them. A status an
# operation declares itself is left as it is.
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ValidationError": {
        "type": "object",
        "description": (
            'What was refused, by field: `{"max_gpus": ["Ensure this value is greater than or equal '
            'to 0."]}`. A nested field answers with an object of its own fields; a refusal of the '
            "request as a whole comes under `non_field_errors` or `detail`."
        ),
        "additionalProperties": {
            "oneOf": [
                {"type": "array", "items": {"type": "string"}},
                {"type": "object", "additionalProperties": {}},
                {"type": "string"},
            ]
        },
    },
    "Error": {
        "type": "object",
        "description": "A refusal of the request as a whole, in a sentence for a person.",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
}
ERROR_ANSWERS: dict[str, tuple[str, str]] = {
    "400": ("ValidationError", "Refused input; each field is named with what is wrong with it."),
    "401": (
        "Error",
        "No valid credentials: sign in, or send a valid key (`Authorization: Bearer mk-…`).",
    ),
    "403": ("Error", "Not allowed to do this; the answer says who may."),
    "404": (
        "Error",
        "No such object among those you may see (another organisation's answers the same), "
        "or a page past the last.",
    ),
    "409": ("Error", "Conflicts with a change made at the same time; reload and try again."),
    "415": ("Error", "The body's media type is not one this operation reads: send JSON."),
    "429": ("Error", "Too many requests; try again after `Retry-After` seconds."),
}
WRITES = {"post", "put", "patch", "delete"}
HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "How to authenticate"}},
    "429": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
}


def error_statuses(method: str, operation: dict[str, Any]) -> list[str]:
    """Which error answers an operation can give: 409 only for writes, 415 only where a body is read,
    403 only when it needs a caller (a public operation, one whose security allows no credentials,
    refuses nobody once they are valid)."""
    public = {} in operation.get("security", [])
    return [
        status
        for status in ERROR_ANSWERS
        if not (status == "409" and method not in WRITES)
        and not (status == "415" and "requestBody" not in operation)
        and not (status == "403" and public)
    ]


ORGANIZATION_FILTER = {
    "name": "organization",
    "in": "query",
    "required": False,
    "description": "Only this organisation's (its slug); you must be able to see it.",
    "schema": {"type": "string"},
}


def document_organization_filter(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the lists of tenant-scoped viewsets take `?organization=`
    (TenantScopedViewSet reads it outside any filterset, so the schema would not say so)."""
    from marketplace.api import TenantScopedViewSet  # here: DRF imports this module while loading

    for path, _, method, callback in generator.endpoints:
        viewset = getattr(callback, "cls", None)
        action = getattr(callback, "actions", {}).get(method.lower())
        if viewset and issubclass(viewset, TenantScopedViewSet) and action == "list":
            operation = result["paths"][path][method.lower()]
            parameters = operation.setdefault("parameters", [])
            if all(parameter["name"] != "organization" for parameter in parameters):
                parameters.append(ORGANIZATION_FILTER)
    return result


def document_error_answers(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation documents its error answers (400 with field
    errors, 401, 403, 404, 409, 415, 429), so that clients generated from the schema handle them."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(ERROR_SCHEMAS)
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            for status in error_statuses(method, operation):
                if status in responses:
                    continue
                component, description = ERROR_ANSWERS[status]
                answer: dict[str, Any] = {
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}
                    },
                }
                if status in HEADERS:
                    answer["headers"] = HEADERS[status]
                responses[status] = answer
    return result
