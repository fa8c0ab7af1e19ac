"""The model page's cost table: it refuses replica counts it cannot use (saying which and why, with no
figures worked out from numbers nobody typed), says when a replica pays for more GPUs than the model
uses, and recommends the cheapest instance type the model fits."""

from __future__ import annotations

import pytest

from marketplace.catalog.models import InstanceType, ModelCard

PAGE = "/models/llama-3.1-8b-instruct/"
SMALL = "/models/smollm2-135m-instruct/"


def fits_part(client, url: str, **params: str):
    return client.get(url, params, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="fits")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_replicas": "x", "max_replicas": "2"}, "min_replicas"),
        ({"min_replicas": "1", "max_replicas": "65"}, "max_replicas"),
        ({"min_replicas": "1", "max_replicas": "0"}, "max_replicas"),
        ({"min_replicas": "1.5", "max_replicas": "2"}, "min_replicas"),
        ({"min_replicas": "-1", "max_replicas": "2"}, "min_replicas"),
        ({"min_replicas": "3", "max_replicas": "2"}, "min_replicas"),
    ],
)
def test_a_bad_replica_count_is_refused_naming_the_field(client, db, params, field) -> None:
    response = fits_part(client, PAGE, estimate="1", **params)
    assert response.status_code == 400
    assert f'id="error-{field}"' in response.text
    row = response.text.split("g5.xlarge")[1].split("</tr>")[0]
    assert "$" not in row.split("</td>", 3)[-1]  # no replica-hour costs from numbers nobody typed


def test_a_count_the_browser_left_out_is_refused_not_replaced_by_the_default(client, db) -> None:
    # A number field the browser cannot read is left out of the request; the form's marker still comes.
    response = fits_part(client, PAGE, estimate="1", max_replicas="5")
    assert response.status_code == 400
    assert "Min replicas must be a whole number from 0 to 64." in response.text


def test_the_full_page_marks_the_field_refused(client, db) -> None:
    response = client.get(PAGE, {"estimate": "1", "min_replicas": "1", "max_replicas": "99"})
    assert response.status_code == 400
    assert 'aria-invalid="true" aria-describedby="error-max_replicas"' in response.text
    assert 'value="99"' in response.text  # what was typed stays in the field to be corrected


def test_the_page_opened_without_counts_uses_the_defaults(client, db) -> None:
    response = client.get(PAGE)
    assert response.status_code == 200 and "1 replica/h" in response.text and "2 replicas/h" in response.text


def test_a_replica_that_uses_one_gpu_of_eight_says_the_whole_instance_is_paid_for(client, db) -> None:
    eight = InstanceType.objects.filter(gpu_count=8).order_by("hourly_price_usd").first()
    assert eight is not None
    row = client.get(SMALL).text.split(f">{eight.name} <")[1].split("</tr>")[0]
    assert "on 1 GPU" in row and "The whole instance is paid for: 7 of its 8 GPUs stay idle." in row


def test_the_cheapest_instance_type_that_fits_is_recommended(client, db, settings) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    gpus = InstanceType.objects.exclude(gpu_count=0)
    fitting = [instance for instance in gpus if card.placement(instance).fits]
    cheapest = min(fitting, key=lambda instance: instance.hourly_price_usd)
    text = fits_part(client, PAGE, estimate="1", min_replicas="0", max_replicas="3").text
    recommended = text.split('id="cheapest">')[1].split("</p>")[0]
    assert f"Cheapest that fits: <strong>{cheapest.name}</strong>" in recommended
    marked = [row for row in text.split("<tr")[1:] if "cheapest that fits</span>" in row]
    assert len(marked) == 1 and f">{cheapest.name} <" in marked[0]


def test_on_this_machine_a_gpu_only_model_is_recommended_for_a_cluster(client, db, settings) -> None:
    settings.SERVING_BACKEND = "local"
    recommended = client.get(PAGE).text.split('id="cheapest">')[1].split("</p>")[0]
    assert "on a Kubernetes cluster (this platform cannot deploy it)" in recommended


def test_outsider_gets_the_public_cost_table_but_not_anothers_subscription(
    browser_for, outsider, acme, subscribed
) -> None:
    html = browser_for(outsider).get(PAGE).text
    assert 'id="cheapest"' in html
    assert 'id="subscribed"' not in html and acme.name not in html
