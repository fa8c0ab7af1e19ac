"""/api/budgets/: monthly cost budgets of your organisations, their alerts and webhook deliveries.

Members read them; owners (and platform admins) create, change and delete them. The webhook secret is
shown once, in the answer to create (and to rotate-secret)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.accounts import budgets, tenancy
from marketplace.accounts.authentication import ApiKeyPrincipal
from marketplace.accounts.choices import Role
from marketplace.accounts.models import (
    DEFAULT_BUDGET_THRESHOLDS,
    Budget,
    BudgetAlert,
    Membership,
    WebhookDelivery,
)
from marketplace.api import TenantScopedViewSet

# Alerts and deliveries answered at most: a year of alerts of a budget with a few thresholds, and of
# deliveries with their retries.
LATEST = 200


class BudgetSerializer(serializers.ModelSerializer[Budget]):
    organization: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    deployment: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    spent_this_month_usd = serializers.SerializerMethodField(
        help_text="What it covers has cost since the start of this month (UTC); on a single budget only"
    )

    class Meta:
        model = Budget
        fields = [
            "id", "organization", "deployment", "monthly_amount_usd", "thresholds", "webhook_url",
            "scale_down_at_limit", "created_by", "created_at", "updated_at", "spent_this_month_usd",
        ]  # fmt: skip
        read_only_fields = fields

    def to_representation(self, budget: Budget) -> dict[str, Any]:
        data = dict(super().to_representation(budget))
        if not _sees_webhook(self.context, budget.organization_id):
            data["webhook_url"] = budgets.webhook_for_readers(budget.webhook_url)
        return data

    def get_spent_this_month_usd(self, budget: Budget) -> str | None:
        if not self.context.get("with_spent"):
            return None
        return str(budgets.spent(budget, timezone.now()).quantize(Decimal("0.01")))


def _sees_webhook(context: Mapping[str, Any], organization_id: int) -> bool:
    """Owners see a webhook's whole URL; members its host only (budgets.webhook_for_readers). Without
    `owned` in the context (answers to owners' own changes), the whole URL."""
    owned = context.get("owned")
    return owned is None or organization_id in owned


def owned_organizations(request: Request) -> set[int] | None:
    """The ids of the organisations the caller owns (one query); None for a platform admin, who owns all."""
    user = request.user
    if tenancy.is_platform_admin(request):
        return None
    if isinstance(user, ApiKeyPrincipal) or not user.is_authenticated:  # a key acts as a member
        return set()
    return set(
        Membership.objects.filter(user=user, role=Role.OWNER).values_list("organization_id", flat=True)
    )


def _http_url(value: str) -> None:
    if value and urlparse(value).scheme not in ("http", "https"):
        raise serializers.ValidationError("Must be an http:// or https:// URL.")
    # Said when the URL is set, not first at the month's first alert; delivery checks again, as the
    # name may resolve elsewhere by then.
    refusal = budgets.private_address_refusal(value) if value else ""
    if refusal:
        raise serializers.ValidationError(refusal)


class BudgetSettingsSerializer(serializers.Serializer[Budget]):
    monthly_amount_usd = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal("0.01"), max_value=budgets.MAX_AMOUNT_USD,
        help_text="USD per calendar month (UTC)",
    )  # fmt: skip
    thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        min_length=1,
        max_length=20,
        required=False,
        help_text="Percentages of the amount that alert when crossed; default [50, 80, 100]",
    )
    webhook_url = serializers.URLField(
        max_length=500, required=False, allow_blank=True, validators=[_http_url],
        help_text="Receives each alert as signed JSON; empty: no webhook",
    )  # fmt: skip
    scale_down_at_limit = serializers.BooleanField(
        required=False, help_text="At 100%, scale the deployments it covers down to their minimum"
    )


class BudgetCreateSerializer(BudgetSettingsSerializer):
    organization = serializers.SlugField(required=False, help_text="Default: your only organisation")
    deployment = serializers.CharField(
        max_length=40, required=False, allow_blank=True,
        help_text="A live deployment's name, for a budget of that deployment only; empty: the organisation",
    )  # fmt: skip


class BudgetCreatedSerializer(BudgetSerializer):
    webhook_secret = serializers.CharField(
        read_only=True, help_text="Signs every delivery (X-Marketplace-Signature). Shown once: store it now."
    )

    class Meta(BudgetSerializer.Meta):
        fields = [*BudgetSerializer.Meta.fields, "webhook_secret"]
        read_only_fields = fields


