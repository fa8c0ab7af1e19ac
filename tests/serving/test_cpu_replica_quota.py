"""Replicas on CPU instance types hold no GPU, so they have a quota of their own (`max_cpu_replicas`):
reserved like GPUs (a live deployment holds its max replicas), refused with the field and what to do,
freed on delete, shown in the quota's use, the API and the platform's quota form."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from marketplace.accounts.models import Quota
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving import services
from serving.local import capacity
from serving.models import Deployment

DEPLOYMENTS = "/api/deployments/"
CPU_MODEL = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _runnable_here(settings: Any, monkeypatch: Any) -> None:
    """The local backend, with the engine taken as prepared (admission is what is under test here)."""
    settings.SERVING_BACKEND = "local"
    monkeypatch.setattr(services, "check_runnable_here", lambda card, backend: None)
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    # A machine of 128 cores, so that the quota, not the machine, is what limits (the machine's own
    # limit is tests/serving/test_local_admission.py's part).
    monkeypatch.setattr(capacity, "allowed_cores", lambda: tuple(range(128)))


@pytest.fixture
def subscribed(acme, owner) -> None:
    subscribe(organization=acme, card=ModelCard.objects.get(slug=CPU_MODEL), license_sha256=None, user=owner)


def create(client, name: str, replicas: int):
    body = {"name": name, "model": CPU_MODEL, "instance_type": "local-cpu",
            "min_replicas": replicas, "max_replicas": replicas}  # fmt: skip
    return client.post(DEPLOYMENTS, body, format="json")


def test_a_member_cannot_ask_for_more_cpu_replicas_than_the_quota(client_for, member, subscribed) -> None:
    response = create(client_for(member), "chat", 64)
    assert response.status_code == 400
    assert response.json()["max_replicas"] == [
        "Needs 64 CPU replicas on This machine (CPU), the organisation's CPU replica quota leaves 4 of 4: "
        "lower max replicas, or ask a platform admin to raise the quota."
    ]
    assert not Deployment.objects.exists()


def test_cpu_replicas_are_reserved_across_deployments(client_for, member, acme, subscribed) -> None:
    client = client_for(member)
    assert create(client, "one", 3).status_code == 201
    refused = create(client, "two", 2)
    assert refused.status_code == 400
    assert "quota leaves 1 of 4" in refused.json()["max_replicas"][0]
    assert create(client, "two", 1).status_code == 201
    assert services.quota_use(acme).cpu_replicas == 4


def test_scaling_up_is_checked_against_the_cpu_replica_quota(client_for, member, subscribed) -> None:
    client = client_for(member)
    deployment_id = create(client, "chat", 2).json()["id"]
    scaled = client.post(
        f"{DEPLOYMENTS}{deployment_id}/scale/", {"min_replicas": 5, "max_replicas": 5}, format="json"
    )
    assert scaled.status_code == 400
    assert "Needs 5 CPU replicas" in scaled.json()["max_replicas"][0]
    assert Deployment.objects.get(pk=deployment_id).max_replicas == 2  # nothing half-written
    within = client.post(
        f"{DEPLOYMENTS}{deployment_id}/scale/", {"min_replicas": 4, "max_replicas": 4}, format="json"
    )
    assert within.status_code == 200, within.content


def test_deleting_a_deployment_frees_its_cpu_replicas(client_for, member, acme, subscribed) -> None:
    client = client_for(member)
    deployment_id = create(client, "chat", 4).json()["id"]
    assert client.delete(f"{DEPLOYMENTS}{deployment_id}/").status_code == 202
    assert services.quota_use(acme).cpu_replicas == 0
    assert create(client, "again", 4).status_code == 201


def test_cpu_replicas_hold_no_gpus_and_gpu_replicas_no_cpu_replicas(client_for, member, acme, subscribed):
    Quota.objects.filter(organization=acme).update(max_gpus=0)
    assert create(client_for(member), "chat", 2).status_code == 201
    use = services.quota_use(acme)
    assert (use.gpus, use.cpu_replicas) == (0, 2)


def test_a_raised_quota_admits_more(client_for, member, acme, subscribed) -> None:
    Quota.objects.filter(organization=acme).update(max_cpu_replicas=8)
    assert create(client_for(member), "chat", 8).status_code == 201


def test_members_read_the_cpu_replica_quota_and_platform_admins_change_it(
    client_for, member, platform_admin, acme
) -> None:
    url = "/api/organizations/acme/quota/"
    assert client_for(member).get(url).json()["max_cpu_replicas"] == 4
    assert client_for(member).patch(url, {"max_cpu_replicas": 64}, format="json").status_code == 403
    changed = client_for(platform_admin).patch(url, {"max_cpu_replicas": 16}, format="json")
    assert changed.status_code == 200 and changed.json()["max_cpu_replicas"] == 16


def test_outsider_neither_reads_nor_changes_the_cpu_replica_quota(client_for, outsider, acme) -> None:
    url = "/api/organizations/acme/quota/"
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(outsider).patch(url, {"max_cpu_replicas": 64}, format="json").status_code == 404
    assert Quota.objects.get(organization=acme).max_cpu_replicas == 4


@pytest.mark.parametrize("value", [-1, "many", 100_001])
def test_a_bad_cpu_replica_quota_is_refused_naming_the_field(client_for, platform_admin, acme, value) -> None:
    response = client_for(platform_admin).patch(
        "/api/organizations/acme/quota/", {"max_cpu_replicas": value, "max_gpus": 3}, format="json"
    )
    assert response.status_code == 400 and "max_cpu_replicas" in response.json()
    assert Quota.objects.get(organization=acme).max_gpus == 8  # nothing half-written


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_organisation_page_shows_cpu_replicas_in_use(client_for, member, acme, subscribed) -> None:
    create(client_for(member), "chat", 3)
    page = browser(member).get("/organization/").text
    assert 'aria-label="CPU replicas: 3 of 4 replicas"' in page


def test_platform_admin_sets_cpu_replicas_in_the_quota_form(platform_admin, acme) -> None:
    client = browser(platform_admin)
    form = client.get("/platform/organizations/acme/quota/").text
    assert 'name="max_cpu_replicas"' in form and 'aria-label="CPU replicas: 0 of 4 replicas"' in form
    saved = client.post("/platform/organizations/acme/quota/", {"max_cpu_replicas": "12"})
    assert saved.status_code == 302
    assert Quota.objects.get(organization=acme).max_cpu_replicas == 12
    refused = client.post("/platform/organizations/acme/quota/", {"max_cpu_replicas": "-3"})
    assert refused.status_code == 400 and 'id="error-max_cpu_replicas"' in refused.text
    assert Quota.objects.get(organization=acme).max_cpu_replicas == 12


def test_the_quota_form_refuses_people_of_the_organisation_and_outsiders(owner, outsider, acme) -> None:
    for person in (owner, outsider):
        response = browser(person).post("/platform/organizations/acme/quota/", {"max_cpu_replicas": "99"})
        assert response.status_code == 403  # the platform pages are for platform admins
    assert Quota.objects.get(organization=acme).max_cpu_replicas == 4
