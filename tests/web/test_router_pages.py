"""The web UI's prompt router pages: owners create one from the organisation's deployments (τ, costs,
mode, shadow calls), see it untrained, train it from an evaluation with progress, read what a version
would do as charts, activate it and change τ; members read everything but change nothing; outsiders see
nothing of another organisation's routers. Training data has a known ground truth
(tests/learning/routerdata.py): a small candidate right on sums, a large one right on everything."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from bs4 import BeautifulSoup
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.utils import timezone

from learning import router_service, router_training
from learning.models import Router, RouterTraining, RouterVersion, TrainingStatus
from learning.storage import FolderStore
from marketplace.accounts.models import Organization
from marketplace.web import router_chart
from serving.models import Deployment, UsageRecord
from tests.learning.conftest import configured_store, make_deployment  # noqa: F401 (a fixture)
from tests.learning.routerdata import Setup, make_evaluation, router_fields

BrowserFor = Callable[[AbstractUser | None], Client]


@pytest.fixture
def setup(acme: Organization, configured_store: FolderStore) -> Setup:  # noqa: F811
    return make_evaluation(configured_store, acme)


@pytest.fixture
def router(setup: Setup, owner: AbstractUser) -> Router:
    fields = router_fields(
        candidates=[{"deployment": "small", "cost_per_1k_tokens": 0.001}, {"deployment": "large"}]
    )
    return router_service.create_router(organization=setup.organization, user=owner, **fields)


def trained(router: Router, setup: Setup, owner: AbstractUser) -> RouterTraining:
    """The router trained from the ground-truth evaluation, in this process (as a worker would)."""
    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    assert router_training.run(training.pk) == TrainingStatus.SUCCEEDED
    training.refresh_from_db()
    return training


def page(client: Client, path: str) -> BeautifulSoup:
    answer = client.get(path)
    assert answer.status_code == 200, answer.content.decode()[-2000:]
    return BeautifulSoup(answer.content, "html.parser")


def create_form(**overrides: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "name": "auto", "candidates": ["small", "large"], "cost-small": "0.002", "cost-large": "",
        "fallback": "large", "quality_difference": "15", "mode": "shadow", "shadow_rate": "5",
        "shadow_tokens_per_day": "20000", "judge_deployment": "large",
    }  # fmt: skip
    form.update(overrides)
    return form


# --- Navigation and the list --------------------------------------------------------------------------------


def test_the_navigation_links_to_the_routers_page(browser_for: BrowserFor, member: AbstractUser) -> None:
    soup = page(browser_for(member), "/routers/")
    [link] = soup.select('nav a[href="/routers/"]')
    assert link.get("aria-current") == "page"


def test_the_list_shows_each_router_with_its_candidates_and_that_it_is_untrained(
    browser_for: BrowserFor, member: AbstractUser, router: Router
) -> None:
    row = page(browser_for(member), "/routers/").select_one("#routers tbody tr")
    assert row is not None
    text = row.get_text(" ", strip=True)
    assert "auto" in text and "small, large" in text and "sends everything to its fallback" in text


# --- Creating -----------------------------------------------------------------------------------------------


def test_an_owner_creates_a_router_from_the_form_and_sees_it_untrained(
    browser_for: BrowserFor, owner: AbstractUser, setup: Setup
) -> None:
    client = browser_for(owner)
    form = page(client, "/routers/").select_one("#create-router")
    assert form is not None
    assert {i["value"] for i in form.select('input[name="candidates"]')} >= {"small", "large"}
    assert form.select_one('input[type="range"]') is not None  # τ as a slider beside the number

    answer = client.post("/routers/", create_form())
    assert answer.status_code == 302, answer.content.decode()[-3000:]
    router = Router.objects.get(organization=setup.organization, name="auto")
    assert router.candidates == [
        {"deployment": "small", "cost_per_1k_tokens": 0.002},
        {"deployment": "large", "cost_per_1k_tokens": None},
    ]
    assert (router.fallback, router.quality_difference, router.mode) == ("large", 0.15, "shadow")
    assert (router.shadow_rate, router.shadow_tokens_per_day, router.judge_deployment) == (
        0.05,
        20000,
        "large",
    )
    detail = page(client, answer["Location"])
    assert (
        "Untrained: sends everything to its fallback, large." in detail.select_one("#router-state").get_text()
    )


def test_the_detail_shows_each_candidates_cost_per_1000_tokens_and_where_it_comes_from(
    browser_for: BrowserFor, member: AbstractUser, router: Router
) -> None:
    rows = {
        row.th.get_text(" ", strip=True).split()[0]: row.get_text(" ", strip=True)
        for row in page(browser_for(member), f"/routers/{router.pk}/").select("#candidates tbody tr")
    }
    assert "$0.001000" in rows["small"] and "set on the router" in rows["small"]
    measured = router_service.candidate_costs(router)["large"]
    assert measured is not None and f"${measured:.6f}" in rows["large"]
    assert "measured by an evaluation" in rows["large"] and "fallback" in rows["large"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"candidates": ["small"]}, "candidates"),
        ({"quality_difference": "150"}, "quality_difference"),
        ({"quality_difference": "ten"}, "quality_difference"),
        ({"cost-small": "cheap"}, "cost-small"),
        ({"cost-small": "-1"}, "cost-small"),
        ({"fallback": "nowhere"}, "fallback"),
        ({"name": "Not A Label"}, "name"),
        ({"name": "small"}, "name"),  # a deployment's name
        ({"shadow_rate": "101"}, "shadow_rate"),
        ({"shadow_tokens_per_day": "-5"}, "shadow_tokens_per_day"),
        ({"mode": "sometimes"}, "mode"),
    ],
)
def test_a_malformed_form_is_refused_naming_the_field_and_saves_nothing(
    browser_for: BrowserFor, owner: AbstractUser, setup: Setup, overrides: dict[str, Any], field: str
) -> None:
    answer = browser_for(owner).post("/routers/", create_form(**overrides))
    assert answer.status_code == 400, answer.content.decode()[-2000:]
    soup = BeautifulSoup(answer.content, "html.parser")
    assert soup.select_one(f"#error-{field}") is not None, soup.select(".field-error")
    assert not Router.objects.exists()
    ticked = {i["value"] for i in soup.select('input[name="candidates"][checked]')}
    assert ticked == set(create_form(**overrides)["candidates"])  # what was typed stays


def test_a_member_sees_the_routers_but_cannot_create_one(
    browser_for: BrowserFor, member: AbstractUser, setup: Setup
) -> None:
    client = browser_for(member)
    assert page(client, "/routers/").select_one("#create-router") is None
    answer = client.post("/routers/", create_form())
    assert answer.status_code == 403
    assert "ask one of them" in answer.content.decode()
    assert not Router.objects.exists()


# --- Outsiders ----------------------------------------------------------------------------------------------


def test_an_outsider_neither_sees_nor_touches_another_organisations_router(
    browser_for: BrowserFor, outsider: AbstractUser, router: Router, setup: Setup
) -> None:
    client = browser_for(outsider)
    assert "auto" not in page(client, "/routers/").select_one("#routers").get_text()
    assert client.get(f"/routers/{router.pk}/").status_code == 404
    assert (
        client.post(
            f"/routers/{router.pk}/train/", {"source": f"{setup.evaluation.pk}:exact_match"}
        ).status_code
        == 404
    )
    assert client.post(f"/routers/{router.pk}/activate/", {"version": "none"}).status_code == 404
    assert client.post(f"/routers/{router.pk}/settings/", {"quality_difference": "90"}).status_code == 404
    router.refresh_from_db()
    assert router.quality_difference == 0.1 and not RouterTraining.objects.exists()


def test_an_outsider_cannot_name_another_organisations_deployments_as_candidates(
    browser_for: BrowserFor, outsider: AbstractUser, setup: Setup, globex: Organization
) -> None:
    answer = browser_for(outsider).post("/routers/", create_form())
    assert answer.status_code == 400
    assert BeautifulSoup(answer.content, "html.parser").select_one("#error-candidates") is not None
    assert not Router.objects.exists()


def test_an_outsider_cannot_train_from_another_organisations_evaluation(
    browser_for: BrowserFor, outsider: AbstractUser, globex: Organization, setup: Setup
) -> None:
    for name in ("small", "large"):
        make_deployment(globex, name)
    theirs = router_service.create_router(organization=globex, user=outsider, **router_fields())
    answer = browser_for(outsider).post(
        f"/routers/{theirs.pk}/train/", {"source": f"{setup.evaluation.pk}:exact_match"}
    )
    assert answer.status_code == 400
    assert (
        "No such evaluation"
        in BeautifulSoup(answer.content, "html.parser").select_one("#error-source").get_text()
    )
    assert not RouterTraining.objects.exists()


# --- Training and versions ----------------------------------------------------------------------------------


def test_training_from_the_page_starts_it_and_shows_its_progress_until_it_ends(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    client = browser_for(owner)
    offered = [o["value"] for o in page(client, f"/routers/{router.pk}/").select("#id-source option")]
    assert f"{setup.evaluation.pk}:exact_match" in offered
    answer = client.post(f"/routers/{router.pk}/train/", {"source": f"{setup.evaluation.pk}:exact_match"})
    assert answer.status_code == 302
    training = RouterTraining.objects.get(router=router)
    RouterTraining.objects.filter(pk=training.pk).update(
        status=TrainingStatus.RUNNING, progress=0.4, status_message="Embedded 32 of 80 prompts."
    )
    soup = page(client, f"/routers/{router.pk}/")
    progress = soup.select_one("#training-progress")
    assert progress is not None and "Embedded 32 of 80 prompts." in progress.get_text()
    assert progress.select_one('[role="progressbar"]')["aria-valuenow"] == "40"
    assert soup.select_one('meta[http-equiv="refresh"]') is not None
    assert soup.select_one("#train-router button")["disabled"] is not None

    RouterTraining.objects.filter(pk=training.pk).update(status=TrainingStatus.PENDING, lease_until=None)
    assert router_training.run(training.pk) == TrainingStatus.SUCCEEDED
    soup = page(client, f"/routers/{router.pk}/")
    assert (
        soup.select_one("#training-progress") is None
        and soup.select_one('meta[http-equiv="refresh"]') is None
    )
    assert "Succeeded" in soup.select_one("#trainings").get_text()


@pytest.mark.parametrize("source", ["", "abc", "12", "0:exact_match", "999999:exact_match"])
def test_a_training_without_a_usable_evaluation_is_refused_naming_the_source(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, source: str
) -> None:
    answer = browser_for(owner).post(f"/routers/{router.pk}/train/", {"source": source})
    assert answer.status_code == 400
    assert BeautifulSoup(answer.content, "html.parser").select_one("#error-source") is not None
    assert not RouterTraining.objects.exists()


def test_a_training_on_a_scorer_the_evaluation_lacks_is_refused_naming_the_source(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    answer = browser_for(owner).post(
        f"/routers/{router.pk}/train/", {"source": f"{setup.evaluation.pk}:judge"}
    )
    assert answer.status_code == 400
    error = BeautifulSoup(answer.content, "html.parser").select_one("#error-source")
    assert error is not None and "has no scorer 'judge'" in error.get_text()


def test_a_trained_report_draws_quality_against_cost_over_tau_beside_the_baselines(
    browser_for: BrowserFor, member: AbstractUser, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    trained(router, setup, owner)
    version = RouterVersion.objects.get(router=router)
    soup = page(browser_for(member), f"/routers/{router.pk}/")
    chart = soup.select_one("svg#router-tradeoff")
    assert chart is not None
    names = [g["data-series"] for g in chart.select("g.series")]
    assert names == [f"v{version.version} word n-grams", "random mix"]
    predictor = chart.select_one("g.series")
    assert len(predictor.select("polyline")[0]["points"].split()) == len(version.report["curve"]) == 21
    assert predictor.select_one("circle.at-tau") is not None  # the router's τ is marked
    baselines = [g.get_text(" ", strip=True) for g in chart.select("g.baseline")]
    assert any("always cheapest (small)" in b for b in baselines)
    assert any("always fallback (large)" in b for b in baselines)


def test_a_trained_report_shows_shares_quality_retained_and_cost_saved_with_intervals_and_apgr(
    browser_for: BrowserFor, member: AbstractUser, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    trained(router, setup, owner)
    report = RouterVersion.objects.get(router=router).report
    at = report["at_tau"]
    soup = page(browser_for(member), f"/routers/{router.pk}/")
    shares = {
        li.select_one(".bar-label").get_text(strip=True): li.select_one(".bar")["aria-valuenow"]
        for li in soup.select("#router-shares li")
    }
    assert shares == {
        "small": str(round(at["shares"]["small"] * 100, 1)),
        "large (fallback)": str(round(at["shares"]["large"] * 100, 1)),
    }
    retained = soup.select_one("#quality-retained").get_text(" ", strip=True)
    low, high = at["quality_retained_ci95"]
    assert f"{at['quality_retained'] * 100:.1f}%" in retained
    assert f"95% interval {low * 100:.1f}% to {high * 100:.1f}%" in retained
    assert f"{at['cost_saved'] * 100:.1f}%" in soup.select_one("#cost-saved").get_text()
    assert soup.select_one("#apgr").get_text(strip=True) == str(report["gap_recovered"]["apgr"])
    assert soup.select_one("svg#router-gap") is not None


def test_the_report_of_a_predictor_is_drawn_beside_the_others_of_its_training(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    router.embedding_deployment = "large"
    router.save()

    async def embed(texts: list[str]) -> list[list[float]]:
        return [[float(any(c.isdigit() for c in t)), len(t.split()) / 20] for t in texts]

    training = router_training.start_training(
        router=router, evaluation=setup.evaluation, scorer="exact_match", user=owner
    )
    assert router_training.run(training.pk, embed=embed) == TrainingStatus.SUCCEEDED
    chart = page(browser_for(owner), f"/routers/{router.pk}/").select_one("svg#router-tradeoff")
    names = [g["data-series"] for g in chart.select("g.series")]
    assert len(names) == 3 and "random mix" in names
    assert any("n-grams" in n for n in names) and any("prompt embedding" in n for n in names)


def test_an_owner_activates_a_version_from_the_page_and_the_router_says_what_it_does(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    trained(router, setup, owner)
    version = RouterVersion.objects.get(router=router)
    client = browser_for(owner)
    answer = client.post(f"/routers/{router.pk}/activate/", {"version": str(version.version)})
    assert answer.status_code == 302
    router.refresh_from_db()
    assert router.active_version == version
    state = page(client, answer["Location"]).select_one("#router-state").get_text(" ", strip=True)
    assert "Shadow mode" in state and f"version {version.version}" in state

    assert client.post(f"/routers/{router.pk}/activate/", {"version": "none"}).status_code == 302
    router.refresh_from_db()
    assert router.active_version is None


@pytest.mark.parametrize("version", ["", "abc", "99", "-1"])
def test_activating_a_version_that_does_not_exist_is_refused_naming_the_version(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, version: str
) -> None:
    answer = browser_for(owner).post(f"/routers/{router.pk}/activate/", {"version": version})
    assert answer.status_code == 400
    assert BeautifulSoup(answer.content, "html.parser").select_one("#error-version") is not None


def test_a_member_reads_the_report_but_cannot_train_or_activate(
    browser_for: BrowserFor, member: AbstractUser, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    trained(router, setup, owner)
    version = RouterVersion.objects.get(router=router)
    client = browser_for(member)
    soup = page(client, f"/routers/{router.pk}/")
    assert soup.select_one("svg#router-tradeoff") is not None
    assert soup.select_one("#train-router") is None and soup.select_one("#versions form") is None
    refused = client.post(f"/routers/{router.pk}/activate/", {"version": str(version.version)})
    assert refused.status_code == 403 and "ask one of them" in refused.content.decode()
    assert (
        client.post(
            f"/routers/{router.pk}/train/", {"source": f"{setup.evaluation.pk}:exact_match"}
        ).status_code
        == 403
    )
    assert client.post(f"/routers/{router.pk}/settings/", {"quality_difference": "90"}).status_code == 403
    router.refresh_from_db()
    assert router.active_version is None and router.quality_difference == 0.1
    assert RouterTraining.objects.count() == 1


# --- Changing τ, mode and shadow calls ----------------------------------------------------------------------


def test_an_owner_changes_tau_mode_and_shadow_calls(
    browser_for: BrowserFor, owner: AbstractUser, router: Router
) -> None:
    form = {
        "quality_difference": "25",
        "mode": "active",
        "shadow_rate": "10",
        "shadow_tokens_per_day": "5000",
    }
    answer = browser_for(owner).post(f"/routers/{router.pk}/settings/", form)
    assert answer.status_code == 302
    router.refresh_from_db()
    assert (router.quality_difference, router.mode, router.shadow_rate, router.shadow_tokens_per_day) == (
        0.25, "active", 0.1, 5000,
    )  # fmt: skip


def test_an_owner_changes_the_fallback_and_a_cost_override_and_clears_another(
    browser_for: BrowserFor, owner: AbstractUser, router: Router
) -> None:
    client = browser_for(owner)
    form = page(client, f"/routers/{router.pk}/").select_one("#router-settings")
    assert form.select_one("#id-cost-small")["value"] == "0.001"
    answer = client.post(
        f"/routers/{router.pk}/settings/", {"fallback": "small", "cost-small": "", "cost-large": "0.02"}
    )
    assert answer.status_code == 302
    router.refresh_from_db()
    assert router.fallback == "small"
    assert router.candidates == [
        {"deployment": "small", "cost_per_1k_tokens": None},
        {"deployment": "large", "cost_per_1k_tokens": 0.02},
    ]


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"fallback": "nowhere"}, "fallback"),
        ({"cost-large": "lots"}, "cost-large"),
        ({"mode": "loud"}, "mode"),
        ({"shadow_rate": "x"}, "shadow_rate"),
        ({"shadow_tokens_per_day": "1.5"}, "shadow_tokens_per_day"),
    ],
)
def test_malformed_settings_are_refused_naming_the_field_and_change_nothing(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, form: dict[str, str], field: str
) -> None:
    answer = browser_for(owner).post(f"/routers/{router.pk}/settings/", {"quality_difference": "30", **form})
    assert answer.status_code == 400
    assert BeautifulSoup(answer.content, "html.parser").select_one(f"#error-{field}") is not None
    router.refresh_from_db()
    assert router.quality_difference == 0.1 and router.mode == "shadow" and router.fallback == "large"
    assert router.candidates[1]["cost_per_1k_tokens"] is None


# --- Live traffic -------------------------------------------------------------------------------------------


def usage(organization: Organization, router: str, served: str, chosen: str, tokens: int = 1000) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, organization=organization,
        deployment=Deployment.objects.get(organization=organization, name=served), model=router,
        route="chat.completions", prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2,
        status_code=200, router=router, router_choice=chosen, created_at=timezone.now(),
    )  # fmt: skip


def test_shadow_decisions_on_live_traffic_show_each_candidates_share_and_what_switching_on_would_save(
    browser_for: BrowserFor, member: AbstractUser, router: Router, setup: Setup
) -> None:
    large = router_service.candidate_costs(router)["large"]
    assert large is not None
    for chosen in ("small", "small", "small", "large"):
        usage(setup.organization, "auto", "large", chosen)
    soup = page(browser_for(member), f"/routers/{router.pk}/")
    rows = {
        r.th.get_text(strip=True): r.get_text(" ", strip=True)
        for r in soup.select("#live-decisions tbody tr")
    }
    assert "3 (75%)" in rows["small"] and rows["small"].split()[-2] == "0"  # chosen 3 times, answered none
    assert "1 (25%)" in rows["large"] and rows["large"].split()[-2] == "4"
    served, would = 4 * large, 3 * 0.001 + large
    summary = soup.select_one("#live-summary").get_text(" ", strip=True)
    assert f"${served:.6f}" in summary and f"${would:.6f}" in summary
    assert f"{round((1 - would / served) * 100)}% saved" in summary
    assert "what switching it on would do" in summary


def test_live_decisions_count_only_this_routers_calls_of_this_organisation_in_the_last_30_days(
    router: Router, setup: Setup, globex: Organization
) -> None:
    usage(setup.organization, "auto", "large", "small")
    usage(setup.organization, "other", "large", "small")  # another router of the organisation
    UsageRecord.objects.create(
        request_id="old", organization=setup.organization, model="auto", route="chat.completions",
        status_code=200, router="auto", router_choice="small",
        created_at=timezone.now() - datetime.timedelta(days=31),
    )  # fmt: skip
    make_deployment(globex, "large")
    usage(globex, "auto", "large", "small")
    live = router_chart.live_decisions(router, router_service.candidate_costs(router))
    assert live.calls == 1
    assert {row.deployment: (row.chosen, row.served) for row in live.rows} == {
        "small": (1, 0),
        "large": (0, 1),
    }


def test_a_router_without_calls_says_so(
    browser_for: BrowserFor, member: AbstractUser, router: Router
) -> None:
    summary = page(browser_for(member), f"/routers/{router.pk}/").select_one("#live-summary").get_text()
    assert re.search(r"No calls through auto in the last 30 days", summary)


# --- Queries ------------------------------------------------------------------------------------------------


def queries(client: Client, path: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(path).status_code == 200
    return len(captured)


def test_the_router_pages_make_as_many_queries_with_many_trainings_versions_and_routers_as_with_one(
    browser_for: BrowserFor, owner: AbstractUser, router: Router, setup: Setup
) -> None:
    client = browser_for(owner)
    trained(router, setup, owner)
    usage(setup.organization, "auto", "large", "small")
    for path in (f"/routers/{router.pk}/", "/routers/"):  # what pages cache on a first visit is not the point
        client.get(path)
    detail, listing = queries(client, f"/routers/{router.pk}/"), queries(client, "/routers/")
    for _ in range(2):
        trained(router, setup, owner)
        usage(setup.organization, "auto", "small", "small")
    for index in range(4):
        router_service.create_router(
            organization=setup.organization, user=owner, **router_fields(name=f"r{index}")
        )
    assert RouterVersion.objects.filter(router=router).count() == 3
    assert queries(client, f"/routers/{router.pk}/") == detail
    assert queries(client, "/routers/") == listing
