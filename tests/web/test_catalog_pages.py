"""The catalog page: search and facets narrow the list, htmx gets just the results, bad filters are
explained, and anyone may browse."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup

from marketplace.catalog.models import ModelCard

CATALOG = "/"


def card_names(html: str) -> list[str]:
    return re.findall(r'<h2><a href="/models/[^"]+/">([^<]+)</a></h2>', html)


def test_anyone_may_browse_the_catalog(client, db) -> None:
    response = client.get(CATALOG)
    assert response.status_code == 200
    assert f"{ModelCard.objects.count()} models" in response.text
    assert len(card_names(response.text)) == 24  # the first page


def test_search_narrows_the_list(client, db) -> None:
    names = card_names(client.get(CATALOG, {"q": "smollm2 135m"}).text)
    assert names == ["SmolLM2 135M Instruct"]


def test_each_facet_filters(client, db) -> None:
    cases = {
        "task": ("embedding", lambda c: "embedding" in c.tasks),
        "domain": ("finance", lambda c: "finance" in c.domains),
        "language": ("de", lambda c: "de" in c.languages),
        "provider": ("mistral-ai", lambda c: c.provider.slug == "mistral-ai"),
        "license": ("apache-2.0", lambda c: c.license.identifier == "apache-2.0"),
        "modality": ("image", lambda c: "image" in c.modalities_in),
    }
    cards = list(ModelCard.objects.select_related("provider", "license"))
    for name, (value, keep) in cases.items():
        expected = sum(1 for card in cards if keep(card))
        assert 0 < expected < len(cards), name  # the check below could fail
        response = client.get(CATALOG, {name: value})
        assert f"{expected} model" in response.text.split('id="result-count">')[1][:20], name


def test_size_context_and_fits_facets(client, db) -> None:
    small = ModelCard.objects.filter(parameters__lte=3_000_000_000).count()
    assert f"{small} model" in client.get(CATALOG, {"size": "small"}).text
    long = ModelCard.objects.filter(context_length__gte=131072).count()
    assert f"{long} model" in client.get(CATALOG, {"context_length_min": "131072"}).text
    cpu = ModelCard.objects.filter(cpu_capable=True).count()
    assert f"{cpu} model" in client.get(CATALOG, {"fits": "local-cpu"}).text


def test_sorting_by_size(client, db) -> None:
    names = card_names(client.get(CATALOG, {"sort": "-parameters"}).text)
    largest = ModelCard.objects.order_by("-parameters", "name").values_list("name", flat=True)[:3]
    assert names[:3] == list(largest)


def test_htmx_gets_only_the_results(client, db) -> None:
    response = client.get(CATALOG, {"task": "reranking"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="results")
    assert "<html" not in response.text and 'id="result-count"' in response.text


def test_pagination_keeps_the_filters(client, db) -> None:
    response = client.get(CATALOG, {"task": "chat", "page": "2"})
    assert "Page 2 of" in response.text and "task=chat&amp;page=1" in response.text


def test_a_bad_filter_is_refused_naming_the_filter_as_the_page_labels_it(client, db) -> None:
    response = client.get(CATALOG, {"fits": "no-such-instance", "gated": "maybe", "task": "dancing"})
    assert response.status_code == 400
    alert = BeautifulSoup(response.text, "html.parser").select_one('[role="alert"]').text
    assert "Fits instance type: Not one of the choices offered: pick one from the list." in alert
    assert "Gated: “maybe” is not a valid choice." in alert
    assert "Task: “dancing” is not one of the choices" in alert
    assert "0 models" in response.text


def test_a_bad_filter_in_the_results_htmx_asks_for_is_in_the_products_words(client, db) -> None:
    response = client.get(
        CATALOG, {"parameters_min": "1e999"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="results"
    )
    assert response.status_code == 400
    alert = BeautifulSoup(response.text, "html.parser").select_one('[role="alert"]').text
    assert alert.strip() == "Parameters: At most 1e+50."


def test_model_page_shows_specs_license_and_fit(client, db) -> None:
    response = client.get("/models/smollm2-135m-instruct/")
    assert response.status_code == 200
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in response.text
    assert "Apache License 2.0" in response.text
    assert "Sign in" in response.text  # anonymous: no subscribe form
    assert "This machine (CPU)" in response.text


def test_fit_table_estimates_cost_for_min_and_max_replicas(client, db) -> None:
    response = client.get(
        "/models/llama-3.1-8b-instruct/",
        {"min_replicas": "2", "max_replicas": "5"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="fits",
    )
    assert "<html" not in response.text
    # g5.xlarge at $1.006/h: 2 replicas $2.01, 5 replicas $5.03
    row = response.text.split("g5.xlarge")[1].split("</tr>")[0]
    assert "$2.01" in row and "$5.03" in row


def test_bad_replica_numbers_are_explained(client, db) -> None:
    response = client.get("/models/llama-3.1-8b-instruct/", {"min_replicas": "9", "max_replicas": "x"})
    assert response.status_code == 400 and "Max replicas must be a whole number from 1 to 64" in response.text


def test_unknown_model_is_404(client, db) -> None:
    assert client.get("/models/no-such-model/").status_code == 404


def test_language_facet_offers_each_language_once(client, db) -> None:
    html = client.get(CATALOG).text
    facet = html.split('id="facet-language"')[1].split("</fieldset>")[0]
    offered = re.findall(r'value="([^"]+)"', facet)
    languages = {code for card in ModelCard.objects.all() for code in card.languages}
    assert set(offered) == languages and len(offered) == len(languages)


def test_commercial_use_facet_filters_and_each_card_says_it(client, db) -> None:
    expected = ModelCard.objects.filter(license__commercial_use="not-allowed").count()
    html = client.get(CATALOG, {"commercial_use": "not-allowed"}).text
    assert f"{expected} model" in html.split('id="result-count">')[1][:20]
    assert "no commercial use" in html and "commercial use allowed" not in html
    assert 'value="not-allowed" checked' in html.split('id="facet-commercial_use"')[1].split("</fieldset>")[0]


def test_unknown_gating_is_shown_as_unknown_not_as_open(client, db) -> None:
    card = ModelCard.objects.filter(gated__isnull=True).first()
    assert card is not None
    assert "gating on Hugging Face not known" in client.get(f"/models/{card.slug}/").text
    html = client.get(CATALOG, {"q": card.name}).text
    assert "gating unknown" in html


def test_model_page_shows_the_memory_arithmetic(client, db) -> None:
    html = client.get("/models/llama-3.1-8b-instruct/").text
    section = html.split('id="memory"')[1].split("</section>")[0]
    # 32 layers × 8 KV heads × 128 head size × 2 × 2 bytes = 128 KiB a token, × 32,768 tokens = 4 GiB.
    assert "32 layers × 8 KV heads × 128 head size" in section and "128 KiB" in section
    assert "32,768 tokens" in section and "4.29 GB (4.00 GiB)" in section
    assert "<strong>27 GB</strong>" in section
    assert "Commercial use allowed with conditions" in html


def test_fit_table_gives_each_instance_its_context(client, db) -> None:
    html = client.get("/models/llama-3.1-8b-instruct/").text
    small = html.split("g5.xlarge")[1].split("</tr>")[0]
    assert "on 1 GPU, 14,336 tokens" in small and "the longest that fits" in small
    large = html.split("p5.48xlarge")[1].split("</tr>")[0]
    assert "32,768 tokens" in large and "the longest that fits" not in large


def test_an_estimated_price_says_so(client, db) -> None:
    html = client.get("/models/llama-3.1-8b-instruct/").text
    assert "(estimate)" in html.split("g2-standard-8")[1].split("</tr>")[0]
    assert "(estimate)" not in html.split("g5.xlarge")[1].split("</tr>")[0]


def test_outsider_sees_the_public_model_page_without_a_subscribe_form(browser_for, outsider) -> None:
    html = browser_for(outsider).get("/models/llama-3.1-8b-instruct/").text
    assert 'id="memory"' in html and "14,336 tokens" in html
    assert "I have read the license and accept it for Acme" not in html


def test_the_deploy_picker_says_on_how_many_gpus_and_at_what_context(browser_for, member, subscribed) -> None:
    html = browser_for(member).get("/deployments/new/", {"model": subscribed.slug}).text
    choice = html.split('value="aws-g5-xlarge"')[1].split("</label>")[0]
    assert "runs on 1 GPU at up to 14,336 tokens" in choice
    estimated = html.split('value="gcp-g2-standard-8"')[1].split("</label>")[0]
    assert "(estimate)" in estimated
