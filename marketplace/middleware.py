"""Refuses a NUL character in a request's path, query string or form fields, before any view runs.

PostgreSQL cannot store NUL (0x00) in text, and psycopg2 refuses to send a string that holds one, so a
view that looked a slug, a username or a filter value up with one would fail with a 500. Nothing the
platform keeps can contain one, so such a request can never mean anything: it is refused here, once,
with a 400 that names the parameter, and no view has to think about it.

What is checked: the URL's captured parameters (named as the route names them: `slug`, `username`), the
rest of the path, every query parameter (name and values) and the fields of a posted form (not the
contents of uploaded files). JSON bodies are left to the serializers, whose text fields already refuse NUL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.deprecation import MiddlewareMixin

NUL = "\x00"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
REFUSAL = "Must not contain a NUL character (0x00); remove it."


def _printable(name: str) -> str:
    """A parameter's name as it can be shown: a NUL in the name itself written out."""
    return name.replace(NUL, "\\x00")


def _first_with_nul(pairs: Iterable[tuple[str, list[str]]]) -> str | None:
    for name, values in pairs:
        if NUL in name or any(NUL in value for value in values):
            return _printable(name)
    return None


def _kept_in_memory(request: HttpRequest) -> bool:
    """Whether the body is small enough for `request.body` (DATA_UPLOAD_MAX_MEMORY_SIZE): a larger
    multipart form carries files, which Django streams to disk as it parses them, and must not be read
    whole (`request.body` would refuse it, and a 50 MB dataset upload with it)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False  # the multipart parser refuses it with a 400
    return limit is None or length <= limit


def _form(request: HttpRequest) -> Iterable[tuple[str, list[str]]]:
    """The posted form's fields (not the contents of its files); nothing for other methods and bodies
    (JSON is a serializer's)."""
    if request.method != "POST" or request.content_type not in FORM_TYPES:
        return ()
    if request.content_type != "multipart/form-data" or _kept_in_memory(request):
        # Read the raw body first: Django keeps it, so a view that reads `request.body` after the form
        # has been parsed still can (parsing a multipart form otherwise consumes the stream).
        _ = request.body
    return request.POST.lists()


def parameter_with_nul(request: HttpRequest, view_kwargs: dict[str, Any]) -> str | None:
    """The name of the first parameter holding a NUL character, or None when there is none.

    Captured URL parameters come first, by their route names; a NUL elsewhere in the path is `path`.
    """
    for name, value in view_kwargs.items():
        if NUL in str(value):
            return name
    if NUL in request.path_info:
        return "path"
    return _first_with_nul(request.GET.lists()) or _first_with_nul(_form(request))


def refusal(request: HttpRequest, parameter: str) -> HttpResponse:
    """The REST API's error format (`{field: [message]}`) under /api/; a plain sentence for pages."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({parameter: [REFUSAL]}, status=400)
    return HttpResponseBadRequest(f"{parameter}: {REFUSAL}", content_type="text/plain; charset=utf-8")


def unreadable_form(request: HttpRequest, error: MultiPartParserError) -> HttpResponse:
    """The answer to a multipart form that cannot be parsed (no boundary, a broken part): what DRF would
    have said, in the REST API's format under /api/."""
    message = (
        f"The multipart form could not be read ({error}): send multipart/form-data with its boundary, or "
        "JSON."
    )
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": message}, status=400)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


class RefuseNulMiddleware(MiddlewareMixin):
    """Answers 400 naming the parameter when any part of the request holds a NUL character, and 400
    saying so when a posted multipart form cannot be read to check it."""

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        try:
            parameter = parameter_with_nul(request, view_kwargs)
        except MultiPartParserError as error:
            return unreadable_form(request, error)
        return None if parameter is None else refusal(request, parameter)
