"""The deployment page says why a deployment whose model's license terms changed cannot be scaled up."""

from __future__ import annotations

from marketplace.catalog.models import ModelCard


def test_scaling_up_after_a_license_change_is_refused_with_the_reason(
    browser_for, member, subscribed, acme_deployment
) -> None:
    card: ModelCard = acme_deployment.model_card
    card.license.text += "\nA new clause."
    card.license.save()
    card.save()  # the card's license hash follows its license text
    response = browser_for(member).post(
        f"/deployments/{acme_deployment.pk}/scale/",
        {"min_replicas": "2", "max_replicas": "2", "autoscaling_policy": "fixed"},
    )
    assert response.status_code == 409 and 'id="error-model"' in response.text
    assert "accepts the new terms on the model" in response.text
    acme_deployment.refresh_from_db()
    assert acme_deployment.max_replicas == 1


def test_an_outsider_cannot_scale_it_either(browser_for, outsider, subscribed, acme_deployment) -> None:
    response = browser_for(outsider).post(
        f"/deployments/{acme_deployment.pk}/scale/",
        {"min_replicas": "2", "max_replicas": "2", "autoscaling_policy": "fixed"},
    )
    assert response.status_code == 404
