from django.contrib import admin

from learning.models import InvocationLogObject, InvocationLogSettings


@admin.register(InvocationLogSettings)
class InvocationLogSettingsAdmin(admin.ModelAdmin[InvocationLogSettings]):
    list_display = [
        "organization",
        "enabled",
        "sample_rate",
        "keep_requests",
        "keep_answers",
        "retention_days",
    ]
    list_filter = ["enabled", "mask_personal_data"]
    list_select_related = ["organization"]
    readonly_fields = ["updated_at", "updated_by"]


@admin.register(InvocationLogObject)
class InvocationLogObjectAdmin(admin.ModelAdmin[InvocationLogObject]):
    """The index is written by the log writer and retention only: an edited row would no longer describe
    its object, so rows are read-only here."""

    list_display = ["key", "organization", "deployment_name", "first_at", "last_at", "records", "bytes"]
    list_filter = ["organization"]
    list_select_related = ["organization"]
    search_fields = ["key", "deployment_name"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
