"""Fit, tensor-parallel size and the default max model length follow the context a deployment serves."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving.models import Deployment

pytestmark = pytest.mark.django_db

DEPLOYMENTS = "/api/deployments/"
MODEL = "llama-3.1-8b-instruct"


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    settings.KEDA_ENABLED = True


@pytest.fixture
def subscribed(acme, owner) -> None:
    subscribe(organization=acme, card=ModelCard.objects.get(slug=MODEL), license_sha256=None, user=owner)


def deploy(client: APIClient, **overrides: Any) -> Any:
    body = {"name": "chat", "model": MODEL, "instance_type": "aws-g5-xlarge", **overrides}
    return client.post(DEPLOYMENTS, body, format="json")


def test_on_one_24_gb_gpu_the_default_context_is_the_longest_that_fits(
    client_for, member, subscribed
) -> None:
    response = deploy(client_for(member))
    assert response.status_code == 201, response.content
    deployment = Deployment.objects.get(name="chat")
    assert deployment.tensor_parallel_size == 1
    assert deployment.engine_options == {"max_model_len": 14336}


def test_where_the_default_context_fits_nothing_is_added(client_for, member, subscribed) -> None:
    assert deploy(client_for(member), instance_type="aws-p5-48xlarge").status_code == 201
    assert Deployment.objects.get(name="chat").engine_options == {}


def test_more_gpus_are_taken_before_the_context_is_shortened(client_for, member, subscribed) -> None:
    assert deploy(client_for(member), instance_type="aws-g5-12xlarge").status_code == 201
    deployment = Deployment.objects.get(name="chat")
    assert (deployment.tensor_parallel_size, deployment.engine_options) == (2, {})


def test_a_long_context_takes_more_gpus(client_for, member, subscribed) -> None:
    response = deploy(
        client_for(member), instance_type="aws-g5-12xlarge", engine_options={"max_model_len": 131072}
    )
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="chat").tensor_parallel_size == 2


def test_a_context_too_long_for_the_instance_is_refused_with_the_numbers(
    client_for, member, subscribed
) -> None:
    response = deploy(client_for(member), engine_options={"max_model_len": 131072})
    assert response.status_code == 400
    message = response.json()["engine_options"][0]
    assert "needs 41 GB of GPU memory at max_model_len 131,072" in message
    assert "holds 14,336 tokens" in message and "lower max_model_len" in message
    assert not Deployment.objects.exists()


def test_a_smaller_group_than_the_default_needs_runs_at_a_shorter_context(
    client_for, member, subscribed
) -> None:
    response = deploy(client_for(member), instance_type="aws-g5-12xlarge", tensor_parallel_size=1)
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="chat").engine_options == {"max_model_len": 14336}


def test_llama_405b_deploys_on_eight_h200(client_for, member, acme, owner) -> None:
    card = ModelCard.objects.get(slug="llama-3.1-405b-instruct")
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    refused = deploy(client_for(member), model=card.slug, instance_type="aws-p5-48xlarge")
    assert refused.status_code == 400
    assert "offers at most 640 GB" in refused.json()["instance_type"][0]
    response = deploy(client_for(member), model=card.slug, instance_type="aws-p5en-48xlarge")
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="chat").tensor_parallel_size == 8


def test_the_model_api_gives_each_fit_its_group_and_context() -> None:
    detail = APIClient().get(f"/api/models/{MODEL}/").json()
    by_slug = {fit["instance_type"]: fit for fit in detail["fits"]}
    assert (by_slug["aws-g5-xlarge"]["tensor_parallel_size"], by_slug["aws-g5-xlarge"]["max_model_len"]) == (
        1,
        14336,
    )
    assert by_slug["aws-p5-48xlarge"]["max_model_len"] == detail["default_max_model_len"] == 32768
    assert detail["kv_cache_bytes_per_token"] == 131072
