"""Scaling a deployment to the settings it already has changes nothing: no history entry, no work for
the backend (issue 17, item 3)."""

from __future__ import annotations

from typing import Any

from serving.models import DeploymentEvent
from tests.web.conftest import make_deployment


def scale(client, pk: int, **body: Any):
    return client.post(
        f"/api/deployments/{pk}/scale/", {"min_replicas": 1, "max_replicas": 1, **body}, format="json"
    )


def test_scaling_to_the_same_settings_adds_no_entry_and_enqueues_nothing(
    client_for, member, acme, django_capture_on_commit_callbacks
) -> None:
    deployment = make_deployment(acme)
    before = DeploymentEvent.objects.filter(deployment=deployment).count()
    with django_capture_on_commit_callbacks() as callbacks:
        answer = scale(client_for(member), deployment.pk)
    assert answer.status_code == 200, answer.json()
    assert DeploymentEvent.objects.filter(deployment=deployment).count() == before
    assert callbacks == []


def test_a_real_change_adds_one_entry(
    client_for, member, acme, subscribed, django_capture_on_commit_callbacks
) -> None:
    deployment = make_deployment(acme)
    before = DeploymentEvent.objects.filter(deployment=deployment).count()
    with django_capture_on_commit_callbacks() as callbacks:
        answer = scale(client_for(member), deployment.pk, min_replicas=2, max_replicas=2)
    assert answer.status_code == 200, answer.json()
    assert DeploymentEvent.objects.filter(deployment=deployment).count() == before + 1
    assert len(callbacks) == 1


def test_the_scale_form_with_nothing_changed_adds_no_entry(browser_for, member, acme) -> None:
    deployment = make_deployment(acme)
    before = DeploymentEvent.objects.filter(deployment=deployment).count()
    response = browser_for(member).post(
        f"/deployments/{deployment.pk}/scale/", {"min_replicas": "1", "max_replicas": "1"}
    )
    assert response.status_code == 302
    assert DeploymentEvent.objects.filter(deployment=deployment).count() == before


def test_outsider_cannot_scale_acme_deployment(client_for, outsider, acme) -> None:
    deployment = make_deployment(acme)
    assert scale(client_for(outsider), deployment.pk, min_replicas=2, max_replicas=2).status_code == 404
    deployment.refresh_from_db()
    assert deployment.max_replicas == 1
