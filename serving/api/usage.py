"""GET /api/usage/: invocations aggregated by day, deployment and API key (read from the daily roll-up)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.db.models import BigIntegerField, FloatField, Func, Sum
from django.db.models.functions import Cast
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import tenancy
from serving.models import UsageDay

GROUPS = {
    "day": "day",
    "deployment": "deployment__name",
    "key": "api_key__prefix",
    "organization": "organization__slug",
}
FIGURES = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "average_latency_ms",
    "average_time_to_first_token_ms",
)
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


class _Average(Func):
    """SUM(total) / SUM(count) in numeric, as AVG divides (NULL where the count is 0)."""

    output_field = FloatField()

    def __init__(self, total: str, count: str) -> None:
        super().__init__(Sum(total), Sum(count))

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:  # type: ignore[override]
        (total, total_params), (count, count_params) = (
            compiler.compile(e) for e in self.get_source_expressions()
        )
        return f"(({total})::numeric / NULLIF({count}, 0)::numeric)", [*total_params, *count_params]


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
        # The daily roll-up holds the records' exact sums per key and deployment a day
        # (serving.usage_days): an average is its sum over its count, as AVG computes it.
        records = UsageDay.objects.filter(
            organization__in=organizations, day__gte=params["since"], day__lte=params["until"]
        )
        records = tenancy.narrow_to_key_scope(request, records, self.deployment_name_lookup)
        fields = [GROUPS[g] for g in params["group_by"]]
        rows = (
            records.values(*fields)
            # The averages first: they read the columns `requests` and the rest, which the sums'
            # names would stand for afterwards.
            .annotate(
                average_latency_ms=_Average("latency_ms", "requests"),
                average_time_to_first_token_ms=_Average(
                    "time_to_first_token_ms", "time_to_first_token_count"
                ),
            )
            .annotate(
                requests=Cast(Sum("requests"), BigIntegerField()),
                errors=Cast(Sum("errors"), BigIntegerField()),
                prompt_tokens=Cast(Sum("prompt_tokens"), BigIntegerField()),
                completion_tokens=Cast(Sum("completion_tokens"), BigIntegerField()),
            )
            .order_by(*fields)
        )
        names = {v: k for k, v in GROUPS.items()}
        results = []
        for row in rows:
            item = {names[field]: row[field] for field in fields}
            item.update((figure, row[figure]) for figure in FIGURES)
            if "day" in item and item["day"] is not None:
                item["day"] = item["day"].isoformat()
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
