from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework import serializers

from marketplace.accounts.choices import Role
from marketplace.accounts.models import ApiKey, Membership, Organization, Quota
from marketplace.catalog.models import InstanceType

User = get_user_model()


class OrganizationSerializer(serializers.ModelSerializer[Organization]):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = ["slug", "name", "created_at", "role"]
        read_only_fields = ["slug", "created_at"]

    def get_role(self, organization: Organization) -> str | None:
        roles: dict[int, str] = self.context.get("roles", {})
        return roles.get(organization.pk)


class OrganizationCreateSerializer(serializers.ModelSerializer[Organization]):
    slug = serializers.SlugField(max_length=63)
    owner = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.all(), required=False, allow_null=True,
        help_text="Username of the first owner (default: nobody)",
    )  # fmt: skip

    class Meta:
        model = Organization
        fields = ["slug", "name", "owner"]

    def validate_slug(self, value: str) -> str:
        if Organization.objects.filter(slug=value).exists():
            raise serializers.ValidationError(f"An organisation '{value}' already exists.")
        return value


class MembershipSerializer(serializers.ModelSerializer[Membership]):
    username = serializers.CharField(source="user.username", read_only=True)
    # A CharField: an account may have no e-mail address (""), which is not a valid address.
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["username", "email", "role", "created_at"]
        read_only_fields = ["created_at"]


class MembershipCreateSerializer(serializers.Serializer[Membership]):
    username = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.all(),
        error_messages={
            "does_not_exist": "No one has this username: check its spelling (platform admins add people)."
        },
    )
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class MembershipUpdateSerializer(serializers.Serializer[Membership]):
    role = serializers.ChoiceField(choices=Role.choices)


class QuotaSerializer(serializers.ModelSerializer[Quota]):
    gpus_per_model = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=100_000), required=False
    )

    class Meta:
        model = Quota
        fields = [
            "max_gpus", "gpus_per_model", "max_deployments", "max_cpu_replicas", "monthly_token_budget",
            "requests_per_minute", "tokens_per_minute", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["updated_at"]
        extra_kwargs = {
            "max_gpus": {"max_value": 100_000},
            "max_deployments": {"max_value": 100_000},
            "max_cpu_replicas": {"max_value": 100_000},
            "monthly_token_budget": {"max_value": 10**15},
            "requests_per_minute": {"max_value": 10**7},
            "tokens_per_minute": {"max_value": 10**10},
        }

    def validate_gpus_per_model(self, value: dict[str, int]) -> dict[str, int]:
        known = set(InstanceType.objects.filter(gpu_count__gt=0).values_list("gpu_model", flat=True))
        unknown = sorted(set(value) - known)
        if unknown:
            raise serializers.ValidationError(
                f"Unknown GPU model {', '.join(repr(u) for u in unknown)}; known: {', '.join(sorted(known))}."
            )
        return value


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    # null once the person who made the key is deleted
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id", "organization", "name", "prefix", "created_by", "created_at", "expires_at", "revoked_at",
            "last_used_at", "is_active", "allowed_deployments", "requests_per_minute", "tokens_per_minute",
        ]  # fmt: skip
        read_only_fields = fields


# Bounds of a key's own limits: the organisation's quota has the same ceilings.
MAX_KEY_REQUESTS_PER_MINUTE = 10**7
MAX_KEY_TOKENS_PER_MINUTE = 10**10
MAX_KEY_DEPLOYMENTS = 100


class ApiKeySettingsSerializer(serializers.Serializer[ApiKey]):
    """What an owner or admin sets on a key, at creation and later (PATCH). Whether the deployments
    exist is the service's to say (accounts.services.check_key_scope)."""

    name = serializers.CharField(max_length=100)
    allowed_deployments = serializers.ListField(
        child=serializers.CharField(max_length=63),
        max_length=MAX_KEY_DEPLOYMENTS,
        required=False,
        help_text="Names of live deployments of the key's organisation it may call; empty: all of them",
    )
    requests_per_minute = serializers.IntegerField(
        min_value=1, max_value=MAX_KEY_REQUESTS_PER_MINUTE, required=False, allow_null=True,
        help_text="This key's own limit on top of its organisation's; null: only the organisation's",
    )  # fmt: skip
    tokens_per_minute = serializers.IntegerField(
        min_value=1, max_value=MAX_KEY_TOKENS_PER_MINUTE, required=False, allow_null=True,
        help_text="This key's own limit on top of its organisation's; null: only the organisation's",
    )  # fmt: skip


class ApiKeyCreateSerializer(ApiKeySettingsSerializer):
    organization = serializers.SlugField(required=False, help_text="Default: your only organisation")
    expires_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret. Shown once: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields
