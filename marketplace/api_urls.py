"""The REST API under /api/: one router, every app registers its viewsets here."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from learning.api import datasets as learning_datasets
from learning.api import evaluations as learning_evaluations
from learning.api import guardrails as learning_guardrails
from learning.api import routers as learning_routers
from learning.api import tuning as learning_tuning
from learning.api import views as learning
from marketplace.accounts.api import budgets as account_budgets
from marketplace.accounts.api import views as accounts
from marketplace.catalog.api import custom_models as catalog_custom_models
from marketplace.catalog.api import views as catalog
from marketplace.subscriptions.api import views as subscriptions
from serving.api import capacity as serving_capacity
from serving.api import costs as serving_costs
from serving.api import usage
from serving.api import views as serving

router = DefaultRouter(trailing_slash=True)
router.register("models", catalog.ModelCardViewSet, basename="modelcard")
router.register("instance-types", catalog.InstanceTypeViewSet, basename="instancetype")
router.register("providers", catalog.ProviderViewSet, basename="provider")
router.register("custom-models", catalog_custom_models.CustomModelViewSet, basename="custommodel")
router.register("organizations", accounts.OrganizationViewSet, basename="organization")
router.register("api-keys", accounts.ApiKeyViewSet, basename="apikey")
router.register("subscriptions", subscriptions.SubscriptionViewSet, basename="subscription")
router.register("deployments", serving.DeploymentViewSet, basename="deployment")
router.register(
    "invocation-log-settings", learning.InvocationLogSettingsViewSet, basename="invocationlogsettings"
)
router.register("invocation-logs", learning.InvocationLogViewSet, basename="invocationlog")
router.register("datasets", learning_datasets.DatasetViewSet, basename="dataset")
router.register("evaluations", learning_evaluations.EvaluationViewSet, basename="evaluation")
router.register("routers", learning_routers.RouterViewSet, basename="router")
router.register("tuning-jobs", learning_tuning.TuningJobViewSet, basename="tuningjob")
router.register("feedback", learning_routers.FeedbackViewSet, basename="feedback")
router.register("guardrails", learning_guardrails.GuardrailViewSet, basename="guardrail")
router.register("instance-type-prices", serving_costs.InstanceTypePriceViewSet, basename="instancetypeprice")
router.register("budgets", account_budgets.BudgetViewSet, basename="budget")

urlpatterns = [
    path(
        "organizations/<slug:slug>/members/",
        accounts.MemberListView.as_view(),
        name="organization-members",
    ),
    path(
        "organizations/<slug:slug>/members/<str:username>/",
        accounts.MemberDetailView.as_view(),
        name="organization-member",
    ),
    path("organizations/<slug:slug>/quota/", accounts.QuotaView.as_view(), name="organization-quota"),
    path("usage/", usage.UsageView.as_view(), name="usage"),
    path("costs/", serving_costs.CostView.as_view(), name="costs"),
    path("capacity/", serving_capacity.CapacityView.as_view(), name="capacity"),
    *router.urls,
]
