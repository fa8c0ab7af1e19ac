"""The web UI's pages. Names are used as `web:<name>`."""

from django.contrib.auth import views as auth_views
from django.urls import path

from marketplace.web import sign_in
from marketplace.web.views import (
    budgets,
    capacity,
    catalog,
    costs,
    deployments,
    engine_log,
    evaluations,
    idle,
    keys,
    logs,
    organization,
    platform,
    playground,
)

app_name = "web"

urlpatterns = [
    path("", catalog.catalog, name="catalog"),
    path("sign-in/", sign_in.SignInView.as_view(), name="sign-in"),
    path("sign-out/", auth_views.LogoutView.as_view(), name="sign-out"),
    path("models/<str:slug>/", catalog.model_page, name="model"),
    path("models/<str:slug>/subscribe/", catalog.subscribe, name="subscribe"),
    path("models/<str:slug>/unsubscribe/", catalog.unsubscribe, name="unsubscribe"),
    path("deployments/", deployments.deployment_list, name="deployments"),
    path("deployments/new/", deployments.deploy, name="deploy"),
    path("deployments/<int:pk>/", deployments.deployment_detail, name="deployment"),
    path("deployments/<int:pk>/usage/", deployments.deployment_usage, name="deployment-usage"),
    path("deployments/<int:pk>/scale/", deployments.deployment_scale, name="deployment-scale"),
    path("deployments/<int:pk>/delete/", deployments.deployment_delete, name="deployment-delete"),
    path("deployments/<int:pk>/engine-log/", engine_log.engine_log, name="deployment-engine-log"),
    path("deployments/<int:pk>/playground/", playground.playground, name="playground"),
    path("deployments/<int:pk>/playground/chat/", playground.playground_chat, name="playground-chat"),
    path("api-keys/", keys.api_keys, name="api-keys"),
    path("api-keys/new/", keys.create_api_key, name="api-key-create"),
    path("api-keys/<int:pk>/revoke/", keys.revoke_api_key, name="api-key-revoke"),
    path("api-keys/<int:pk>/settings/", keys.change_api_key, name="api-key-change"),
    path("invocation-logs/", logs.logs, name="logs"),
    path("invocation-logs/settings/", logs.log_settings, name="log-settings"),
    path("invocation-logs/<str:record_id>/", logs.log_record, name="log-record"),
    path("datasets/", evaluations.dataset_list, name="datasets"),
    path("datasets/<int:pk>/", evaluations.dataset_detail, name="dataset"),
    path("evaluations/", evaluations.evaluation_list, name="evaluations"),
    path("evaluations/<int:pk>/", evaluations.evaluation_detail, name="evaluation"),
    path("evaluations/<int:pk>/cancel/", evaluations.evaluation_cancel, name="evaluation-cancel"),
    path("organization/", organization.organization_page, name="organization"),
    path("costs/", costs.costs_page, name="costs"),
    path("organization/switch/", organization.switch, name="organization-switch"),
    path("organization/members/", organization.add_member, name="member-add"),
    path("organization/members/<str:username>/role/", organization.change_role, name="member-role"),
    path("organization/members/<str:username>/remove/", organization.remove_member, name="member-remove"),
    path("deployments/<int:pk>/scale-idle/", idle.scale_idle, name="deployment-scale-idle"),
    path("budgets/", budgets.budget_list, name="budgets"),
    path("budgets/<int:pk>/", budgets.budget_detail, name="budget"),
    path("budgets/<int:pk>/rotate-secret/", budgets.budget_rotate_secret, name="budget-rotate-secret"),
    path("budgets/<int:pk>/delete/", budgets.budget_delete, name="budget-delete"),
    path("platform/capacity/", capacity.capacity_page, name="platform-capacity"),
    path("platform/", platform.overview, name="platform"),
    path("platform/organizations/<slug:slug>/quota/", platform.edit_quota, name="platform-quota"),
]
