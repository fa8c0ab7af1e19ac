"""POST/GET/PATCH/DELETE /api/deployments/: admission rules, quota, bad input, tenancy."""

from typing import Any

import pytest
from django.contrib.auth.models import User

from learning.models import Router
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving.models import Deployment, DeploymentEvent

pytestmark = pytest.mark.django_db

DEPLOYMENTS = "/api/deployments/"
MODEL = "llama-3.1-8b-instruct"


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    settings.KEDA_ENABLED = True


@pytest.fixture
def subscribed(acme: Organization, owner: User) -> None:
    subscribe(organization=acme, card=ModelCard.objects.get(slug=MODEL), license_sha256=None, user=owner)


def body(**overrides: Any) -> dict[str, Any]:
    return {"name": "chat", "model": MODEL, "instance_type": "aws-g5-xlarge", **overrides}


def test_member_deploys_a_subscribed_model(
    client_for, member, subscribed, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(member).post(DEPLOYMENTS, body(), format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["status"], data["tensor_parallel_size"], data["reserved_gpus"]) == ("pending", 1, 1)
    assert data["events"][0]["message"].startswith("Requested Llama 3.1 8B Instruct")
    assert len(callbacks) == 1  # provisioning is enqueued only once the row is committed


def test_unsubscribed_model_is_refused(client_for, member) -> None:
    response = client_for(member).post(DEPLOYMENTS, body(), format="json")
    assert response.status_code == 400
    assert "not subscribed" in response.json()["model"][0]
    assert not Deployment.objects.exists()


def test_a_model_that_does_not_fit_is_refused_with_the_numbers(client_for, member, acme, owner) -> None:
    card = ModelCard.objects.get(slug="llama-3.1-70b-instruct")
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    response = client_for(member).post(DEPLOYMENTS, body(model=card.slug), format="json")
    assert response.status_code == 400
    message = response.json()["instance_type"][0]
    assert f"needs {card.gpu_memory_gb} GB" in message and "24 GB" in message


def test_gpu_quota_refusal_says_what_is_short(client_for, member, subscribed, acme) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=16, gpus_per_model={"NVIDIA A10G 24GB": 4})
    response = client_for(member).post(
        DEPLOYMENTS, body(instance_type="aws-g5-12xlarge", min_replicas=2, max_replicas=2), format="json"
    )
    assert response.status_code == 400
    assert response.json()["max_replicas"][0].startswith(
        "Needs 8 × NVIDIA A10G 24GB (2 × 4 GPUs), quota leaves 4"
    )


def test_total_gpu_quota_and_deployment_count(client_for, member, subscribed, acme) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=2, max_deployments=1)
    client = client_for(member)
    too_many = client.post(DEPLOYMENTS, body(min_replicas=3, max_replicas=3), format="json")
    assert "quota leaves 2 of 2" in too_many.json()["max_replicas"][0]
    assert client.post(DEPLOYMENTS, body(), format="json").status_code == 201
    second = client.post(DEPLOYMENTS, body(name="second"), format="json")
    assert second.status_code == 400
    assert "already has 1 of 1 deployments" in second.json()["quota"][0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "Not_DNS"}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"model": "no-such-model"}, "model"),
        ({"instance_type": "no-such-type"}, "instance_type"),
        ({"min_replicas": 3, "max_replicas": 2, "autoscaling_policy": "queue_depth"}, "min_replicas"),
        ({"min_replicas": 1, "max_replicas": 2}, "max_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"max_replicas": "two"}, "max_replicas"),
        ({"autoscaling_policy": "vibes"}, "autoscaling_policy"),
        (
            {"autoscaling_policy": "kv_cache", "autoscaling_target": 5, "max_replicas": 2},
            "autoscaling_target",
        ),
        ({"autoscaling_policy": "scale_to_zero", "min_replicas": 1, "max_replicas": 2}, "min_replicas"),
        ({"engine_options": {"max_model_len": 10**6}}, "engine_options"),
        ({"engine_options": {"turbo": True}}, "engine_options"),
        ({"engine_options": {"gpu_memory_utilization": 1.5}}, "engine_options"),
        ({"engine_options": "fast"}, "engine_options"),
        ({"tensor_parallel_size": 3, "instance_type": "aws-g5-12xlarge"}, "tensor_parallel_size"),
        ({"tensor_parallel_size": 8, "instance_type": "aws-g5-12xlarge"}, "tensor_parallel_size"),
        ({"instance_type": "local-cpu"}, "instance_type"),
        ({"organization": "globex"}, "organization"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    client_for, member, subscribed, overrides, field
) -> None:
    response = client_for(member).post(DEPLOYMENTS, body(**overrides), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Deployment.objects.exists()
    assert not DeploymentEvent.objects.exists()


def test_scale_to_zero_needs_keda(client_for, member, subscribed, settings) -> None:
    settings.KEDA_ENABLED = False
    response = client_for(member).post(
        DEPLOYMENTS, body(autoscaling_policy="scale_to_zero", min_replicas=0, max_replicas=2), format="json"
    )
    assert response.status_code == 400 and "KEDA" in response.json()["autoscaling_policy"][0]


def test_names_are_unique_per_organisation_until_deleted(client_for, member, subscribed) -> None:
    client = client_for(member)
    first = client.post(DEPLOYMENTS, body(), format="json").json()
    assert "name" in client.post(DEPLOYMENTS, body(), format="json").json()
    assert client.delete(f"{DEPLOYMENTS}{first['id']}/").status_code == 202
    Deployment.objects.filter(pk=first["id"]).update(status="deleted")
    assert client.post(DEPLOYMENTS, body(), format="json").status_code == 201


def test_a_name_a_router_of_the_organisation_uses_is_refused_naming_the_name(
    client_for, member, subscribed, acme
) -> None:
    Router.objects.create(organization=acme, name="chat", candidates=[], fallback="")
    response = client_for(member).post(DEPLOYMENTS, body(), format="json")
    assert response.status_code == 400
    assert "router named chat" in response.json()["name"][0]
    assert not Deployment.objects.exists()


def test_a_router_of_another_organisation_does_not_take_the_name(
    client_for, member, subscribed, globex
) -> None:
    Router.objects.create(organization=globex, name="chat", candidates=[], fallback="")
    assert client_for(member).post(DEPLOYMENTS, body(), format="json").status_code == 201


def test_delete_frees_quota_at_once_and_is_idempotent(client_for, member, subscribed, acme) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=1)
    client = client_for(member)
    created = client.post(DEPLOYMENTS, body(), format="json").json()
    assert client.post(DEPLOYMENTS, body(name="other"), format="json").status_code == 400
    assert client.delete(f"{DEPLOYMENTS}{created['id']}/").status_code == 202
    assert client.delete(f"{DEPLOYMENTS}{created['id']}/").status_code == 202
    assert Deployment.objects.get(pk=created["id"]).status == "deleting"
    assert client.post(DEPLOYMENTS, body(name="other"), format="json").status_code == 201


def test_scale_checks_quota_again(client_for, member, subscribed, acme) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=2)
    client = client_for(member)
    created = client.post(DEPLOYMENTS, body(), format="json").json()
    refused = client.post(
        f"{DEPLOYMENTS}{created['id']}/scale/",
        {"min_replicas": 1, "max_replicas": 3, "autoscaling_policy": "queue_depth"},
        format="json",
    )
    assert refused.status_code == 400 and "quota leaves" in refused.json()["max_replicas"][0]
    ok = client.post(
        f"{DEPLOYMENTS}{created['id']}/scale/",
        {"min_replicas": 1, "max_replicas": 2, "autoscaling_policy": "queue_depth", "autoscaling_target": 4},
        format="json",
    )
    assert ok.status_code == 200, ok.content
    assert (ok.json()["max_replicas"], ok.json()["reserved_gpus"]) == (2, 2)


