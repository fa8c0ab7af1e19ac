"""The deploy form: it offers subscribed models and the instance types they fit, shows the quota,
refuses bad input next to the field that is wrong, and creates nothing when it refuses."""

from __future__ import annotations

from typing import Any

from marketplace.accounts.models import Quota
from serving.models import Deployment

DEPLOY = "/deployments/new/"


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


def test_form_offers_subscribed_models_and_fitting_instances(browser_for, member, subscribed) -> None:
    page = browser_for(member).get(DEPLOY, {"model": subscribed.slug}).text
    assert f'value="{subscribed.slug}" selected' in page
    assert 'value="aws-g5-xlarge"' in page
    assert "Needs 19 GB of GPU memory; offers 0 GB" not in page  # GPU instances offer memory
    assert "Quota of Acme" in page and "GPUs, all models" in page


def test_member_deploys(browser_for, member, subscribed, acme, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = browser_for(member).post(DEPLOY, form())
    deployment = Deployment.objects.get(organization=acme, name="chat")
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    assert deployment.status == "pending" and deployment.reserved_gpus == 1
    assert len(callbacks) == 1  # provisioning is enqueued on commit


def test_engine_options_go_through_the_allow_list(browser_for, member, subscribed, acme) -> None:
    response = browser_for(member).post(
        DEPLOY, form(**{"engine_options.max_model_len": "4096", "engine_options.dtype": "bfloat16"})
    )
    assert response.status_code == 302
    assert Deployment.objects.get(organization=acme).engine_options == {
        "max_model_len": 4096,
        "dtype": "bfloat16",
    }


def test_bad_fields_are_named_inline_and_nothing_is_created(browser_for, member, subscribed) -> None:
    browser = browser_for(member)
    cases = {
        "name": (form(name="Not A DNS Name"), 'id="error-name"'),
        "min_replicas": (form(min_replicas="3", max_replicas="2"), 'id="error-min_replicas"'),
        "max_replicas": (form(max_replicas="x"), 'id="error-max_replicas"'),
        "instance_type": (form(instance_type="no-such-type"), 'id="error-instance_type"'),
        "engine_options": (form(**{"engine_options.max_model_len": "99999999"}), "engine_options"),
        "dtype": (form(**{"engine_options.dtype": "int3"}), "is not a valid choice"),
    }
    for name, (data, marker) in cases.items():
        response = browser.post(DEPLOY, data)
        assert response.status_code == 400, name
        assert marker in response.text, name
    assert not Deployment.objects.exists()


def test_unsubscribed_model_is_refused_with_what_to_do(browser_for, member, acme) -> None:
    response = browser_for(member).post(DEPLOY, form())
    assert response.status_code == 400
    assert (
        "is not subscribed to Llama 3.1 8B Instruct" in response.text and 'id="error-model"' in response.text
    )


def test_quota_refusal_says_what_is_short(browser_for, member, subscribed, acme) -> None:
    Quota.objects.filter(organization=acme).update(max_gpus=2)
    response = browser_for(member).post(DEPLOY, form(max_replicas="3", autoscaling_policy="queue_depth"))
    assert response.status_code == 400
    assert "Needs 3 GPUs, the organisation&#x27;s GPU quota leaves 2 of 2" in response.text
    assert not Deployment.objects.exists()


def test_a_model_that_does_not_fit_is_refused_with_the_numbers(browser_for, owner, member, acme) -> None:
    from marketplace.catalog.models import ModelCard
    from marketplace.subscriptions.services import subscribe

    big = ModelCard.objects.get(slug="llama-3.1-70b-instruct")
    subscribe(organization=acme, card=big, license_sha256=None, user=owner)
    response = browser_for(member).post(DEPLOY, form(model=big.slug))
    assert response.status_code == 400 and "GB of GPU memory" in response.text


def test_outsider_cannot_deploy_for_acme(browser_for, outsider, subscribed, acme) -> None:
    # The outsider's organisation is globex, which has no subscription: the same refusal as anyone's.
    response = browser_for(outsider).post(DEPLOY, form())
    assert response.status_code == 400
    assert not Deployment.objects.filter(organization=acme).exists()
