"""Subscribing on the model page: an owner or admin reads the license and accepts it for the current
organisation; members are told whom to ask; a changed license must be accepted again."""

from __future__ import annotations

from marketplace.catalog.models import License, ModelCard
from marketplace.subscriptions.models import LicenseAcceptance, Subscription

PAGE = "/models/llama-3.1-8b-instruct/"


def card() -> ModelCard:
    return ModelCard.objects.get(slug="llama-3.1-8b-instruct")


def test_owner_subscribes_by_accepting_the_license(browser_for, owner, acme) -> None:
    browser = browser_for(owner)
    page = browser.get(PAGE).text
    assert "I have read the license and accept it for Acme" in page
    response = browser.post(f"{PAGE}subscribe/", {"accept": "yes", "license_sha256": card().license_sha256})
    assert response.status_code == 302
    subscription = Subscription.objects.get(organization=acme, model_card=card())
    assert subscription.in_force and subscription.accepted_by == owner
    assert LicenseAcceptance.objects.filter(subscription=subscription).count() == 1
    assert "Acme is subscribed" in browser.get(PAGE).text


def test_not_ticking_the_box_is_explained_and_subscribes_nothing(browser_for, owner, acme) -> None:
    response = browser_for(owner).post(f"{PAGE}subscribe/", {"license_sha256": card().license_sha256})
    assert response.status_code == 400
    assert "Tick the box to accept the license terms." in response.text
    assert not Subscription.objects.exists()


def test_a_license_changed_while_reading_must_be_read_again(browser_for, owner, acme) -> None:
    response = browser_for(owner).post(f"{PAGE}subscribe/", {"accept": "yes", "license_sha256": "0" * 64})
    assert response.status_code == 400 and "The license text changed since you read it" in response.text
    assert not Subscription.objects.exists()


def test_a_member_is_told_to_ask_an_owner(browser_for, member, acme) -> None:
    browser = browser_for(member)
    assert "ask one of them to subscribe" in browser.get(PAGE).text
    response = browser.post(f"{PAGE}subscribe/", {"accept": "yes"})
    assert response.status_code == 400 and not Subscription.objects.exists()


def test_changed_license_asks_for_acceptance_again(browser_for, owner, subscribed) -> None:
    license = License.objects.get(pk=card().license_id)
    license.text += "\nA new clause."
    license.save()
    card().save()  # the card's license hash follows its license text
    page = browser_for(owner).get(PAGE).text
    assert "The license changed since Acme accepted it" in page


def test_unsubscribe(browser_for, owner, subscribed, acme) -> None:
    response = browser_for(owner).post(f"{PAGE}unsubscribe/")
    assert response.status_code == 302
    assert not Subscription.objects.get(organization=acme).in_force


def test_outsider_subscribes_only_their_own_organisation(browser_for, outsider, acme, globex) -> None:
    browser = browser_for(outsider)
    # Picking acme is refused: the outsider stays in globex.
    browser.post("/organization/switch/", {"organization": "acme", "next": PAGE})
    browser.post(f"{PAGE}subscribe/", {"accept": "yes"})
    assert not Subscription.objects.filter(organization=acme).exists()
    assert Subscription.objects.filter(organization=globex).exists()


def test_outsider_cannot_unsubscribe_acme(browser_for, outsider, subscribed, acme) -> None:
    assert browser_for(outsider).post(f"{PAGE}unsubscribe/").status_code == 404
    assert Subscription.objects.get(organization=acme).in_force


def test_unsubscribing_with_live_deployments_is_refused_naming_them(
    browser_for, owner, subscribed, acme, acme_deployment
) -> None:
    response = browser_for(owner).post(f"{PAGE}unsubscribe/")
    assert response.status_code == 409
    assert 'id="unsubscribe-error"' in response.text
    assert "Acme still runs 1 deployment of Llama 3.1 8B Instruct: chat. Delete it first" in response.text
    assert Subscription.objects.get(organization=acme).in_force


def test_changed_license_says_what_stops_until_accepted(browser_for, owner, subscribed) -> None:
    license = License.objects.get(pk=card().license_id)
    license.text += "\nA new clause."
    license.save()
    card().save()
    page = browser_for(owner).get(PAGE).text
    assert "deployments of Llama 3.1 8B Instruct are not served and cannot be scaled up or updated" in page
