from django.contrib import admin

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
