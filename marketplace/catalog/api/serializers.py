from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.catalog import fits
from marketplace.catalog.models import InstanceType, License, ModelCard, Provider


class ProviderSerializer(serializers.ModelSerializer[Provider]):
    model_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Provider
        fields = ["slug", "name", "url", "huggingface_org", "model_count"]


class LicenseSerializer(serializers.ModelSerializer[License]):
    class Meta:
        model = License
        fields = ["identifier", "name", "url", "text", "sha256"]


class InstanceTypeSerializer(serializers.ModelSerializer[InstanceType]):
    class Meta:
        model = InstanceType
        fields = [
            "slug", "name", "provider", "gpu_model", "gpu_product", "gpu_count", "gpu_memory_gb",
            "total_gpu_memory_gb", "vcpu", "memory_gb", "hourly_price_usd", "price_region", "price_as_of",
            "price_source", "node_labels",
        ]  # fmt: skip


class ModelCardSerializer(serializers.ModelSerializer[ModelCard]):
    provider: serializers.SlugRelatedField[Provider] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    provider_name = serializers.CharField(source="provider.name", read_only=True)
    license: serializers.SlugRelatedField[License] = serializers.SlugRelatedField(
        slug_field="identifier", read_only=True
    )
    parameters_billions = serializers.FloatField(read_only=True)

    class Meta:
        model = ModelCard
        fields = [
            "slug", "name", "provider", "provider_name", "family", "summary", "huggingface_repo",
            "tasks", "modalities_in", "modalities_out", "languages", "domains", "license", "license_name",
            "parameters", "parameters_billions", "context_length", "gpu_memory_gb", "gated", "cpu_capable",
            "release_date",
        ]  # fmt: skip


class ModelCardListSerializer(ModelCardSerializer):
    """The list's rows, built directly: DRF's per-field machinery costs more than the query at 20 rows a
    page. The same fields and values as ModelCardSerializer (a test compares the two on every card)."""

    def to_representation(self, card: ModelCard) -> dict[str, Any]:
        return {
            "slug": card.slug,
            "name": card.name,
            "provider": card.provider.slug,
            "provider_name": card.provider.name,
            "family": card.family,
            "summary": card.summary,
            "huggingface_repo": card.huggingface_repo,
            "tasks": card.tasks,
            "modalities_in": card.modalities_in,
            "modalities_out": card.modalities_out,
            "languages": card.languages,
            "domains": card.domains,
            "license": card.license.identifier,
            "license_name": card.license_name,
            "parameters": card.parameters,
            "parameters_billions": card.parameters_billions,
            "context_length": card.context_length,
            "gpu_memory_gb": card.gpu_memory_gb,
            "gated": card.gated,
            "cpu_capable": card.cpu_capable,
            "release_date": card.release_date.isoformat() if card.release_date else None,
        }


class FitSerializer(serializers.Serializer[InstanceType]):
    instance_type = serializers.CharField(source="slug")
    name = serializers.CharField()
    gpu_model = serializers.CharField()
    gpu_count = serializers.IntegerField()
    tensor_parallel_size = serializers.SerializerMethodField()
    hourly_price_usd = serializers.DecimalField(max_digits=12, decimal_places=6)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_tensor_parallel_size(self, instance: InstanceType) -> int | None:
        card: ModelCard = self.context["card"]
        if instance.gpu_count == 0:
            return None
        return fits.smallest_tensor_parallel_size(
            card.gpu_memory_gb, instance.gpu_count, instance.gpu_memory_gb
        )


class ModelCardDetailSerializer(ModelCardSerializer):
    license = LicenseSerializer(read_only=True)  # type: ignore[assignment]
    provider = ProviderSerializer(read_only=True)  # type: ignore[assignment]
    fits = serializers.SerializerMethodField()
    license_terms = serializers.CharField(read_only=True, help_text="The text a subscriber accepts")

    class Meta(ModelCardSerializer.Meta):
        fields = [
            *ModelCardSerializer.Meta.fields,
            "revision", "base_model", "pipeline_tag", "tags", "license_url", "license_terms",
            "license_sha256", "active_parameters", "dtype", "gpu_memory_stated", "embedding_dimensions",
            "engine_defaults", "fits", "updated_at",
        ]  # fmt: skip

    @extend_schema_field(FitSerializer(many=True))
    def get_fits(self, card: ModelCard) -> list[dict[str, Any]]:
        fitting = InstanceType.objects.fitting(card).order_by("hourly_price_usd", "gpu_count")
        return list(FitSerializer(fitting, many=True, context={"card": card}).data)  # type: ignore[arg-type]
