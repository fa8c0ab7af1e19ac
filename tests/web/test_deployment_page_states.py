"""A deployment's page fits its state: a deleted one offers neither the playground nor snippets; one
getting ready says for how long and where to look meanwhile (its engine log on this machine, its events
on Kubernetes); the snippets are what runs as pasted (a key from the environment, a bounded answer)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.web.templatetags.progress import duration
from serving.local import state
from serving.models import Deployment, DeploymentEvent
from tests.web.conftest import make_deployment


@pytest.fixture
def actual_state():
    """The local engine supervisor's reported state, as the page reads it; emptied afterwards."""
    connection = state.client()
    connection.delete(state.ACTUAL)
    yield connection
    connection.delete(state.ACTUAL)
    connection.close()


def local(deployment: Deployment) -> Deployment:
    Deployment.objects.filter(pk=deployment.pk).update(backend="local")
    deployment.refresh_from_db()
    return deployment


def test_a_deleted_deployment_offers_no_playground_and_no_snippets(browser_for, member, acme) -> None:
    deployment = make_deployment(acme, status="deleted", status_message="Deleted.")
    page = browser_for(member).get(f"/deployments/{deployment.pk}/").text
    assert "Open the playground" not in page and "snippet-curl" not in page and "Authorization" not in page
    assert 'id="gone"' in page and "This deployment was deleted" in page and "deploy it again" in page


def test_a_deployment_being_deleted_offers_no_playground_either(browser_for, member, acme) -> None:
    deployment = make_deployment(acme, status="deleting", status_message="Stopping.")
    page = browser_for(member).get(f"/deployments/{deployment.pk}/").text
    assert "Open the playground" not in page and "snippet-curl" not in page


def test_a_ready_deployment_shows_snippets_that_run_as_pasted(browser_for, member, acme_deployment) -> None:
    page = browser_for(member).get(f"/deployments/{acme_deployment.pk}/").text
    assert "Open the playground" in page
    assert '"max_tokens": 100' in page and "max_tokens=100" in page
    assert 'api_key=os.environ["MARKETPLACE_API_KEY"]' in page
    assert "…" not in page.split('id="snippet-curl"')[1].split("</section>")[0]
    assert "export MARKETPLACE_API_KEY=" in page


def test_plain_http_says_why_boto3_needs_another_way(browser_for, member, acme_deployment, settings) -> None:
    settings.PUBLIC_URL = "http://laptop.local:8000"
    boto3 = browser_for(member).get(f"/deployments/{acme_deployment.pk}/").text.split('id="snippet-boto3"')[1]
    assert "Bearer authorization requires an HTTPS endpoint" in boto3 and "UNSIGNED" in boto3
    settings.PUBLIC_URL = "https://mp.example.com"
    boto3 = browser_for(member).get(f"/deployments/{acme_deployment.pk}/").text.split('id="snippet-boto3"')[1]
    assert "AWS_BEARER_TOKEN_BEDROCK" in boto3 and "UNSIGNED" not in boto3.split("</div>")[0]


