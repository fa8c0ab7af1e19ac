"""The context a card and a deployment page show is the one the engine runs with: on this machine's CPU
engines the longest whose KV cache fits the engine's cache space (SmolLM2 135M keeps its whole 8K), and a
deployment records and shows the max model length its engine is started with."""

from __future__ import annotations

from marketplace.catalog import fits
from marketplace.catalog.models import InstanceType, ModelCard
from serving import services
from serving.backends import local
from serving.local import engine_env
from tests.web.conftest import make_deployment

SMALL = "smollm2-135m-instruct"


def test_the_cpu_cache_space_is_the_one_the_engines_are_given(tmp_path) -> None:
    environment = engine_env.engine_environment(tmp_path, tmp_path)
    assert environment["VLLM_CPU_KVCACHE_SPACE"] == str(fits.CPU_KV_CACHE_GIB)


def test_smollm2_on_cpu_gets_the_8k_context_its_card_states(db) -> None:
    card = ModelCard.objects.get(slug=SMALL)
    assert card.context_length == 8192 and fits.cpu_context(card.facts) == 8192
    cpu = InstanceType.objects.get(slug="local-cpu")
    assert services.default_max_model_len(card, cpu, 1, {}) == {"max_model_len": 8192}


def test_a_cache_too_small_for_the_whole_context_gives_the_longest_that_fits(db) -> None:
    # 24 layers × 32 KV heads × 64 head size: 192 KiB a token in 16 bits, 384 KiB in float32.
    facts = fits.ModelFacts(
        parameters=1_710_000_000, context_length=8192, layers=24, kv_heads=32, head_dim=64
    )
    assert fits.cpu_context(facts) == 2048  # 1 GiB ÷ 384 KiB = 2,730 tokens, in steps of 1,024


def test_a_chosen_max_model_len_is_kept(db) -> None:
    card = ModelCard.objects.get(slug=SMALL)
    cpu = InstanceType.objects.get(slug="local-cpu")
    assert services.default_max_model_len(card, cpu, 1, {"max_model_len": 1024}) == {"max_model_len": 1024}


def test_the_model_page_gives_the_cpu_row_its_context(client, db) -> None:
    row = client.get(f"/models/{SMALL}/").text.split(">This machine (CPU) <")[1].split("</tr>")[0]
    assert "8,192 tokens" in row and "the longest that fits" not in row


def test_the_deploy_form_does_not_promise_the_cards_context(browser_for, owner, acme, settings) -> None:
    from marketplace.subscriptions.services import subscribe

    settings.SERVING_BACKEND = "local"
    subscribe(organization=acme, card=ModelCard.objects.get(slug=SMALL), license_sha256=None, user=owner)
    page = browser_for(owner).get("/deployments/new/", {"model": SMALL}).text
    assert 'placeholder="8192"' not in page and "up to 8,192 tokens" in page


def test_the_deployment_page_shows_the_length_its_engine_runs_with(browser_for, member, acme) -> None:
    gpu = make_deployment(acme, engine_options={"max_model_len": 14336})
    assert '<span id="max-model-len">14,336</span>' in browser_for(member).get(f"/deployments/{gpu.pk}/").text
    older = make_deployment(acme, name="older", model=SMALL, instance_type="local-cpu")
    older.backend = "local"
    older.save(update_fields=["backend"])
    shown = browser_for(member).get(f"/deployments/{older.pk}/").text
    assert (
        f'<span id="max-model-len">{local.LOCAL_MAX_MODEL_LEN:,}</span>' in shown
    )  # recorded before lengths were


def test_outsider_sees_no_deployment_length(browser_for, outsider, acme) -> None:
    deployment = make_deployment(acme, engine_options={"max_model_len": 14336})
    response = browser_for(outsider).get(f"/deployments/{deployment.pk}/")
    assert response.status_code == 404 and "14,336" not in response.text
