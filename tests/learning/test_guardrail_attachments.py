"""/api/guardrails/{id}/attachments/: a published guardrail attached to a deployment, a router or an API
key of its own organisation (a pinned version, or the latest published), what the gateway reads of it,
and what members, outsiders and malformed requests get (400 naming the field, nothing written)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from learning.guardrails import attachments, service
from learning.models import Guardrail, GuardrailAttachment, Router
from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

Client = Callable[[AbstractUser | None], APIClient]
CONFIG = {"personal_data": {"EMAIL": "mask"}, "words": ["project falcon"]}


@pytest.fixture
def guardrail(acme: Organization, owner: AbstractUser) -> Guardrail:
    made = service.create_guardrail(organization=acme, user=owner, name="support", config=CONFIG)
    service.publish(made, owner)
    return made


def url(guardrail: Guardrail) -> str:
    return f"/api/guardrails/{guardrail.pk}/attachments/"


def test_an_owner_attaches_the_latest_version_to_a_deployment(
    client_for: Client, owner: AbstractUser, guardrail: Guardrail, acme: Organization
) -> None:
    make_deployment(acme, "chat")
    response = client_for(owner).post(url(guardrail), {"deployment": "chat"}, format="json")
    assert response.status_code == 201, response.json()
    assert (response.json()["kind"], response.json()["name"], response.json()["version"]) == (
        "deployment", "chat", None,
    )  # fmt: skip
    listed = client_for(owner).get(url(guardrail)).json()
    assert [(a["kind"], a["name"]) for a in listed] == [("deployment", "chat")]


def test_a_router_and_an_api_key_take_a_pinned_version(
    client_for: Client, owner: AbstractUser, guardrail: Guardrail, acme: Organization
) -> None:
    Router.objects.create(organization=acme, name="auto", candidates=[], fallback="")
    key, _ = account_services.create_api_key(organization=acme, name="app", created_by=owner, expires_at=None)
    client = client_for(owner)
    routed = client.post(url(guardrail), {"router": "auto", "version": 1}, format="json")
    keyed = client.post(url(guardrail), {"api_key": key.prefix, "version": 1}, format="json")
    assert (routed.status_code, keyed.status_code) == (201, 201), (routed.json(), keyed.json())
    made = GuardrailAttachment.objects.all()
    assert {(a.router_id is not None, a.api_key_id, a.version) for a in made} == {
        (True, None, 1), (False, key.pk, 1),
    }  # fmt: skip


def test_the_gateway_reads_each_attachment_as_a_compiled_policy(
    client_for: Client, owner: AbstractUser, guardrail: Guardrail, acme: Organization
) -> None:
    deployment = make_deployment(acme, "chat")
    client_for(owner).post(url(guardrail), {"deployment": "chat"}, format="json")
    service.update_guardrail(guardrail, config={**CONFIG, "words": ["acme"]})
    service.publish(guardrail, owner)
    attached = attachments.attached_policies(acme.pk)
    (policy,) = attached.deployments[deployment.pk]
    assert (policy.name, policy.version, policy.words) == ("support", 2, ("acme",))
    assert attached.named("support") is policy and attached.named(str(guardrail.pk)) is policy


def test_a_member_cannot_attach(client_for: Client, member: AbstractUser, guardrail: Guardrail) -> None:
    make_deployment(guardrail.organization, "chat")
    response = client_for(member).post(url(guardrail), {"deployment": "chat"}, format="json")
    assert response.status_code == 403
    assert not GuardrailAttachment.objects.exists()


def test_an_outsider_cannot_see_or_attach_another_organisations_guardrail(
    client_for: Client, outsider: AbstractUser, guardrail: Guardrail, globex: Organization
) -> None:
    make_deployment(globex, "chat")
    client = client_for(outsider)
    assert client.get(url(guardrail)).status_code == 404
    assert client.post(url(guardrail), {"deployment": "chat"}, format="json").status_code == 404
    assert not GuardrailAttachment.objects.exists()


def test_a_guardrail_cannot_be_attached_to_another_organisations_deployment(
    client_for: Client, owner: AbstractUser, guardrail: Guardrail, globex: Organization
) -> None:
    make_deployment(globex, "theirs")
    response = client_for(owner).post(url(guardrail), {"deployment": "theirs"}, format="json")
    assert response.status_code == 400
    assert "deployment" in response.json()
    assert not GuardrailAttachment.objects.exists()


def test_an_outsider_cannot_detach(
    client_for: Client, owner: AbstractUser, outsider: AbstractUser, guardrail: Guardrail
) -> None:
    make_deployment(guardrail.organization, "chat")
    made = client_for(owner).post(url(guardrail), {"deployment": "chat"}, format="json").json()
    assert client_for(outsider).delete(f"{url(guardrail)}{made['id']}/").status_code == 404
    assert GuardrailAttachment.objects.count() == 1
    assert client_for(owner).delete(f"{url(guardrail)}{made['id']}/").status_code == 204
    assert not GuardrailAttachment.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "deployment"),
        ({"deployment": "chat", "router": "auto"}, "deployment"),
        ({"deployment": "missing"}, "deployment"),
        ({"router": "missing"}, "router"),
        ({"api_key": "mk-nothing"}, "api_key"),
        ({"deployment": "chat", "version": 7}, "version"),
        ({"deployment": "chat", "version": "one"}, "version"),
        ({"deployment": "chat", "colour": "red"}, "colour"),
    ],
)
def test_a_malformed_attachment_is_refused_naming_the_field(
    client_for: Client, owner: AbstractUser, guardrail: Guardrail, body: dict[str, Any], field: str
) -> None:
    make_deployment(guardrail.organization, "chat")
    response = client_for(owner).post(url(guardrail), body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not GuardrailAttachment.objects.exists()


def test_an_unpublished_guardrail_cannot_be_attached(
    client_for: Client, owner: AbstractUser, acme: Organization
) -> None:
    draft = service.create_guardrail(organization=acme, user=owner, name="draft-only", config=CONFIG)
    make_deployment(acme, "chat")
    response = client_for(owner).post(url(draft), {"deployment": "chat"}, format="json")
    assert response.status_code == 400
    assert "publish" in response.json()["version"][0]


def test_attaching_twice_is_refused(client_for: Client, owner: AbstractUser, guardrail: Guardrail) -> None:
    make_deployment(guardrail.organization, "chat")
    client = client_for(owner)
    client.post(url(guardrail), {"deployment": "chat"}, format="json")
    again = client.post(url(guardrail), {"deployment": "chat"}, format="json")
    assert again.status_code == 400
    assert "already attached" in again.json()["deployment"][0]
    assert GuardrailAttachment.objects.count() == 1
