from django.contrib import admin

from marketplace.catalog.models import InstanceType, License, ModelCard, Provider


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


@admin.register(InstanceType)
class InstanceTypeAdmin(admin.ModelAdmin[InstanceType]):
    list_display = ["name", "provider", "gpu_model", "gpu_count", "gpu_memory_gb", "hourly_price_usd"]
    list_filter = ["provider", "gpu_model"]
    search_fields = ["name", "slug", "gpu_model"]
