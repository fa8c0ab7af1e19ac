"""Every refusal of the deploy form reaches the page, and a model this platform cannot run says so
before anyone clicks (issue 17, items 1 and 2)."""

from __future__ import annotations

from typing import Any

import pytest
from bs4 import BeautifulSoup

from marketplace.accounts.models import Quota
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from marketplace.web.fitting import deployable_here, why_not_here
from serving.models import Deployment

from .conftest import make_deployment

DEPLOY = "/deployments/new/"
CPU_MODEL = "smollm2-135m-instruct"


def form(**overrides: Any) -> dict[str, Any]:
    return {
        "model": "llama-3.1-8b-instruct",
        "name": "chat",
        "instance_type": "aws-g5-xlarge",
        "min_replicas": "1",
        "max_replicas": "1",
        "autoscaling_policy": "fixed",
        **overrides,
    }


def summary_of(html: str) -> list[str]:
    summary = BeautifulSoup(html, "html.parser").find(id="error-summary")
    assert summary is not None, "no error summary on the page"
    return [item.get_text(" ", strip=True) for item in summary.find_all("li")]


@pytest.fixture
def local_backend(settings: Any) -> None:
    settings.SERVING_BACKEND = "local"


def test_a_deploy_refused_by_the_deployments_quota_shows_the_refusal_at_the_top(
    browser_for, member, subscribed, acme
) -> None:
    Quota.objects.filter(organization=acme).update(max_deployments=1)
    make_deployment(acme, name="first")
    response = browser_for(member).post(DEPLOY, form())
    assert response.status_code == 400
    assert summary_of(response.text) == [
        "The organisation already has 1 of 1 deployments: "
        "delete one or ask a platform admin to raise the quota."
    ]
    assert Deployment.objects.filter(organization=acme).count() == 1


def test_each_field_refusal_is_summarised_with_a_link_to_its_field(browser_for, member, subscribed) -> None:
    response = browser_for(member).post(DEPLOY, form(name="Not A DNS Name", max_replicas="x"))
    soup = BeautifulSoup(response.text, "html.parser")
    links = {link["href"]: link.get_text() for link in soup.select("#error-summary a")}
    assert links == {"#id-name": "Deployment name", "#id-max_replicas": "Max replicas"}
    for anchor in links:
        assert soup.find(id=anchor[1:]) is not None, f"{anchor} links to nothing"


def test_a_page_without_refusals_has_no_summary(browser_for, member, subscribed) -> None:
    page = browser_for(member).get(DEPLOY, {"model": subscribed.slug}).text
    assert 'id="error-summary"' not in page


def test_a_gpu_only_model_on_a_machine_without_gpus_is_explained_and_deploy_is_disabled(
    browser_for, member, owner, acme, subscribed, local_backend
) -> None:
    subscribe(organization=acme, card=ModelCard.objects.get(slug=CPU_MODEL), license_sha256=None, user=owner)
    soup = BeautifulSoup(browser_for(member).get(DEPLOY, {"model": subscribed.slug}).text, "html.parser")
    notice = soup.find(id="cannot-run").get_text(" ", strip=True)
    assert "Llama 3.1 8B Instruct cannot run on this platform" in notice
    assert "needs a GPU" in notice and "which has no GPU" in notice
    assert "SERVING_BACKEND" not in notice
    assert "ask a platform admin to connect a Kubernetes cluster with GPUs" in notice
    offered = [link["href"] for link in soup.find(id="cannot-run").find_all("a")]
    assert f"{DEPLOY}?model={CPU_MODEL}" in offered and "/?cpu_capable=true" in offered
    assert soup.find("button", string="Deploy").has_attr("disabled")


def test_the_model_list_marks_the_models_this_platform_cannot_run(
    browser_for, member, owner, acme, subscribed, local_backend
) -> None:
    subscribe(organization=acme, card=ModelCard.objects.get(slug=CPU_MODEL), license_sha256=None, user=owner)
    soup = BeautifulSoup(browser_for(member).get(DEPLOY).text, "html.parser")
    options = {
        option["value"]: option.get_text() for option in soup.select("#id-model option") if option["value"]
    }
    assert options == {
        subscribed.slug: "Llama 3.1 8B Instruct (cannot run on this platform)",
        CPU_MODEL: ModelCard.objects.get(slug=CPU_MODEL).name,
    }


def test_deploying_a_gpu_only_model_without_gpus_is_refused_with_the_reason(
    browser_for, member, acme, subscribed, local_backend
) -> None:
    response = browser_for(member).post(DEPLOY, form(instance_type=""))
    assert response.status_code == 400
    assert "needs a GPU" in " ".join(summary_of(response.text))
    assert "This field is required" not in response.text
    assert not Deployment.objects.exists()


def test_a_cpu_model_on_this_machine_can_be_deployed(browser_for, member, owner, acme, local_backend) -> None:
    card = ModelCard.objects.get(slug=CPU_MODEL)
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    soup = BeautifulSoup(browser_for(member).get(DEPLOY, {"model": CPU_MODEL}).text, "html.parser")
    assert soup.find(id="cannot-run") is None
    assert not soup.find("button", string="Deploy").has_attr("disabled")


def test_deployable_here_follows_the_backend(db, settings) -> None:
    gpu_only, cpu = ModelCard.objects.get(slug="llama-3.1-8b-instruct"), ModelCard.objects.get(slug=CPU_MODEL)
    settings.SERVING_BACKEND = "local"
    assert (deployable_here(gpu_only), deployable_here(cpu)) == (False, True)
    settings.SERVING_BACKEND = "kubernetes"
    assert deployable_here(gpu_only)


def test_a_model_larger_than_every_gpu_instance_cannot_run_on_kubernetes(db) -> None:
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    small = [i for i in InstanceType.objects.filter(gpu_count=1) if i.tensor_parallel_memory_gb < 16]
    reason = why_not_here(card, small)
    assert reason is not None and "needs about" in reason and "GB of GPU memory" in reason


def test_outsider_is_not_offered_acme_models_on_the_deploy_form(
    browser_for, outsider, subscribed, local_backend
) -> None:
    page = browser_for(outsider).get(DEPLOY, {"model": subscribed.slug}).text
    assert f'value="{subscribed.slug}"' not in page


def test_a_refusal_that_is_not_about_a_field_still_reaches_the_page(
    browser_for, member, subscribed, monkeypatch
) -> None:
    from rest_framework import exceptions

    from serving.api import serializers

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise exceptions.PermissionDenied("Deployments are paused on this platform for maintenance.")

    monkeypatch.setattr(serializers.DeploymentCreateSerializer, "create_deployment", refuse)
    response = browser_for(member).post(DEPLOY, form())
    assert response.status_code == 403
    assert summary_of(response.text) == ["Deployments are paused on this platform for maintenance."]
