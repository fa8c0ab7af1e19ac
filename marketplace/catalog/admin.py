from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.catalog.models import CustomModel, InstanceType, License, ModelCard, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin[Provider]):
    list_display = ["name", "slug", "huggingface_org"]
    search_fields = ["name", "slug"]


@admin.register(License)
class LicenseAdmin(admin.ModelAdmin[License]):
    list_display = ["identifier", "name", "sha256"]
    search_fields = ["identifier", "name"]
    readonly_fields = ["sha256"]


@admin.register(ModelCard)
class ModelCardAdmin(admin.ModelAdmin[ModelCard]):
    list_display = [
        "name",
        "provider",
        "parameters",
        "context_length",
        "gpu_memory_gb",
        "cpu_capable",
        "gated",
    ]
    list_filter = ["provider", "cpu_capable", "gated", "license"]
    search_fields = ["name", "slug", "huggingface_repo"]
    list_select_related = ["provider"]
    autocomplete_fields = ["provider", "license"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelCard]:
        """Platform admins see every card, organisations' custom models included (`organization` says
        whose)."""
        return ModelCard.every_card.select_related("provider")


@admin.register(CustomModel)
class CustomModelAdmin(admin.ModelAdmin[CustomModel]):
    list_display = ["name", "organization", "source", "architecture", "created_at"]
    list_filter = ["source"]
    search_fields = ["name", "organization__slug", "huggingface_repo", "path"]
    list_select_related = ["organization"]
    readonly_fields = ["card", "facts", "hf_token_encrypted"]


@admin.register(InstanceType)
class InstanceTypeAdmin(admin.ModelAdmin[InstanceType]):
    list_display = ["name", "provider", "gpu_model", "gpu_count", "gpu_memory_gb", "hourly_price_usd"]
    list_filter = ["provider", "gpu_model"]
    search_fields = ["name", "slug", "gpu_model"]
