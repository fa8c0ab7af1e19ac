from typing import TypeVar

from django.contrib import admin
from django.db.models import Model

from learning.models import (
    Dataset,
    Evaluation,
    Feedback,
    InvocationLogObject,
    InvocationLogSettings,
    Router,
    RouterSample,
    RouterTraining,
    RouterVersion,
)


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


M = TypeVar("M", bound=Model)


class ReadOnlyAdmin(admin.ModelAdmin[M]):
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Router)
class RouterAdmin(ReadOnlyAdmin[Router]):
    """Read-only: a router's fields are checked against each other and the organisation's deployments
    by learning.router_service, which the API and the web UI call."""

    list_display = ["name", "organization", "fallback", "quality_difference", "mode", "active_version"]
    list_filter = ["mode", "organization"]
    list_select_related = ["organization", "active_version"]
    search_fields = ["name"]


@admin.register(RouterTraining)
class RouterTrainingAdmin(ReadOnlyAdmin[RouterTraining]):
    list_display = ["router", "evaluation", "scorer", "status", "progress", "created_at"]
    list_filter = ["status"]
    list_select_related = ["router", "evaluation"]


@admin.register(RouterVersion)
class RouterVersionAdmin(ReadOnlyAdmin[RouterVersion]):
    """A version describes its stored predictor and never changes."""

    list_display = ["router", "version", "kind", "bytes", "created_at"]
    list_filter = ["kind"]
    list_select_related = ["router"]

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(RouterSample)
class RouterSampleAdmin(ReadOnlyAdmin[RouterSample]):
    list_display = ["request_id", "router", "status", "created_at"]
    list_filter = ["status"]
    list_select_related = ["router"]
    search_fields = ["request_id"]


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin[Feedback]):
    list_display = ["request_id", "organization", "score", "deployment", "router", "updated_at"]
    list_filter = ["organization"]
    list_select_related = ["organization"]
    search_fields = ["request_id"]
