from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.catalog import fits
from marketplace.catalog.choices import CommercialUse
from marketplace.catalog.models import InstanceType, License, ModelCard, Provider


class ProviderSerializer(serializers.ModelSerializer[Provider]):
    model_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Provider
        fields = ["slug", "name", "url", "huggingface_org", "model_count"]


class LicenseSerializer(serializers.ModelSerializer[License]):
    class Meta:
        model = License
        fields = ["identifier", "name", "url", "commercial_use", "text", "sha256"]


class InstanceTypeSerializer(serializers.ModelSerializer[InstanceType]):
    class Meta:
        model = InstanceType
        fields = [
            "slug", "name", "provider", "gpu_model", "gpu_product", "gpu_count", "gpu_memory_gb",
            "total_gpu_memory_gb", "vcpu", "memory_gb", "hourly_price_usd", "price_region", "price_as_of",
            "price_source", "price_is_estimate", "node_labels",
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
    commercial_use = serializers.ChoiceField(
        source="license.commercial_use", choices=CommercialUse.choices, read_only=True
    )
    gated = serializers.BooleanField(
        read_only=True, allow_null=True, help_text="null when it is not known whether the Hub gates the model"
    )
    gpu_memory_gb = serializers.IntegerField(
        read_only=True, help_text="GPU memory needed at the default context (default_max_model_len)"
    )
    default_max_model_len = serializers.IntegerField(source="facts.default_context", read_only=True)
    routes = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="The invoke routes a deployment of the model serves (chat.completions, responses, "
        "completions, embeddings, rerank, score, audio.transcriptions, audio.translations); "
        "empty when the engine cannot serve it",
    )
    servable = serializers.BooleanField(read_only=True, help_text="Whether the pinned engine can serve it")
    not_servable_reason = serializers.CharField(
        read_only=True, help_text="Why not, when it cannot; else empty"
    )

    class Meta:
        model = ModelCard
        fields = [
            "slug", "name", "provider", "provider_name", "family", "summary", "huggingface_repo",
            "tasks", "modalities_in", "modalities_out", "languages", "domains", "license", "license_name",
            "commercial_use", "parameters", "parameters_billions", "context_length", "default_max_model_len",
            "gpu_memory_gb", "min_gpu_memory_gb", "gated", "cpu_capable", "release_date", "routes",
            "servable", "not_servable_reason",
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
            "commercial_use": card.license.commercial_use,
            "parameters": card.parameters,
            "parameters_billions": card.parameters_billions,
            "context_length": card.context_length,
            "default_max_model_len": card.facts.default_context,
            "gpu_memory_gb": card.gpu_memory_gb,
            "min_gpu_memory_gb": card.min_gpu_memory_gb,
            "gated": card.gated,
            "cpu_capable": card.cpu_capable,
            "release_date": card.release_date.isoformat() if card.release_date else None,
            "routes": list(card.routes),
            "servable": card.servable,
            "not_servable_reason": card.not_servable_reason,
        }


class FitSerializer(serializers.Serializer[InstanceType]):
    """An instance type the card fits: on how many GPUs, at what default max model length, needing what."""

    instance_type = serializers.CharField(source="slug")
    name = serializers.CharField()
    gpu_model = serializers.CharField()
    gpu_count = serializers.IntegerField()
    tensor_parallel_size = serializers.SerializerMethodField()
    max_model_len = serializers.SerializerMethodField(
        help_text="The longest context that fits, at most the card's default (null on CPU)"
    )
    gpu_memory_needed_gb = serializers.SerializerMethodField()
    hourly_price_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    price_is_estimate = serializers.BooleanField()

    def _placement(self, instance: InstanceType) -> fits.Placement | None:
        if instance.gpu_count == 0:
            return None
        card: ModelCard = self.context["card"]
        return card.placement(instance)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_tensor_parallel_size(self, instance: InstanceType) -> int | None:
        placement = self._placement(instance)
        return placement.tensor_parallel_size if placement else None

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_max_model_len(self, instance: InstanceType) -> int | None:
        placement = self._placement(instance)
        return placement.max_model_len if placement else None

    @extend_schema_field(serializers.IntegerField())
    def get_gpu_memory_needed_gb(self, instance: InstanceType) -> int:
        placement = self._placement(instance)
        card: ModelCard = self.context["card"]
        return placement.estimate.needed_gb if placement else card.gpu_memory_gb


class ProviderSummarySerializer(ProviderSerializer):
    """A provider as a card names it: the card's query counts no models, so no `model_count` (which the
    schema would otherwise promise)."""

    class Meta(ProviderSerializer.Meta):
        fields = ["slug", "name", "url", "huggingface_org"]


class ModelCardDetailSerializer(ModelCardSerializer):
    license = LicenseSerializer(read_only=True)  # type: ignore[assignment]
    provider = ProviderSummarySerializer(read_only=True)  # type: ignore[assignment]
    fits = serializers.SerializerMethodField()
    license_terms = serializers.CharField(read_only=True, help_text="The text a subscriber accepts")
    kv_cache_bytes_per_token = serializers.IntegerField(
        source="facts.kv_bytes_per_token",
        read_only=True,
        help_text="2 (K and V) × layers × KV heads × head size × 2 bytes; 0 when the card has no layer facts",
    )

    class Meta(ModelCardSerializer.Meta):
        fields = [
            *ModelCardSerializer.Meta.fields,
            "revision", "base_model", "pipeline_tag", "tags", "license_url", "license_terms",
            "license_sha256", "active_parameters", "dtype", "gpu_memory_stated", "embedding_dimensions",
            "num_hidden_layers", "num_key_value_heads", "head_dim", "kv_latent_dim",
            "kv_cache_bytes_per_token", "engine_defaults", "fits", "updated_at",
        ]  # fmt: skip

    @extend_schema_field(FitSerializer(many=True))
    def get_fits(self, card: ModelCard) -> list[dict[str, Any]]:
        fitting = InstanceType.objects.fitting(card).order_by("hourly_price_usd", "gpu_count")
        return list(FitSerializer(fitting, many=True, context={"card": card}).data)  # type: ignore[arg-type]
