"""A subscription governs what runs: unsubscribing is refused while live deployments of the model remain
(naming them), and while the subscription is not in force (license terms changed and not yet accepted
again) its deployments cannot be scaled up or updated and the gateway does not serve them, until the new
terms are accepted."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings

from marketplace.accounts.models import Organization
from marketplace.accounts.services import create_api_key, create_organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.models import Subscription
from marketplace.subscriptions.services import subscribe
from serving.gateway import directory, pipeline, upstream
from serving.gateway.asgi import GatewayFront
from serving.models import Deployment
from tests.conftest import make_user

SUBSCRIPTIONS = "/api/subscriptions/"
DEPLOYMENTS = "/api/deployments/"
MODEL = "llama-3.1-8b-instruct"
SCALE_UP = {"min_replicas": 2, "max_replicas": 2}
SCALE_DOWN = {"min_replicas": 1, "max_replicas": 1}


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any) -> None:
    settings.SERVING_BACKEND = "kubernetes"


def card() -> ModelCard:
    return ModelCard.objects.get(slug=MODEL)


def change_license_terms(model: ModelCard) -> None:
    """What loading a catalog with amended terms does: the text changes, so the card's hash does."""
    model.license.text += "\nA new clause."
    model.license.save()
    model.save()  # the card's license hash follows its license text


def deployment(organization: Organization, name: str, model: ModelCard, **fields: Any) -> Deployment:
    return Deployment.objects.create(
        organization=organization,
        name=name,
        model_card=model,
        instance_type=InstanceType.objects.get(slug=fields.pop("instance_type", "aws-g5-xlarge")),
        backend=fields.pop("backend", "kubernetes"),
        status=fields.pop("status", "ready"),
        status_message="Ready.",
        **fields,
    )


@pytest.fixture
def subscribed(acme: Organization, owner: Any) -> Subscription:
    return subscribe(organization=acme, card=card(), license_sha256=None, user=owner)[0]


@pytest.fixture
def running(acme: Organization, subscribed: Subscription) -> Deployment:
    return deployment(acme, "chat", card(), reserved_gpus=1, gpu_model="NVIDIA A10G 24GB")


# Unsubscribing


@pytest.mark.django_db
def test_unsubscribing_with_live_deployments_is_refused_naming_them(
    client_for, owner, acme, subscribed, running
) -> None:
    deployment(acme, "chat-eu", card(), status="failed")
    deployment(acme, "old", card(), status="deleted")
    response = client_for(owner).delete(f"{SUBSCRIPTIONS}{subscribed.pk}/")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "Acme still runs 2 deployments of Llama 3.1 8B Instruct: chat, chat-eu. Delete them first, then "
        "unsubscribe."
    )
    assert Subscription.objects.get(pk=subscribed.pk).status == "active"


@pytest.mark.django_db
def test_unsubscribing_once_they_are_deleted_works(client_for, owner, subscribed, running) -> None:
    client = client_for(owner)
    assert client.delete(f"{DEPLOYMENTS}{running.pk}/").status_code == 202  # deleting is no longer live
    assert client.delete(f"{SUBSCRIPTIONS}{subscribed.pk}/").status_code == 204
    assert Subscription.objects.get(pk=subscribed.pk).status == "cancelled"


@pytest.mark.django_db
def test_another_organisations_deployments_do_not_hold_a_subscription(
    client_for, owner, outsider, globex, subscribed
) -> None:
    subscribe(organization=globex, card=card(), license_sha256=None, user=outsider)
    deployment(globex, "theirs", card())
    assert client_for(owner).delete(f"{SUBSCRIPTIONS}{subscribed.pk}/").status_code == 204


# Scale and update while the terms are not accepted


@pytest.mark.django_db
def test_a_changed_license_stops_scaling_up_and_updating_until_accepted_again(
    client_for, owner, member, running
) -> None:
    change_license_terms(card())
    client = client_for(member)
    scale_up = client.post(f"{DEPLOYMENTS}{running.pk}/scale/", SCALE_UP, format="json")
    assert scale_up.status_code == 409
    assert (
        "The license terms of Llama 3.1 8B Instruct changed since Acme accepted them"
        in (scale_up.json()["model"][0])
    )
    assert "accepts the new terms" in scale_up.json()["model"][0]
    update = client.patch(
        f"{DEPLOYMENTS}{running.pk}/", {"engine_options": {"max_model_len": 4096}}, format="json"
    )
    assert update.status_code == 409 and "cannot be updated" in update.json()["model"][0]
    running.refresh_from_db()
    assert (running.max_replicas, running.generation) == (1, 1)

    accepted = client_for(owner).post(
        SUBSCRIPTIONS,
        {"model": MODEL, "accept_license": True, "license_sha256": card().license_sha256},
        format="json",
    )
    assert accepted.status_code == 200
    assert client.post(f"{DEPLOYMENTS}{running.pk}/scale/", SCALE_UP, format="json").status_code == 200
    update = client.patch(
        f"{DEPLOYMENTS}{running.pk}/", {"engine_options": {"max_model_len": 4096}}, format="json"
    )
    assert update.status_code == 200 and update.json()["generation"] == 2


