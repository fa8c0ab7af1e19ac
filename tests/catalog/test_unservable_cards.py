"""A card the pinned engine cannot serve says so everywhere before anyone clicks (its page, the deploy form,
the catalog's "deployable here", the REST list) and deploying it is refused with the reason; a servable
card lists the routes its deployment serves."""

from typing import Any

import pytest
from bs4 import BeautifulSoup
from django.contrib.auth.models import User
from django.test import Client

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscribe
from marketplace.web.catalog_facets import with_deployable
from marketplace.web.fitting import why_not_here
from serving.models import Deployment

pytestmark = pytest.mark.django_db

IMAGE_MODEL = "flux.1-schnell"
SPEECH_MODEL = "whisper-large-v3"


@pytest.fixture(autouse=True)
def _kubernetes(settings: Any) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    settings.KEDA_ENABLED = True


@pytest.fixture
def image_model(acme: Organization, owner: User) -> ModelCard:
    card = ModelCard.objects.get(slug=IMAGE_MODEL)
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    return card


def browser(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def deploy_body(model: str) -> dict[str, Any]:
    return {"name": "pictures", "model": model, "instance_type": "aws-p4d-24xlarge"}


def test_deploying_a_card_the_engine_cannot_serve_is_refused_naming_model(
    client_for, member, image_model
) -> None:
    response = client_for(member).post("/api/deployments/", deploy_body(IMAGE_MODEL), format="json")
    assert response.status_code == 400
    (message,) = response.json()["model"]
    assert message.startswith("FLUX.1 [schnell] is not yet servable here: the pinned engine (vLLM)")
    assert "not images" in message
    assert not Deployment.objects.exists()


def test_the_refusal_comes_before_the_subscription_since_subscribing_would_not_help(
    client_for, member
) -> None:
    response = client_for(member).post("/api/deployments/", deploy_body("kokoro-82m"), format="json")
    assert response.status_code == 400
    assert "does not synthesise" in response.json()["model"][0]


def test_the_deploy_form_says_why_before_anyone_clicks_and_disables_deploy(member, image_model) -> None:
    page = browser(member).get("/deployments/new/", {"model": IMAGE_MODEL})
    soup = BeautifulSoup(page.content, "html.parser")
    assert "the pinned engine (vLLM) generates text and vectors, not images" in soup.find(
        id="cannot-run"
    ).get_text(" ", strip=True)
    assert soup.find("button", string="Deploy").has_attr("disabled")


def test_posting_the_deploy_form_for_such_a_card_is_refused_with_the_reason(member, image_model) -> None:
    form = {
        **deploy_body(IMAGE_MODEL),
        "min_replicas": "1",
        "max_replicas": "1",
        "autoscaling_policy": "fixed",
    }
    response = browser(member).post("/deployments/new/", form)
    assert response.status_code == 400
    assert b"not yet servable here" in response.content
    assert not Deployment.objects.exists()


def test_why_not_here_puts_the_engine_before_the_machines() -> None:
    card = ModelCard.objects.get(slug="esm2-t33-650m-ur50d")
    assert why_not_here(card) == card.not_servable_reason
    assert why_not_here(ModelCard.objects.get(slug=SPEECH_MODEL)) is None


def test_the_catalog_does_not_call_an_unservable_card_deployable_here() -> None:
    cards = with_deployable(ModelCard.objects.all(), list(InstanceType.objects.all()))
    deployable = dict(cards.values_list("slug", "deployable"))
    assert deployable[IMAGE_MODEL] is False  # it would fit a GPU, but nothing can serve it
    assert deployable[SPEECH_MODEL] is True


def test_the_model_page_of_an_unservable_card_says_so_and_offers_no_deploy(member, image_model) -> None:
    soup = BeautifulSoup(browser(member).get(f"/models/{IMAGE_MODEL}/").content, "html.parser")
    assert "is not yet servable here" in soup.find(id="not-servable").get_text()
    assert soup.find(id="routes").get_text(strip=True) == "Not yet servable here"
    assert not soup.find("a", string=f"Deploy {image_model.name}")


def test_the_model_page_lists_the_routes_a_deployment_serves() -> None:
    soup = BeautifulSoup(Client().get(f"/models/{SPEECH_MODEL}/").content, "html.parser")
    routes = [code.get_text() for code in soup.find(id="routes").find_all("code")]
    assert routes == ["audio.transcriptions", "audio.translations"]
    assert soup.find(id="not-servable") is None


def test_the_models_api_exposes_routes_and_servable(client_for, outsider) -> None:
    rows = {
        row["slug"]: row
        for row in client_for(outsider).get("/api/models/", {"page_size": 200}).json()["results"]
    }
    assert rows["bge-reranker-v2-m3"]["routes"] == ["rerank", "score"]
    assert rows["bge-reranker-v2-m3"]["servable"] is True
    assert rows["bge-reranker-v2-m3"]["not_servable_reason"] == ""
    assert (rows["kokoro-82m"]["servable"], rows["kokoro-82m"]["routes"]) == (False, [])


def test_the_model_detail_api_exposes_routes(client_for, outsider) -> None:
    data = client_for(outsider).get(f"/api/models/{SPEECH_MODEL}/").json()
    assert (data["routes"], data["servable"]) == (["audio.transcriptions", "audio.translations"], True)


def test_the_catalog_results_show_each_card_routes_compactly() -> None:
    soup = BeautifulSoup(Client().get("/", {"q": "whisper"}).content, "html.parser")
    routes = {
        card.find("h2").get_text(strip=True): card.find(class_="routes").get_text(" ", strip=True)
        for card in soup.select("li.card")
    }
    assert routes["Whisper large-v3"] == "Serves audio.transcriptions , audio.translations"
    assert routes["Whisper large-v3-turbo"] == "Serves audio.transcriptions"


def test_the_catalog_results_say_which_cards_are_not_yet_servable() -> None:
    soup = BeautifulSoup(Client().get("/", {"task": "image-generation"}).content, "html.parser")
    notes = [card.find(class_="routes").get_text(strip=True) for card in soup.select("li.card")]
    assert len(notes) >= 3
    assert set(notes) == {"Not yet servable here"}
