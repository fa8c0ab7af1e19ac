"""GET /api/costs/: what deployments cost, by day, deployment, model, instance type and API key (JSON or
CSV); /api/instance-type-prices/: the versioned prices costs are computed with (platform admins add)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, serializers, viewsets
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import tenancy
from marketplace.catalog.models import PRICE_HISTORY_START, InstanceType, InstanceTypePrice
from serving import costs
from serving.api.usage import UsageQuerySerializer

PAGE_ROWS = 1000
MAX_PAGE_ROWS = 100_000


class CostQuerySerializer(UsageQuerySerializer):
    """The usage API's `organization`, `since`, `until` and `group_by`, with the cost report's groups."""

    group_by = serializers.CharField(
        required=False,
        default="day",
        help_text="Comma-separated: " + ", ".join(costs.GROUPS) + " (`key`, as /api/usage/ says, is api_key)",
    )

    def validate_group_by(self, value: str) -> list[str]:
        # /api/usage/ calls the key group `key`: the same query string asks both.
        groups = [{"key": "api_key"}.get(g.strip(), g.strip()) for g in value.split(",") if g.strip()]
        unknown = [g for g in groups if g not in costs.GROUPS]
        if unknown or not groups:
            raise serializers.ValidationError(
                f"Group by any of {', '.join(costs.GROUPS)}; not {', '.join(unknown) or 'nothing'}."
            )
        if len(set(groups)) != len(groups):
            raise serializers.ValidationError("Name each group once.")
        return groups


class CostPageSerializer(serializers.Serializer[dict[str, Any]]):
    """Which rows of the report: JSON answers at most PAGE_ROWS unless `limit` says otherwise (a day by
    deployment report of a large organisation is tens of thousands of rows); CSV all unless it does."""

    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE_ROWS)
    offset = serializers.IntegerField(required=False, min_value=0, max_value=2_147_483_647, default=0)


class CostCsvRenderer(BaseRenderer):
    """The report as CSV for finance tools: a header row of stable column names (the groups asked for,
    then costs.FIGURES), one line per row; an empty figure is an empty cell."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        groups = [
            part for g in data["group_by"] for part in ([g, "deployment_id"] if g == "deployment" else [g])
        ]
        columns = [*groups, *costs.FIGURES]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(columns)
        for row in data["results"]:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        return out.getvalue().encode()


class CostView(APIView):
    """Costs of your organisations (platform admins: of all, or of `organization`), one row per group:
    replica-hours, cost in USD at the price in force at each hour, tokens served, cost per 1,000 tokens
    (idle time included), share of the whole cost, and whether an estimated price went into it. A row
    by deployment names it and gives its id (a deployment deleted and created again under its name is
    two rows). Rows are ordered by their groups; JSON answers the first 1,000 (`count` says how many
    there are; `limit` up to 100,000 and `offset` page through them), CSV all of them unless `limit`
    is given. `?format=csv` (or `Accept: text/csv`) answers CSV. A key limited to some deployments reads
    only theirs.

    Metering: each reconcile pass reads every deployment's ready replicas; the time between two
    readings counts at the lower of their two counts (a gap, such as the reconciler being down, is
    bounded by what both of its ends saw, never guessed: a replica that started or stopped inside it
    counts from the first reading on which both ends see it)."""

    deployment_name_lookup = "deployment__name"
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer, CostCsvRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        try:
            return super().perform_content_negotiation(request, force)
        except Http404:  # DRF's answer to an unknown ?format=
            raise exceptions.ValidationError({"format": ["Answer as json or csv."]}) from None

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        """Only the report is CSV: refusals (naming the field) and OPTIONS answer JSON whatever format
        was asked for."""
        if not (isinstance(getattr(response, "data", None), dict) and "results" in response.data):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(parameters=[CostQuerySerializer, CostPageSerializer], responses={200: dict})
    def get(self, request: Request) -> Response:
        query = CostQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        page = CostPageSerializer(data=request.query_params)
        page.is_valid(raise_exception=True)
        csv_wanted = request.accepted_renderer.format == "csv"
        limit = page.validated_data.get("limit", None if csv_wanted else PAGE_ROWS)
        organizations = tenancy.visible_organizations(request)
        if params.get("organization"):
            organizations = organizations.filter(slug=params["organization"])
            if not organizations.exists():
                raise serializers.ValidationError(
                    {"organization": [f"No organisation '{params['organization']}' that you belong to."]}
                )
        scope = costs.CostScope(
            organizations, params["since"], params["until"], deployment_names=tenancy.key_scope(request)
        )
        report = costs.cost_report(
            scope, params["group_by"], offset=page.validated_data["offset"], limit=limit
        )
        response = Response(
            {
                "since": params["since"],
                "until": params["until"],
                "group_by": params["group_by"],
                "count": report.count,
                "offset": page.validated_data["offset"],
                "limit": limit,
                "results": report.rows,
            }
        )
        if csv_wanted:
            name = f"costs-{params['since']}-{params['until']}.csv"
            response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


class InstanceTypePriceSerializer(serializers.ModelSerializer[InstanceTypePrice]):
    instance_type = serializers.SlugRelatedField(slug_field="slug", queryset=InstanceType.objects.all())
    hourly_price_usd = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)

    class Meta:
        model = InstanceTypePrice
        fields = [
            "id",
            "instance_type",
            "hourly_price_usd",
            "effective_from",
            "source",
            "is_estimate",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        validators: list[Any] = []  # the unique pair is checked in validate(), naming effective_from

    def validate_effective_from(self, value: datetime) -> datetime:
        if value < PRICE_HISTORY_START:
            raise serializers.ValidationError(f"Must be {PRICE_HISTORY_START:%Y-%m-%d} or later.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if InstanceTypePrice.objects.filter(
            instance_type=attrs["instance_type"], effective_from=attrs["effective_from"]
        ).exists():
            raise serializers.ValidationError(
                {"effective_from": [f"{attrs['instance_type'].slug} already has a price from this moment."]}
            )
        return attrs


class InstanceTypePriceViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Every version of every instance type's hourly price (`?instance_type=<slug>` for one), newest
    first. A platform admin adds a version; the metered hours it governs are re-priced at once.
    Versions are never edited: a correction is a newer version."""

    serializer_class = InstanceTypePriceSerializer
    queryset = InstanceTypePrice.objects.select_related("instance_type").order_by(
        "instance_type__slug", "-effective_from"
    )

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        slug = self.request.query_params.get("instance_type")
        return queryset.filter(instance_type__slug=slug) if slug else queryset

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not tenancy.is_platform_admin(request):
            raise exceptions.PermissionDenied("Only a platform admin may add a price; ask one.")
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = costs.add_price(
            data["instance_type"],
            hourly_price_usd=data["hourly_price_usd"],
            effective_from=data["effective_from"],
            source=data["source"],
            is_estimate=data.get("is_estimate", False),
        )