@pytest.mark.django_db
def test_the_deployment_says_whether_its_subscription_is_in_force(client_for, owner, member, running) -> None:
    client = client_for(member)

    def shown() -> tuple[bool, bool]:
        listed = client.get(DEPLOYMENTS).json()["results"][0]["subscription_in_force"]
        return listed, client.get(f"{DEPLOYMENTS}{running.pk}/").json()["subscription_in_force"]

    assert shown() == (True, True)
    change_license_terms(card())
    assert shown() == (False, False)
    subscribe(organization=running.organization, card=card(), license_sha256=None, user=owner)
    assert shown() == (True, True)


@pytest.mark.django_db
def test_scaling_down_is_allowed_while_the_terms_are_not_accepted(
    client_for, member, acme, subscribed
) -> None:
    two = deployment(acme, "chat", card(), min_replicas=2, max_replicas=2, reserved_gpus=2)
    change_license_terms(card())
    response = client_for(member).post(f"{DEPLOYMENTS}{two.pk}/scale/", SCALE_DOWN, format="json")
    assert response.status_code == 200 and response.json()["max_replicas"] == 1
    assert response.json()["subscription_in_force"] is False


@pytest.mark.django_db
def test_a_cancelled_subscription_stops_scaling_up(client_for, member, running, subscribed) -> None:
    Subscription.objects.filter(pk=subscribed.pk).update(status="cancelled")  # e.g. a race with a deploy
    response = client_for(member).post(f"{DEPLOYMENTS}{running.pk}/scale/", SCALE_UP, format="json")
    assert response.status_code == 409
    assert "Acme is not subscribed to Llama 3.1 8B Instruct" in response.json()["model"][0]


@pytest.mark.django_db
def test_an_outsider_still_gets_404_not_the_reason(client_for, outsider, running) -> None:
    change_license_terms(card())
    response = client_for(outsider).post(f"{DEPLOYMENTS}{running.pk}/scale/", SCALE_UP, format="json")
    assert response.status_code == 404


# The gateway


@pytest.mark.django_db
def test_the_gateway_directory_leaves_out_deployments_whose_terms_are_not_accepted(
    acme, owner, running
) -> None:
    assert set(directory._load_targets(acme.pk)) == {"chat"}
    change_license_terms(card())
    assert directory._load_targets(acme.pk) == {}
    subscribe(organization=acme, card=card(), license_sha256=card().license_sha256, user=owner)
    assert set(directory._load_targets(acme.pk)) == {"chat"}


class Answers(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def invoke(secret: str, name: str) -> tuple[int, dict[str, Any]]:
    """One chat call through the invoke API's front, in process, then its metering and its clients
    closed as at shutdown. Each call runs its own event loop, so it starts with empty gateway caches
    (nothing of GATEWAY_CACHE_SECONDS carries over from the call before)."""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}]}).encode()
    inbox = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)  # the client stays until the answer is sent
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> None:
        headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {secret}".encode())]
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                 "headers": headers}  # fmt: skip
        await GatewayFront(None)(scope, receive, send)
        await pipeline.drain()
        await upstream.close_clients()

    asyncio.run(scenario())
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_invoke_is_refused_after_a_license_change_and_works_after_reacceptance(
    transactional_catalog: None, replica: str
) -> None:
    redis.Redis.from_url(django_settings.REDIS_URL).flushdb()
    owner = make_user("gina")
    organization = create_organization(slug="lapse", name="Lapse", owner=owner)
    model = ModelCard.objects.get(slug="smollm2-135m-instruct")
    subscribe(organization=organization, card=model, license_sha256=None, user=owner)
    deployment(
        organization, "tiny", model, instance_type="local-cpu", backend="local", endpoints=[replica],
        ready_replicas=1, desired_replicas=1,
    )  # fmt: skip
    _, secret = create_api_key(organization=organization, name="app", created_by=owner, expires_at=None)
    assert invoke(secret, "tiny")[0] == 200

    change_license_terms(model)
    status, body = invoke(secret, "tiny")
    assert status == 404 and body["error"]["code"] == "model_not_found"

    subscribe(organization=organization, card=model, license_sha256=model.license_sha256, user=owner)
    status, body = invoke(secret, "tiny")
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"
