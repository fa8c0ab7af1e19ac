"""REST: /api/invocation-log-settings/ and /api/invocation-logs/."""

from __future__ import annotations

from typing import Any, cast

import redis
from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from learning import browse
from learning.api.serializers import (
    ExportQuerySerializer,
    InvocationLogSettingsSerializer,
    RecordQuerySerializer,
)
from learning.capture import OVERFLOW_KEY
from learning.models import InvocationLogObject, InvocationLogSettings
from learning.storage import get_store
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import TenantScopedViewSet


def overflow_counts() -> dict[int, int]:
    """Records the full queue turned away, by organisation id; empty when Redis cannot be asked."""
    connection = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        found = cast(dict[bytes, bytes], connection.hgetall(OVERFLOW_KEY))
        return {int(k): int(v) for k, v in found.items()}
    except redis.RedisError:
        return {}
    finally:
        connection.close()


class InvocationLogSettingsViewSet(TenantScopedViewSet):
    """Invocation logging of your organisations, one entry each (off until an owner or admin turns it on).
    Owners and admins edit it at `/api/invocation-log-settings/<organization>/`; members read it."""

    queryset = InvocationLogSettings.objects.select_related("organization", "updated_by")
    serializer_class = InvocationLogSettingsSerializer
    lookup_url_kwarg = "organization_slug"
    lookup_value_regex = r"[-\w]+"
    pagination_class = None
    filter_backends: list[Any] = []

    def _organizations(self) -> QuerySet[Organization]:
        organizations = tenancy.visible_organizations(self.request).order_by("name")
        slug = self.request.query_params.get("organization")
        return organizations.filter(slug=slug) if slug else organizations

    def _settings_of(self, organization: Organization) -> InvocationLogSettings:
        found = self.get_queryset().filter(organization=organization).first()
        return found or InvocationLogSettings(organization=organization)

    def list(self, request: Request) -> Response:
        organizations = list(self._organizations())
        rows = {
            row.organization_id: row for row in self.get_queryset().filter(organization__in=organizations)
        }
        items = [rows.get(o.pk) or InvocationLogSettings(organization=o) for o in organizations]
        return Response(self.get_serializer(items, many=True, context=self._context()).data)

    def retrieve(self, request: Request, organization_slug: str) -> Response:
        organization = get_object_or_404(self._organizations(), slug=organization_slug)
        return Response(self.get_serializer(self._settings_of(organization), context=self._context()).data)

    def update(self, request: Request, organization_slug: str, partial: bool = False) -> Response:
        organization = get_object_or_404(self._organizations(), slug=organization_slug)
        self.require_manager(request, organization)
        serializer = self.get_serializer(
            self._settings_of(organization),
            data=request.data,
            partial=partial,
            context={**self._context(), "organization": organization},
        )
        serializer.is_valid(raise_exception=True)
        serializer.save(organization=organization, updated_by=request.user)
        return Response(serializer.data)

    def partial_update(self, request: Request, organization_slug: str) -> Response:
        return self.update(request, organization_slug, partial=True)

    def _context(self) -> dict[str, Any]:
        return {**self.get_serializer_context(), "overflow": overflow_counts()}

    def get_serializer(self, *args: Any, **kwargs: Any) -> Any:
        context = kwargs.pop("context", None) or self.get_serializer_context()
        return InvocationLogSettingsSerializer(*args, context=context, **kwargs)


class InvocationLogViewSet(mixins.ListModelMixin, TenantScopedViewSet):
    """Logged invocations of your organisations, newest object first, filtered by deployment, key prefix,
    time range, status and text; `next` continues a page. Members see every record's metadata but no
    bodies (no `request`, no `answer`, and `q` finds nothing of theirs); owners and admins see all."""

    queryset = InvocationLogObject.objects.all()
    lookup_value_regex = r"\d+-[A-Za-z0-9_-]+"
    pagination_class = None
    filter_backends: list[Any] = []

    def _readers(self) -> tuple[set[int], dict[int, str]]:
        """Ids of the visible organisations whose bodies the caller may read, and every visible slug."""
        organizations = list(tenancy.visible_organizations(self.request))
        readable = {o.pk for o in organizations if tenancy.can_manage(self.request, o)}
        return readable, {o.pk: o.slug for o in organizations}

    @extend_schema(
        operation_id="invocation_logs_list", parameters=[RecordQuerySerializer], responses={200: dict}
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        query = RecordQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        readable, slugs = self._readers()
        results, cursor = browse.page(
            self.get_queryset(),
            get_store(),
            browse.RecordFilter.from_query(params),
            readable=readable,
            slugs=slugs,
            limit=params["limit"],
            cursor=params.get("cursor"),
        )
        return Response({"results": results, "next": str(cursor) if cursor else None})

    @extend_schema(responses={200: dict})
    def retrieve(self, request: Request, pk: str) -> Response:
        parts = browse.split_record_id(pk)
        if parts is None:
            raise Http404
        object_pk, request_id = parts
        obj = get_object_or_404(self.get_queryset(), pk=object_pk)
        record = browse.find(get_store(), obj, request_id)
        if record is None:
            raise Http404
        readable, slugs = self._readers()
        return Response(
            browse.present(obj, record, slugs[obj.organization_id], bodies=obj.organization_id in readable)
        )

    @extend_schema(
        parameters=[ExportQuerySerializer],
        responses={(200, "application/x-ndjson"): OpenApiResponse(description="One record per line")},
    )
    @action(detail=False, methods=["get"])
    def export(self, request: Request) -> StreamingHttpResponse:
        """Every matching record of a time range (`since` and `until` required, at most 31 days) as JSON
        Lines, oldest object first; bodies as for the list."""
        query = ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        record_filter = browse.RecordFilter.from_query(params)
        objects = list(record_filter.objects(self.get_queryset()).order_by("first_at", "pk"))
        readable, slugs = self._readers()
        lines = browse.export_lines(objects, get_store(), record_filter, readable=readable, slugs=slugs)
        response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
        name = f"invocation-logs-{params['since']:%Y%m%dT%H%M}-{params['until']:%Y%m%dT%H%M}.jsonl"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
