"""The web UI's custom model pages: an owner registers a folder of weights and reads the facts found in
it, a refusal names its field and saves nothing, a member reads but changes nothing, and an outsider sees
nothing of another organisation's custom models, on these pages or on the catalog and deploy pages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from marketplace.accounts.models import Organization
from marketplace.catalog import custom_models
from marketplace.catalog.models import CustomModel, ModelCard
from tests.catalog.custom_model_files import TINY_LLAMA_TENSORS, parameter_count, write_model
from tests.web.conftest import make_deployment

BrowserFor = Callable[[AbstractUser | None], Client]


@pytest.fixture
def folder(settings: Any, tmp_path: Path) -> Path:
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path)]
    return write_model(tmp_path / "tiny-llama")


@pytest.fixture
def custom(acme: Organization, owner: AbstractUser, folder: Path) -> CustomModel:
    return custom_models.register_from_path(organization=acme, user=owner, name="tiny", path=str(folder))


def test_the_navigation_leads_to_the_custom_models(browser_for: BrowserFor, member: AbstractUser) -> None:
    page = browser_for(member).get("/custom-models/")
    assert page.status_code == 200
    assert b'href="/custom-models/" aria-current="page">Custom models</a>' in page.content


def test_an_owner_registers_a_folder_and_reads_its_facts(browser_for: BrowserFor, owner, folder) -> None:
    browser = browser_for(owner)
    response = browser.post("/custom-models/", {"name": "tiny", "source": "path", "path": str(folder)})
    custom = CustomModel.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/custom-models/{custom.pk}/"
    page = browser.get(response["Location"]).content.decode()
    assert "LlamaForCausalLM" in page
    assert f"({parameter_count(TINY_LLAMA_TENSORS)}, from the safetensors headers)" in page
    assert f'href="/deployments/new/?model={custom.card.slug}"' in page


def test_a_refusal_names_its_field_and_saves_nothing(browser_for: BrowserFor, owner, folder) -> None:
    (folder / "config.json").write_text('{"architectures": ["NoSuchModel"], "max_position_embeddings": 8}')
    response = browser_for(owner).post(
        "/custom-models/", {"name": "tiny", "source": "path", "path": str(folder)}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="error-path"' in page and "architecture NoSuchModel is not one the pinned engine" in page
    assert 'value="tiny"' in page  # what was typed stays
    assert not CustomModel.objects.exists()


def test_a_malformed_form_is_refused_without_a_server_error(browser_for: BrowserFor, owner) -> None:
    response = browser_for(owner).post("/custom-models/", {"name": "Bad Name!", "source": "nowhere"})
    assert response.status_code == 400
    assert 'id="error-source"' in response.content.decode()


def test_a_member_reads_but_cannot_register_or_delete(
    browser_for: BrowserFor, member, custom, folder
) -> None:
    browser = browser_for(member)
    page = browser.get("/custom-models/").content.decode()
    assert f'href="/custom-models/{custom.pk}/"' in page and 'id="register-custom-model"' not in page
    response = browser.post("/custom-models/", {"name": "other", "source": "path", "path": str(folder)})
    assert response.status_code == 403
    assert browser.post(f"/custom-models/{custom.pk}/delete/").status_code == 403
    assert list(CustomModel.objects.values_list("name", flat=True)) == ["tiny"]


def test_an_owner_deletes_an_unused_model(browser_for: BrowserFor, owner, custom) -> None:
    response = browser_for(owner).post(f"/custom-models/{custom.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/custom-models/"
    assert not CustomModel.objects.exists() and not ModelCard.every_card.filter(pk=custom.card_id).exists()


def test_delete_is_refused_while_a_deployment_runs_it(browser_for: BrowserFor, owner, acme, custom) -> None:
    deployment = make_deployment(acme, name="mine")
    deployment.model_card = custom.card
    deployment.save()
    response = browser_for(owner).post(f"/custom-models/{custom.pk}/delete/")
    assert response.status_code == 409
    assert "tiny still runs in deployment mine: delete it first." in response.content.decode()
    assert CustomModel.objects.exists()


def test_the_deploy_form_offers_it_without_a_license(browser_for: BrowserFor, member, custom) -> None:
    page = browser_for(member).get("/deployments/new/").content.decode()
    assert f'<option value="{custom.card.slug}"' in page


def test_outsider_cannot_open_or_delete_it(browser_for: BrowserFor, outsider, custom) -> None:
    browser = browser_for(outsider)
    assert browser.get(f"/custom-models/{custom.pk}/").status_code == 404
    assert browser.post(f"/custom-models/{custom.pk}/delete/").status_code == 404
    assert f"/custom-models/{custom.pk}/" not in browser.get("/custom-models/").content.decode()
    assert CustomModel.objects.exists()


def test_outsider_sees_it_nowhere_in_the_catalog(browser_for: BrowserFor, outsider, custom) -> None:
    browser = browser_for(outsider)
    slug = custom.card.slug
    assert browser.get(f"/models/{slug}/").status_code == 404
    for page in ("/", "/?q=tiny", "/?q=custom", "/deployments/new/", f"/deployments/new/?model={slug}"):
        assert slug not in browser.get(page).content.decode(), page


def test_its_own_organisation_does_not_see_it_in_the_public_catalog(browser_for: BrowserFor, member, custom):
    assert custom.card.slug not in browser_for(member).get("/?q=tiny").content.decode()


def test_outsider_cannot_base_an_adapter_on_it(browser_for: BrowserFor, outsider, custom) -> None:
    page = browser_for(outsider).get("/custom-models/").content.decode()
    assert f'value="{custom.card.slug}"' not in page
