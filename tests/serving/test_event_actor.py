"""A deployment's history says who acted: the person who created, scaled, updated or deleted it (on the
pages or through the REST API), the API key that did, or the platform for what the reconciler and
workers do by themselves (issue 17, item 3)."""

from __future__ import annotations

import importlib
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.test import Client

from marketplace.accounts import budgets
from marketplace.accounts.models import Budget, BudgetAlert, Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import manifests, services, tasks
from serving.backends.kubernetes import KubernetesBackend
from serving.models import PLATFORM, Deployment, DeploymentEvent

pytestmark = pytest.mark.django_db

MODEL = "llama-3.1-8b-instruct"


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any, monkeypatch: Any, kubernetes_backend: KubernetesBackend) -> None:
    """Deploy to the fake Kubernetes API; the worker's tasks are run by the tests themselves."""
    settings.SERVING_BACKEND = "kubernetes"
    settings.KEDA_ENABLED = True
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: kubernetes_backend)
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)


@pytest.fixture
def subscribed(acme: Organization, owner: User) -> ModelCard:
    card = ModelCard.objects.get(slug=MODEL)
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    return card


@pytest.fixture
def deployment(acme: Organization, owner: User, subscribed: ModelCard) -> Deployment:
    return services.create_deployment(
        organization=acme, user=owner, name="chat", card=subscribed,
        instance_type=InstanceType.objects.get(slug="aws-g5-xlarge"),
        scaling=services.Scaling(min_replicas=1, max_replicas=1), engine_options={},
    )  # fmt: skip


def browser(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def latest(deployment: Deployment) -> DeploymentEvent:
    return deployment.events.select_related("actor").first()  # type: ignore[return-value]


def history(page: str) -> str:
    """The deployment page's history list, as rendered."""
    return page.split('id="history"', 1)[1].split("</details>", 1)[0]


# People on the pages.


def test_a_members_scale_on_the_page_names_them_in_the_history(browser_for_member, deployment) -> None:
    answer = browser_for_member.post(
        f"/deployments/{deployment.pk}/scale/", {"min_replicas": "2", "max_replicas": "2"}
    )
    assert answer.status_code == 302
    page = browser_for_member.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'Scaling to 2–2 replicas (fixed). <span class="muted small actor">by mario</span>' in history(page)


def test_deploying_on_the_page_names_the_person_in_the_first_entry(member, subscribed) -> None:
    answer = browser(member).post(
        "/deployments/new/",
        {"name": "chat", "model": MODEL, "instance_type": "aws-g5-xlarge", "min_replicas": "1",
         "max_replicas": "1", "autoscaling_policy": "fixed"},
    )  # fmt: skip
    assert answer.status_code == 302, answer.content.decode()[:2000]
    event = latest(Deployment.objects.get(name="chat"))
    assert (event.status, event.actor, event.by) == ("pending", member, "mario")


def test_deleting_on_the_page_names_the_person(member, deployment) -> None:
    answer = browser(member).post(f"/deployments/{deployment.pk}/delete/", {"confirm": "chat"})
    assert answer.status_code == 302
    event = latest(deployment)
    assert (event.status, event.actor, event.by) == ("deleting", member, "mario")


def test_one_click_idle_scale_names_the_person(member, deployment) -> None:
    answer = browser(member).post(f"/deployments/{deployment.pk}/scale-idle/", {"to": "zero"})
    assert answer.status_code == 302
    event = latest(deployment)
    assert event.message.startswith("Scaling to 0–1 replicas") and event.by == "mario"


# People and keys through the REST API.


def test_a_members_scale_through_the_api_names_them_in_the_events(client_for, member, deployment) -> None:
    client = client_for(member)
    answer = client.post(
        f"/api/deployments/{deployment.pk}/scale/", {"min_replicas": 2, "max_replicas": 2}, format="json"
    )
    assert answer.status_code == 200, answer.json()
    first = client.get(f"/api/deployments/{deployment.pk}/").json()["events"][0]
    assert (first["message"], first["actor"], first["actor_name"]) == (
        "Scaling to 2–2 replicas (fixed).",
        "mario",
        "mario",
    )


def test_creating_through_the_api_names_the_person(client_for, member, subscribed) -> None:
    answer = client_for(member).post(
        "/api/deployments/", {"name": "chat", "model": MODEL, "instance_type": "aws-g5-xlarge"}, format="json"
    )
    assert answer.status_code == 201, answer.json()
    assert [(e["status"], e["actor"]) for e in answer.json()["events"]] == [("pending", "mario")]


def test_an_update_through_the_api_names_the_person(client_for, member, deployment) -> None:
    answer = client_for(member).patch(
        f"/api/deployments/{deployment.pk}/", {"engine_options": {"max_model_len": 4096}}, format="json"
    )
    assert answer.status_code == 200, answer.json()
    event = latest(deployment)
    assert (event.status, event.actor, event.by) == ("updating", member, "mario")


def test_deleting_through_the_api_names_the_person(client_for, owner, deployment) -> None:
    assert client_for(owner).delete(f"/api/deployments/{deployment.pk}/").status_code == 202
    event = latest(deployment)
    assert (event.status, event.actor, event.by) == ("deleting", owner, "olivia")


def test_an_api_key_is_named_by_its_name_and_prefix(api_key_client, acme, deployment) -> None:
    client, secret = api_key_client(acme)
    answer = client.post(
        f"/api/deployments/{deployment.pk}/scale/", {"min_replicas": 2, "max_replicas": 2}, format="json"
    )
    assert answer.status_code == 200, answer.json()
    first = client.get(f"/api/deployments/{deployment.pk}/").json()["events"][0]
    assert first["actor"] is None
    assert first["actor_name"] == f"API key test ({acme.api_keys.get().prefix}…)"
    assert secret not in first["actor_name"]


# The platform.


def test_a_reconciler_transition_shows_the_platform(fake_kubernetes, client_for, member, deployment) -> None:
    tasks.provision_deployment.apply(args=[deployment.pk]).get()
    name = manifests.object_name(services.spec_for(deployment))
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=1)
    fake_kubernetes.add_pod(f"{name}-6d4cf56db6-x7k2p", manifests.labels(services.spec_for(deployment)))
    tasks.reconcile_once()
    events = client_for(member).get(f"/api/deployments/{deployment.pk}/").json()["events"]
    assert [(e["status"], e["actor"], e["actor_name"]) for e in events] == [
        ("ready", None, PLATFORM),
        ("provisioning", None, PLATFORM),
        ("pending", "olivia", "olivia"),
    ]
    page = browser(member).get(f"/deployments/{deployment.pk}/").content.decode()
    assert history(page).count(f"by {PLATFORM}") == 2


