"""A prompt router in a real headless Chromium against the whole platform (web, a Celery worker, beat):
an owner creates one over two deployments, sees it untrained (sending everything to its fallback),
trains it from an evaluation with a known ground truth (tests/learning/routerdata.py) while the page
shows the progress, sees the trained report's chart, and activates the version.

The deployments stand on the stateful fake Kubernetes API (no cluster runs here, and no engine is needed:
nothing is invoked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import PEOPLE_PASSWORD, running_platform, shoot
from tests.serving.fake_kubernetes import FakeKubernetes

pytestmark = pytest.mark.slow

GROUND_TRUTH = (
    "from learning.storage import get_store\n"
    "from marketplace.accounts.models import Organization\n"
    "from tests.learning.routerdata import make_evaluation\n"
    "make_evaluation(get_store(), Organization.objects.get(slug='lab'), count=200)\n"
)


def test_an_owner_creates_a_router_sees_it_untrained_then_trains_it_and_reads_its_report(
    tmp_path: Path, page_for: Any, screenshots: Path
) -> None:
    fake = FakeKubernetes().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake.url}'}}}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
        "users: [{name: fake, user: {token: fake}}]\n"
    )
    try:
        with running_platform(
            tmp_path, SERVING_BACKEND="kubernetes", KUBECONFIG=str(kubeconfig), REDIS_DB="12"
        ) as platform:
            platform.add_person("rita", "lab")
            platform.manage("shell", "-c", GROUND_TRUTH)  # deployments small and large, and their evaluation
            page = page_for(platform, "rita", PEOPLE_PASSWORD)

            # Create the router from the navigation.
            page.get_by_role("link", name="Routers").click()
            page.get_by_label("Router name (the model name apps call)").fill("auto")
            page.locator('input[name="candidates"][value="small"]').check()
            page.locator('input[name="candidates"][value="large"]').check()
            page.get_by_label(
                "Fallback (answers when no cheaper candidate is predicted good enough)"
            ).select_option("large")
            page.locator("#id-tau-slider").fill("20")  # the slider moves the number with it
            assert page.locator("#id-quality_difference").input_value() == "20"
            shoot(page, screenshots, "router-create")
            page.get_by_role("button", name="Create the router").click()

            # Untrained: it says where everything goes.
            page.wait_for_url("**/routers/*/")
            state = page.locator("#router-state")
            assert "Untrained: sends everything to its fallback, large." in state.inner_text()
            assert "measured by an evaluation" in page.locator("#candidates").inner_text()
            shoot(page, screenshots, "router-untrained")

            # Train from the evaluation: the worker trains it while the page follows.
            page.get_by_label("Evaluation and scorer").select_option(label="routing · exact_match")
            page.get_by_role("button", name="Train").click()
            page.locator("#versions").wait_for(timeout=180_000)
            assert "Succeeded" in page.locator("#trainings").inner_text()

            # The trained report: quality against cost over τ beside the baselines, shares, intervals.
            chart = page.locator("svg#router-tradeoff")
            chart.wait_for()
            assert chart.locator("g.series").count() == 2  # the n-gram predictor and the random mix
            assert chart.locator("g.series").first.locator("circle").count() >= 21
            assert chart.locator("circle.at-tau").count() == 1
            assert chart.locator("g.baseline").count() == 2
            assert "95% interval" in page.locator("#quality-retained").inner_text()
            assert page.locator("#router-shares li").count() == 2
            shoot(page, screenshots, "router-report")

            # Activate it: the router now says what it does.
            page.get_by_role("button", name="Activate v1").click()
            page.wait_for_url("**/routers/*/?version=1")
            assert "Shadow mode" in page.locator("#router-state").inner_text()
    finally:
        fake.stop()
