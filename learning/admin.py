from django.contrib import admin

from learning.models import Dataset, Evaluation, InvocationLogObject, InvocationLogSettings


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


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin[Dataset]):
    """A dataset version is immutable and its row describes its stored object: read-only here (delete
    through the API or the web UI, which remove the object too)."""

    list_display = ["name", "version", "organization", "source", "records", "heldout_records", "created_at"]
    list_filter = ["source", "organization"]
    list_select_related = ["organization"]
    search_fields = ["name"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin[Evaluation]):
    """Read-only: the status moves by the run's conditional updates only (learning.evaluations)."""

    list_display = ["name", "organization", "dataset", "status", "total_items", "created_at"]
    list_filter = ["status", "organization"]
    list_select_related = ["organization", "dataset"]
    search_fields = ["name"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