class BudgetAlertSerializer(serializers.ModelSerializer[BudgetAlert]):
    class Meta:
        model = BudgetAlert
        fields = ["id", "month", "threshold", "spent_usd", "amount_usd", "message", "created_at"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    threshold = serializers.IntegerField(source="alert.threshold", read_only=True)
    month = serializers.DateField(source="alert.month", read_only=True)

    def to_representation(self, delivery: WebhookDelivery) -> dict[str, Any]:
        data = dict(super().to_representation(delivery))
        if not _sees_webhook(self.context, self.context.get("organization_id", 0)):
            data["url"] = budgets.webhook_for_readers(delivery.url)
        return data

    class Meta:
        model = WebhookDelivery
        fields = [
            "id", "alert", "month", "threshold", "attempt", "url", "status_code", "delivered", "error",
            "duration_ms", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class BudgetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """Monthly cost budgets of your organisations (one for the organisation, one per deployment at most).
    Crossing a threshold alerts once per month: an alert here, a banner on the organisation's pages, and
    a signed POST to the webhook, retried with backoff."""

    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    queryset = Budget.objects.select_related("organization", "deployment", "created_by")
    serializer_class = BudgetSerializer
    ordering_fields = ["created_at", "monthly_amount_usd"]
    ordering = ["created_at"]

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        context["with_spent"] = self.action == "retrieve"
        context["owned"] = owned_organizations(self.request)
        return context

    def _require_owner(self, budget_or_organization: Any) -> None:
        organization = getattr(budget_or_organization, "organization", budget_or_organization)
        budgets.require_budget_owner(tenancy.role_in(self.request, organization), organization)

    @extend_schema(request=BudgetCreateSerializer, responses={201: BudgetCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        from serving.models import Deployment

        serializer = BudgetCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = tenancy.resolve_organization(request, data.get("organization"))
        self._require_owner(organization)
        deployment = None
        if data.get("deployment"):
            deployment = (
                Deployment.objects.live().filter(organization=organization, name=data["deployment"]).first()
            )
            if deployment is None:
                raise serializers.ValidationError(
                    {
                        "deployment": [
                            f"{organization.name} has no live deployment named '{data['deployment']}'."
                        ]
                    }
                )
        budget, secret = budgets.create_budget(
            organization=organization,
            deployment=deployment,
            monthly_amount_usd=data["monthly_amount_usd"],
            thresholds=data.get("thresholds", DEFAULT_BUDGET_THRESHOLDS),
            webhook_url=data.get("webhook_url", ""),
            scale_down_at_limit=data.get("scale_down_at_limit", False),
            user=request.user,
        )
        answer = dict(BudgetCreatedSerializer(budget).data)
        answer["webhook_secret"] = secret
        return Response(answer, status=status.HTTP_201_CREATED)

    @extend_schema(request=BudgetSettingsSerializer, responses={200: BudgetSerializer})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        budget = self.get_object()
        self._require_owner(budget)
        serializer = BudgetSettingsSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return Response(BudgetSerializer(budgets.update_budget(budget, serializer.validated_data)).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        budget = self.get_object()
        self._require_owner(budget)
        budgets.delete_budget(budget)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,
        responses={200: inline_serializer("BudgetSecret", {"webhook_secret": serializers.CharField()})},
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """A new webhook secret, shown once; deliveries from now on are signed with it."""
        budget = self.get_object()
        self._require_owner(budget)
        return Response({"webhook_secret": budgets.rotate_secret(budget)})

    @extend_schema(responses={200: BudgetAlertSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def alerts(self, request: Request, pk: str | None = None) -> Response:
        """The thresholds this budget crossed, newest first (the latest 200)."""
        alerts: QuerySet[BudgetAlert] = self.get_object().alerts.all()[:LATEST]
        return Response(BudgetAlertSerializer(alerts, many=True).data)

    @extend_schema(responses={200: WebhookDeliverySerializer(many=True)})
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        """Every attempt to deliver this budget's alerts to its webhook, newest first (the latest 200)."""
        budget = self.get_object()
        deliveries = WebhookDelivery.objects.filter(alert__budget=budget).select_related("alert")[:LATEST]
        context = {**self.get_serializer_context(), "organization_id": budget.organization_id}
        return Response(WebhookDeliverySerializer(deliveries, many=True, context=context).data)
