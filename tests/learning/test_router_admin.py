"""The admin lists routers and what their training made, read-only: the service checks a router's
fields, and versions, samples and feedback are written by tasks and the API only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from learning import router_service
from learning.models import Feedback
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment
from tests.learning.routerdata import router_fields

MODELS = ["router", "routertraining", "routerversion", "routersample", "feedback"]


def test_the_admin_lists_routers_and_feedback(
    admin_client: Client, acme: Organization, owner: AbstractUser
) -> None:
    make_deployment(acme, "small")
    make_deployment(acme, "large")
    router = router_service.create_router(
        organization=acme, user=owner, **router_fields(name="listed-router")
    )
    Feedback.objects.create(organization=acme, request_id="rated-request", score=0.5)
    assert b"listed-router" in admin_client.get("/admin/learning/router/").content
    assert b"rated-request" in admin_client.get("/admin/learning/feedback/").content
    assert admin_client.get(f"/admin/learning/router/{router.pk}/change/").status_code == 200


@pytest.mark.parametrize("model", MODELS)
def test_nothing_of_routing_is_added_in_the_admin(admin_client: Client, model: str) -> None:
    assert admin_client.get(f"/admin/learning/{model}/").status_code == 200
    assert admin_client.get(f"/admin/learning/{model}/add/").status_code == 403


def test_an_outsider_is_sent_to_sign_in_rather_than_shown_routers(outsider: AbstractUser) -> None:
    client = Client()
    client.force_login(outsider)
    response = client.get("/admin/learning/router/")
    assert response.status_code == 302 and "/login/" in response["Location"]
