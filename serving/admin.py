from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from marketplace.catalog.models import InstanceTypePrice
from serving import costs
from serving.models import Deployment, DeploymentEvent


class DeploymentEventInline(admin.TabularInline[DeploymentEvent, Deployment]):
    model = DeploymentEvent
    extra = 0
    can_delete = False
    readonly_fields = ["created_at", "status", "message"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin[Deployment]):
    list_display = [
        "name",
        "organization",
        "model_card",
        "instance_type",
        "status",
        "ready_replicas",
        "created_at",
    ]
    list_filter = ["status", "backend", "autoscaling_policy"]
    list_select_related = ["organization", "model_card", "instance_type"]
    search_fields = ["name", "organization__slug", "model_card__slug"]
    readonly_fields = ["status", "status_message", "generation", "observed_generation", "endpoints"]
    inlines = [DeploymentEventInline]


@admin.register(DeploymentEvent)
class DeploymentEventAdmin(admin.ModelAdmin[DeploymentEvent]):
    list_display = ["deployment", "created_at", "status", "message"]
    list_select_related = ["deployment__organization"]
    list_filter = ["status"]


@admin.register(InstanceTypePrice)
class InstanceTypePriceAdmin(admin.ModelAdmin[InstanceTypePrice]):
    """Price versions: added, never edited (a correction is a newer version). Adding one re-prices the
    metered hours it governs (serving.costs.add_price), which is why it lives beside the serving rows."""

    list_display = ["instance_type", "hourly_price_usd", "effective_from", "is_estimate", "source"]
    list_filter = ["is_estimate", "instance_type__provider"]
    list_select_related = ["instance_type"]
    search_fields = ["instance_type__slug", "instance_type__name", "source"]
    autocomplete_fields = ["instance_type"]

    def has_change_permission(self, request: HttpRequest, obj: InstanceTypePrice | None = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: InstanceTypePrice | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: InstanceTypePrice, form: Any, change: bool) -> None:
        if change:
            return
        saved = costs.add_price(
            obj.instance_type,
            hourly_price_usd=obj.hourly_price_usd,
            effective_from=obj.effective_from,
            source=obj.source,
            is_estimate=obj.is_estimate,
        )
        obj.pk = saved.pk
