"""GET /api/usage/: invocations aggregated by day, deployment and API key."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.db.models import Avg, Count, Q, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import tenancy
from serving.models import UsageRecord

GROUPS = {
    "day": "day",
    "deployment": "deployment__name",
    "key": "api_key__prefix",
    "organization": "organization__slug",
}
MAX_DAYS = 366
# No usage predates the platform; the floor also keeps the default window's date arithmetic in range.
FIRST_DAY = date(2000, 1, 1)


class UsageDayField(serializers.DateField):
    """A day of usage: an ISO date on or after FIRST_DAY."""

    def to_internal_value(self, value: Any) -> date:
        day: date = super().to_internal_value(value)
        if day < FIRST_DAY:
            raise serializers.ValidationError(f"Must be {FIRST_DAY.isoformat()} or later.")
        return day


class UsageQuerySerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False)
    since = UsageDayField(required=False, help_text="First day (UTC); default 30 days ago")
    until = UsageDayField(required=False, help_text="Last day (UTC), included; default today")
    group_by = serializers.CharField(
        required=False, default="day", help_text="Comma-separated: " + ", ".join(GROUPS)
    )

    def validate_group_by(self, value: str) -> list[str]:
        groups = [g.strip() for g in value.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            raise serializers.ValidationError(
                f"Group by any of {', '.join(GROUPS)}; not {', '.join(unknown) or 'nothing'}."
            )
        return groups

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        today = timezone.now().date()
        attrs.setdefault("until", today)
        attrs.setdefault("since", attrs["until"] - timedelta(days=29))
        if attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"since": ["Must not be after 'until'."]})
        if (attrs["until"] - attrs["since"]).days >= MAX_DAYS:
            raise serializers.ValidationError({"since": [f"At most {MAX_DAYS} days at a time."]})
        return attrs


class UsageView(APIView):
    """Usage of your organisations (platform admins: of all, or of `organization`), one row per group.
    A key limited to some deployments reads only theirs."""

    deployment_name_lookup = "deployment__name"

    @extend_schema(parameters=[UsageQuerySerializer], responses={200: dict})
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        organizations = tenancy.visible_organizations(request)
        if params.get("organization"):
            organizations = organizations.filter(slug=params["organization"])
            if not organizations.exists():
                raise serializers.ValidationError(
                    {"organization": [f"No organisation '{params['organization']}' that you belong to."]}
                )
        records = UsageRecord.objects.filter(
            organization__in=organizations,
            created_at__date__gte=params["since"],
            created_at__date__lte=params["until"],
        ).annotate(day=TruncDay("created_at"))
        records = tenancy.narrow_to_key_scope(request, records, self.deployment_name_lookup)
        fields = [GROUPS[g] for g in params["group_by"]]
        rows = (
            records.values(*fields)
            .annotate(
                requests=Count("id"),
                errors=Count("id", filter=Q(status_code__gte=400)),
                prompt_tokens=Sum("prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
                average_latency_ms=Avg("latency_ms"),
                average_time_to_first_token_ms=Avg("time_to_first_token_ms"),
            )
            .order_by(*fields)
        )
        names = {v: k for k, v in GROUPS.items()}
        results = []
        for row in rows:
            item = {names.get(k, k): v for k, v in row.items()}
            if "day" in item and item["day"] is not None:
                item["day"] = item["day"].date().isoformat()
            for average in ("average_latency_ms", "average_time_to_first_token_ms"):
                if item[average] is not None:
                    item[average] = round(item[average], 1)
            results.append(item)
        return Response(
            {
                "since": params["since"],
                "until": params["until"],
                "group_by": params["group_by"],
                "results": results,
            }
        )
