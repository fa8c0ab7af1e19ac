from django.contrib import admin

from marketplace.subscriptions.models import LicenseAcceptance, Subscription


class LicenseAcceptanceInline(admin.TabularInline[LicenseAcceptance, Subscription]):
    model = LicenseAcceptance
    extra = 0
    can_delete = False
    readonly_fields = ["license_identifier", "license_sha256", "accepted_by", "accepted_at"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin[Subscription]):
    list_display = ["organization", "model_card", "status", "accepted_at", "accepted_by"]
    list_filter = ["status"]
    list_select_related = ["organization", "model_card", "accepted_by"]
    inlines = [LicenseAcceptanceInline]
    readonly_fields = ["license_sha256", "accepted_at", "accepted_by"]


@admin.register(LicenseAcceptance)
class LicenseAcceptanceAdmin(admin.ModelAdmin[LicenseAcceptance]):
    list_display = ["subscription", "license_identifier", "accepted_by", "accepted_at"]
    list_select_related = ["subscription__organization", "subscription__model_card", "accepted_by"]
