from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework import serializers

from marketplace.accounts.models import Organization
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.models import LicenseAcceptance, Subscription


class LicenseAcceptanceSerializer(serializers.ModelSerializer[LicenseAcceptance]):
    accepted_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = LicenseAcceptance
        fields = ["license_identifier", "license_sha256", "accepted_by", "accepted_at"]


class SubscriptionSerializer(serializers.ModelSerializer[Subscription]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    model: serializers.SlugRelatedField[ModelCard] = serializers.SlugRelatedField(
        source="model_card", slug_field="slug", read_only=True
    )
    model_name = serializers.CharField(source="model_card.name", read_only=True)
    license = serializers.CharField(source="model_card.license.identifier", read_only=True)
    accepted_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    license_current = serializers.BooleanField(read_only=True)
    in_force = serializers.BooleanField(read_only=True)

    class Meta:
        model = Subscription
        fields = [
            "id", "organization", "model", "model_name", "status", "license", "license_sha256",
            "license_current", "in_force", "accepted_by", "accepted_at", "cancelled_at", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class SubscriptionDetailSerializer(SubscriptionSerializer):
    acceptances = LicenseAcceptanceSerializer(many=True, read_only=True)

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "acceptances"]
        read_only_fields = fields


class SubscribeSerializer(serializers.Serializer[Subscription]):
    organization = serializers.SlugField(required=False, help_text="Default: your only organisation")
    model = serializers.SlugRelatedField(slug_field="slug", queryset=ModelCard.objects.all())
    accept_license = serializers.BooleanField(help_text="Must be true: you accept the model's license")
    license_sha256 = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        required=False,
        help_text="sha256 of the license terms you read (model detail); refused if they changed since",
    )

    def validate_accept_license(self, value: bool) -> bool:
        if not value:
            raise serializers.ValidationError(
                "Subscribing means accepting the model's license: set it to true."
            )
        return value
