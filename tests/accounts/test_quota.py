"""Quotas: members read them; only platform admins change them; bad values are refused whole."""

import pytest

from marketplace.accounts.models import Quota

pytestmark = pytest.mark.django_db

QUOTA = "/api/organizations/acme/quota/"


def test_members_read_their_quota(client_for, member) -> None:
    quota = client_for(member).get(QUOTA).json()
    assert {"max_gpus", "gpus_per_model", "max_deployments", "max_cpu_replicas", "monthly_token_budget",
            "requests_per_minute", "tokens_per_minute"} <= set(quota)  # fmt: skip


def test_outsider_cannot_read_or_change_the_quota(client_for, outsider) -> None:
    client = client_for(outsider)
    assert client.get(QUOTA).status_code == 404
    assert client.patch(QUOTA, {"max_gpus": 999}, format="json").status_code == 404


@pytest.mark.parametrize("who", ["owner", "member"])
def test_organisation_people_cannot_change_their_quota(request, client_for, who) -> None:
    response = client_for(request.getfixturevalue(who)).patch(QUOTA, {"max_gpus": 999}, format="json")
    assert response.status_code == 403
    assert Quota.objects.get(organization__slug="acme").max_gpus != 999


def test_platform_admin_changes_the_quota(client_for, platform_admin) -> None:
    response = client_for(platform_admin).patch(
        QUOTA,
        {"max_gpus": 16, "gpus_per_model": {"NVIDIA H100 80GB SXM5": 8}, "tokens_per_minute": 5000},
        format="json",
    )
    assert response.status_code == 200, response.content
    quota = Quota.objects.get(organization__slug="acme")
    assert (quota.max_gpus, quota.gpus_per_model, quota.tokens_per_minute) == (
        16,
        {"NVIDIA H100 80GB SXM5": 8},
        5000,
    )
    assert quota.gpu_limit("NVIDIA H100 80GB SXM5") == 8
    assert quota.gpu_limit("NVIDIA L4") == 16


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_gpus": -1}, "max_gpus"),
        ({"max_gpus": "many"}, "max_gpus"),
        ({"requests_per_minute": 10**12}, "requests_per_minute"),
        ({"gpus_per_model": {"Imaginary GPU 9000": 4}}, "gpus_per_model"),
        ({"gpus_per_model": {"NVIDIA H100 80GB SXM5": -2}}, "gpus_per_model"),
        ({"gpus_per_model": ["not", "a", "mapping"]}, "gpus_per_model"),
    ],
)
def test_bad_quota_values_are_refused_naming_the_field(client_for, platform_admin, body, field) -> None:
    before = Quota.objects.get(organization__slug="acme").max_gpus
    response = client_for(platform_admin).patch(QUOTA, {**body, "max_deployments": 77}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    quota = Quota.objects.get(organization__slug="acme")
    assert (quota.max_gpus, quota.max_deployments) == (before, 5)  # nothing half-written


def test_large_token_limits_fit(client_for, platform_admin) -> None:
    response = client_for(platform_admin).patch(QUOTA, {"tokens_per_minute": 10_000_000_000}, format="json")
    assert response.status_code == 200, response.content
    assert Quota.objects.get(organization__slug="acme").tokens_per_minute == 10_000_000_000