def test_a_provisioning_deployment_shows_how_long_and_its_events_on_kubernetes(
    browser_for, member, acme, settings
) -> None:
    settings.KUBERNETES_NAMESPACE = "serving"
    deployment = make_deployment(acme, status="provisioning", status_message="Pulling the image.")
    DeploymentEvent.objects.filter(deployment=deployment, status="provisioning").update(
        created_at=timezone.now() - timedelta(minutes=2, seconds=5)
    )
    page = (
        browser_for(member)
        .get(f"/deployments/{deployment.pk}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="status")
        .text
    )
    assert 'id="elapsed">2 min 0' in page  # 2 min 05 s, give or take the test's own seconds
    assert 'href="#history"' in page and 'id="history"' in page
    assert f"kubectl -n serving describe pods -l marketplace.io/deployment-id={deployment.pk}" in page
    assert "engine-log" not in page


def test_a_provisioning_local_deployment_links_its_engine_log(browser_for, member, acme) -> None:
    deployment = local(make_deployment(acme, status="provisioning", status_message="Loading."))
    page = browser_for(member).get(f"/deployments/{deployment.pk}/").text
    assert f'href="/deployments/{deployment.pk}/engine-log/"' in page and "kubectl" not in page


def test_a_ready_deployment_shows_no_progress_line(browser_for, member, acme_deployment) -> None:
    assert 'id="elapsed"' not in browser_for(member).get(f"/deployments/{acme_deployment.pk}/").text


def test_the_engine_log_shows_each_replicas_log_tail(
    browser_for, member, acme, actual_state, tmp_path
) -> None:
    deployment = local(make_deployment(acme, status="provisioning", status_message="Loading."))
    log = tmp_path / f"{deployment.pk}-0.log"
    log.write_text("INFO Loading weights took 3.1 seconds\nINFO Starting vLLM API server\n")
    replica = {"slot": 0, "state": "starting", "message": "", "restarts": 0, "log": str(log)}
    actual_state.hset(state.ACTUAL, str(deployment.pk), json.dumps({"replicas": [replica]}))
    page = browser_for(member).get(f"/deployments/{deployment.pk}/engine-log/").text
    assert "Loading weights took 3.1 seconds" in page and "Replica 0" in page


def test_the_engine_log_reads_only_the_replicas_own_file(
    browser_for, member, acme, actual_state, tmp_path
) -> None:
    deployment = local(make_deployment(acme, status="provisioning", status_message="Loading."))
    other = tmp_path / "secrets.txt"
    other.write_text("do not show")
    replica = {"slot": 0, "state": "starting", "message": "", "restarts": 0, "log": str(other)}
    actual_state.hset(state.ACTUAL, str(deployment.pk), json.dumps({"replicas": [replica]}))
    page = browser_for(member).get(f"/deployments/{deployment.pk}/engine-log/").text
    assert "do not show" not in page and "nothing written yet" in page


def test_the_engine_log_before_any_engine_started_says_so(browser_for, member, acme, actual_state) -> None:
    deployment = local(make_deployment(acme, status="pending", status_message="Requested."))
    page = browser_for(member).get(f"/deployments/{deployment.pk}/engine-log/").text
    assert 'id="engine-log-note"' in page and "No engine has started" in page


def test_a_kubernetes_deployment_has_no_engine_log_page(browser_for, member, acme_deployment) -> None:
    assert browser_for(member).get(f"/deployments/{acme_deployment.pk}/engine-log/").status_code == 404


def test_outsider_cannot_read_the_engine_log(browser_for, outsider, acme, actual_state, tmp_path) -> None:
    deployment = local(make_deployment(acme, status="provisioning", status_message="Loading."))
    log = tmp_path / f"{deployment.pk}-0.log"
    log.write_text("acme's engine\n")
    replica = {"slot": 0, "state": "starting", "message": "", "restarts": 0, "log": str(log)}
    actual_state.hset(state.ACTUAL, str(deployment.pk), json.dumps({"replicas": [replica]}))
    response = browser_for(outsider).get(f"/deployments/{deployment.pk}/engine-log/")
    assert response.status_code == 404 and "acme's engine" not in response.text


def test_anonymous_is_sent_to_sign_in_from_the_engine_log(client, acme_deployment) -> None:
    response = client.get(f"/deployments/{acme_deployment.pk}/engine-log/")
    assert response.status_code == 302 and response["Location"].startswith("/sign-in/")


@pytest.mark.parametrize(
    ("seconds", "said"), [(0, "0 s"), (45, "45 s"), (125, "2 min 05 s"), (3780, "1 h 03 min"), (-3, "0 s")]
)
def test_waits_are_said_as_people_say_them(seconds, said) -> None:
    assert duration(seconds) == said
