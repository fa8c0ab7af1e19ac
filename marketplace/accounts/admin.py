from django.contrib import admin

from marketplace.accounts.models import ApiKey, Membership, Organization, Quota


class MembershipInline(admin.TabularInline[Membership, Organization]):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class QuotaInline(admin.StackedInline[Quota, Organization]):
    model = Quota
    can_delete = False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin[Organization]):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    inlines = [QuotaInline, MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    list_display = ["user", "organization", "role"]
    list_filter = ["role"]
    list_select_related = ["user", "organization"]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin[Quota]):
    list_display = [
        "organization",
        "max_gpus",
        "max_deployments",
        "monthly_token_budget",
        "requests_per_minute",
    ]
    list_select_related = ["organization"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    """The secret is never stored, so the admin shows only the prefix and the hash."""

    list_display = ["name", "prefix", "organization", "created_at", "expires_at", "revoked_at"]
    list_filter = ["organization"]
    readonly_fields = ["prefix", "hashed_key", "created_at", "last_used_at"]
    search_fields = ["name", "prefix"]

    def has_add_permission(self, request: object) -> bool:
        return False  # a key's secret must be shown to its creator once: create keys through the API
