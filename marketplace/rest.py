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
    return drf_exception_handler(exc, context)