def test_update_rolls_out_a_new_generation(client_for, member, subscribed) -> None:
    client = client_for(member)
    created = client.post(DEPLOYMENTS, body(), format="json").json()
    response = client.patch(
        f"{DEPLOYMENTS}{created['id']}/", {"engine_options": {"max_model_len": 8192}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["generation"], response.json()["status"]) == (2, "updating")
    same = client.patch(
        f"{DEPLOYMENTS}{created['id']}/", {"engine_options": {"max_model_len": 8192}}, format="json"
    )
    assert same.json()["generation"] == 2  # nothing changed: no new rollout
    assert client.patch(f"{DEPLOYMENTS}{created['id']}/", {}, format="json").status_code == 400


def test_outsider_cannot_see_or_touch_a_deployment(client_for, member, outsider, subscribed) -> None:
    created = client_for(member).post(DEPLOYMENTS, body(), format="json").json()
    client = client_for(outsider)
    assert client.get(DEPLOYMENTS).json()["results"] == []
    for method, path, data in [
        ("get", f"{DEPLOYMENTS}{created['id']}/", None),
        ("get", f"{DEPLOYMENTS}{created['id']}/manifests/", None),
        ("post", f"{DEPLOYMENTS}{created['id']}/scale/", {"min_replicas": 2, "max_replicas": 2}),
        ("patch", f"{DEPLOYMENTS}{created['id']}/", {"engine_options": {"max_model_len": 4096}}),
        ("delete", f"{DEPLOYMENTS}{created['id']}/", None),
    ]:
        assert getattr(client, method)(path, data, format="json").status_code == 404, (method, path)
    assert Deployment.objects.get(pk=created["id"]).status == "pending"


def test_outsider_api_key_cannot_reach_a_deployment(
    client_for, member, subscribed, api_key_client, globex
) -> None:
    created = client_for(member).post(DEPLOYMENTS, body(), format="json").json()
    key_client, _ = api_key_client(globex)
    assert key_client.get(f"{DEPLOYMENTS}{created['id']}/").status_code == 404


def test_update_to_a_context_that_does_not_fit_is_refused_as_at_creation(
    client_for, member, subscribed
) -> None:
    client = client_for(member)
    created = client.post(DEPLOYMENTS, body(), format="json").json()
    too_long = {"engine_options": {"max_model_len": 131072}}
    at_creation = client.post(DEPLOYMENTS, body(name="long", **too_long), format="json")
    assert at_creation.status_code == 400
    response = client.patch(f"{DEPLOYMENTS}{created['id']}/", too_long, format="json")
    assert response.status_code == 400
    assert response.json()["engine_options"] == at_creation.json()["engine_options"]
    assert "lower max_model_len" in response.json()["engine_options"][0]
    row = Deployment.objects.get(pk=created["id"])
    assert (row.generation, row.engine_options) == (1, created["engine_options"])
