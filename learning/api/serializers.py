from __future__ import annotations

from typing import Any

from rest_framework import serializers

from learning.browse import Cursor
from learning.models import MAX_RETENTION_DAYS, InvocationLogSettings
from marketplace.accounts.models import ApiKey, Organization
from serving.choices import DeploymentStatus
from serving.models import Deployment

MAX_NAMES = 200


class InvocationLogSettingsSerializer(serializers.ModelSerializer[InvocationLogSettings]):
    """An organisation's invocation logging. `context["organization"]` is the organisation being edited;
    `context["overflow"]` maps organisation ids to the records the full queue turned away."""

    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    deployments = serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, max_length=MAX_NAMES,
        help_text="Names of the deployments to log; empty: all of them",
    )  # fmt: skip
    api_keys = serializers.ListField(
        child=serializers.CharField(max_length=16), required=False, max_length=MAX_NAMES,
        help_text="Prefixes of the API keys to log (mk-…); empty: all of them",
    )  # fmt: skip
    sample_rate = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    retention_days = serializers.IntegerField(min_value=1, max_value=MAX_RETENTION_DAYS, required=False)
    updated_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    # Both null until the settings are first saved (they are shown before, with their defaults).
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)
    overflow = serializers.SerializerMethodField(
        help_text="Records not logged because the queue was full (since Redis last restarted empty)"
    )

    class Meta:
        model = InvocationLogSettings
        fields = [
            "organization", "enabled", "deployments", "api_keys", "sample_rate", "keep_requests",
            "keep_answers", "retention_days", "mask_personal_data", "overflow", "updated_at", "updated_by",
        ]  # fmt: skip
        read_only_fields = ["updated_at"]

    def get_overflow(self, instance: InvocationLogSettings) -> int:
        return int(self.context.get("overflow", {}).get(instance.organization_id, 0))

    def _organization(self) -> Organization:
        return self.context["organization"]

    def validate_deployments(self, names: list[str]) -> list[str]:
        known = set(
            Deployment.objects.filter(organization=self._organization(), name__in=names)
            .exclude(status=DeploymentStatus.DELETED)
            .values_list("name", flat=True)
        )
        unknown = sorted(set(names) - known)
        if unknown:
            raise serializers.ValidationError(
                f"No deployment named {', '.join(unknown)} in '{self._organization().slug}'; "
                "name deployments that exist, or leave the list empty to log all of them."
            )
        return sorted(set(names))

    def validate_api_keys(self, prefixes: list[str]) -> list[str]:
        known = set(
            ApiKey.objects.filter(organization=self._organization(), prefix__in=prefixes).values_list(
                "prefix", flat=True
            )
        )
        unknown = sorted(set(prefixes) - known)
        if unknown:
            raise serializers.ValidationError(
                f"No API key with the prefix {', '.join(unknown)} in '{self._organization().slug}'; "
                "give the prefixes shown in the key list (mk-…), or leave the list empty to log all keys."
            )
        return sorted(set(prefixes))


class RecordQuerySerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False)
    deployment = serializers.CharField(required=False, max_length=40)
    key = serializers.CharField(required=False, max_length=16, help_text="An API key's prefix (mk-…)")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    status = serializers.CharField(
        required=False, help_text="An HTTP status (200, 429…), or `errors` for every status from 400"
    )
    q = serializers.CharField(
        required=False, max_length=200, help_text="Text in the request or answer (owners and admins only)"
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200, default=50)
    cursor = serializers.CharField(required=False, help_text="The `next` value of the previous page")

    def validate_status(self, value: str) -> int | str:
        if value == "errors":
            return value
        if value.isascii() and value.isdigit() and 100 <= int(value) <= 599:
            return int(value)
        raise serializers.ValidationError("An HTTP status from 100 to 599, or `errors`.")

    def validate_cursor(self, value: str) -> Cursor:
        try:
            return Cursor.parse(value)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"since": ["Must not be after 'until'."]})
        return attrs


class ExportQuerySerializer(RecordQuerySerializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    MAX_DAYS = 31

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if (attrs["until"] - attrs["since"]).days > self.MAX_DAYS:
            raise serializers.ValidationError(
                {"since": [f"Export at most {self.MAX_DAYS} days at a time; split longer ranges."]}
            )
        return attrs