def test_a_budgets_scale_down_at_its_limit_is_the_platforms(owner, acme, deployment) -> None:
    services.scale_deployment(
        deployment, services.Scaling(min_replicas=1, max_replicas=2, policy="queue_depth"), actor=owner
    )
    budget = Budget.objects.create(
        organization=acme, monthly_amount_usd=Decimal(10), scale_down_at_limit=True, created_by=owner
    )
    alert = BudgetAlert.objects.create(
        budget=budget, month=date.today().replace(day=1), threshold=100, spent_usd=Decimal(10),
        amount_usd=Decimal(10), message="Spent $10.00 of $10.00.",
    )  # fmt: skip
    assert budgets.scale_down(alert.pk) == ["chat"]
    event = latest(deployment)
    assert (event.message, event.actor, event.by) == (
        "Scaling to 1–1 replicas (queue_depth).",
        None,
        PLATFORM,
    )


# What stays true.


def test_an_entry_keeps_naming_a_person_whose_account_is_gone(client_for, owner, member, deployment) -> None:
    services.scale_deployment(deployment, services.Scaling(min_replicas=2, max_replicas=2), actor=member)
    member.delete()
    first = client_for(owner).get(f"/api/deployments/{deployment.pk}/").json()["events"][0]
    assert (first["actor"], first["actor_name"]) == (None, "mario")


def test_entries_written_before_names_were_kept_say_who_is_known(owner, deployment) -> None:
    DeploymentEvent.objects.filter(deployment=deployment).update(actor=None, actor_name="")
    for message in ("Scaling to 2–2 replicas (fixed).", "Ready: 1 of 1 replicas serving."):
        DeploymentEvent.objects.create(deployment=deployment, status="ready", message=message)
    migration = importlib.import_module("serving.migrations.0005_event_actor")
    migration.name_earlier_actors(apps, None)
    by = {event.message: (event.actor, event.by) for event in deployment.events.all()}
    assert by == {
        "Requested Llama 3.1 8B Instruct on g5.xlarge.": (owner, "olivia"),
        "Scaling to 2–2 replicas (fixed).": (None, "someone (not recorded)"),
        "Ready: 1 of 1 replicas serving.": (None, PLATFORM),
    }


def test_outsider_sees_no_history_of_another_organisations_deployment(
    client_for, outsider, member, deployment
) -> None:
    services.scale_deployment(deployment, services.Scaling(min_replicas=2, max_replicas=2), actor=member)
    assert client_for(outsider).get(f"/api/deployments/{deployment.pk}/").status_code == 404
    listed = client_for(outsider).get("/api/deployments/").json()
    assert "mario" not in str(listed)
    page = browser(outsider).get(f"/deployments/{deployment.pk}/")
    assert page.status_code == 404 and b"mario" not in page.content


@pytest.fixture
def browser_for_member(member: User, acme: Organization) -> Client:
    return browser(member)
