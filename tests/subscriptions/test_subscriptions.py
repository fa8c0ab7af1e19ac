"""Subscribing is accepting a model's license; a changed license must be accepted again."""

import pytest
from django.core.management import call_command

from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.models import LicenseAcceptance, Subscription
from marketplace.subscriptions.services import subscription_in_force

pytestmark = pytest.mark.django_db

SUBSCRIPTIONS = "/api/subscriptions/"
MODEL = "llama-3.1-8b-instruct"


def subscribe(client, **body):
    return client.post(SUBSCRIPTIONS, {"model": MODEL, "accept_license": True, **body}, format="json")


def test_owner_subscribes_and_the_acceptance_is_recorded(client_for, owner, acme) -> None:
    card = ModelCard.objects.get(slug=MODEL)
    response = subscribe(client_for(owner), license_sha256=card.license_sha256)
    assert response.status_code == 201, response.content
    assert response.json()["in_force"] is True
    acceptance = LicenseAcceptance.objects.get()
    assert (acceptance.accepted_by, acceptance.license_sha256) == (owner, card.license_sha256)
    assert subscription_in_force(acme, card)


def test_subscribing_twice_is_harmless(client_for, owner) -> None:
    client = client_for(owner)
    assert subscribe(client).status_code == 201
    assert subscribe(client).status_code == 200
    assert Subscription.objects.count() == 1
    assert LicenseAcceptance.objects.count() == 1


def test_declining_the_license_is_refused(client_for, owner) -> None:
    response = subscribe(client_for(owner), accept_license=False)
    assert response.status_code == 400 and "accept_license" in response.json()
    assert not Subscription.objects.exists()


def test_a_stale_license_hash_is_refused(client_for, owner) -> None:
    response = subscribe(client_for(owner), license_sha256="0" * 64)
    assert response.status_code == 400 and "license_sha256" in response.json()
    assert not Subscription.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"accept_license": "perhaps"}, "accept_license"),
        ({"license_sha256": "short"}, "license_sha256"),
        ({"organization": "globex"}, "organization"),
    ],
)
def test_bad_subscription_input_names_the_field(client_for, owner, body, field) -> None:
    response = subscribe(client_for(owner), **body)
    assert response.status_code == 400
    assert field in response.json()
    assert not Subscription.objects.exists()


def test_members_and_api_keys_cannot_accept_licenses(client_for, member, api_key_client, acme) -> None:
    assert subscribe(client_for(member)).status_code == 403
    key_client, _ = api_key_client(acme)
    assert subscribe(key_client).status_code == 403
    assert not Subscription.objects.exists()


def test_members_see_their_organisations_subscriptions(client_for, owner, member) -> None:
    subscribe(client_for(owner))
    rows = client_for(member).get(SUBSCRIPTIONS).json()["results"]
    assert [(r["organization"], r["model"]) for r in rows] == [("acme", MODEL)]


def test_outsider_cannot_see_or_cancel_a_subscription(client_for, owner, outsider) -> None:
    created = subscribe(client_for(owner)).json()
    client = client_for(outsider)
    assert client.get(SUBSCRIPTIONS).json()["results"] == []
    assert client.get(f"{SUBSCRIPTIONS}{created['id']}/").status_code == 404
    assert client.delete(f"{SUBSCRIPTIONS}{created['id']}/").status_code == 404
    assert Subscription.objects.get().status == "active"


def test_unsubscribe_keeps_the_history(client_for, owner, acme) -> None:
    client = client_for(owner)
    created = subscribe(client).json()
    assert client.delete(f"{SUBSCRIPTIONS}{created['id']}/").status_code == 204
    assert Subscription.objects.get().status == "cancelled"
    assert not subscription_in_force(acme, ModelCard.objects.get(slug=MODEL))
    assert LicenseAcceptance.objects.count() == 1
    assert subscribe(client).status_code == 200  # subscribing again re-accepts
    assert Subscription.objects.get().status == "active"
    assert LicenseAcceptance.objects.count() == 2


def test_a_changed_license_text_must_be_accepted_again(client_for, owner, acme, tmp_path) -> None:
    import shutil

    import yaml

    from marketplace.catalog.loader import DATA_DIR

    client = client_for(owner)
    subscribe(client)
    card = ModelCard.objects.get(slug=MODEL)
    assert subscription_in_force(acme, card)

    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    licenses = yaml.safe_load((data / "licenses.yaml").read_text())
    licenses["licenses"]["llama3.1"]["text"] += " Amended."
    (data / "licenses.yaml").write_text(yaml.safe_dump(licenses))
    call_command("load_catalog", path=data)

    card.refresh_from_db()
    assert not subscription_in_force(acme, card)
    detail = client.get(f"{SUBSCRIPTIONS}{Subscription.objects.get().pk}/").json()
    assert (detail["license_current"], detail["in_force"]) == (False, False)

    assert subscribe(client, license_sha256=card.license_sha256).status_code == 200
    assert subscription_in_force(acme, card)
    assert [
        a["license_sha256"]
        for a in client.get(f"{SUBSCRIPTIONS}{Subscription.objects.get().pk}/").json()["acceptances"]
    ] == [card.license_sha256, LicenseAcceptance.objects.order_by("accepted_at").first().license_sha256]
