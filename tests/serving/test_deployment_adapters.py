"""Several LoRA adapters on one deployment of their base (vLLM's multi-LoRA serving): chosen at creation or
changed later through /api/deployments/, each called through the gateway as `<deployment>:<name>` on the
deployment's replicas and metered under that name; the engine flags that serve them; and the refusals —
an adapter of another base, something that is not an adapter, another organisation's adapter, a name used
twice, too many — each naming `adapters`. (Served for real by vLLM: tests/learning/test_cpu_trainer.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.services import subscribe
from serving import services
from serving.choices import DeploymentStatus
from serving.gateway import directory
from serving.manifests import engine_args
from serving.models import Deployment
from tests.catalog.custom_model_files import write_adapter, write_model

CUSTOM, DEPLOYMENTS = "/api/custom-models/", "/api/deployments/"


@pytest.fixture
def root(settings: Any, tmp_path: Path, s3_settings: Any) -> Path:
    """A platform on a cluster, whose engines fetch adapters from its object store (a bucket)."""
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path / "models")]
    settings.SERVING_BACKEND = "kubernetes"
    (tmp_path / "models").mkdir()
    write_model(tmp_path / "models" / "tiny-llama")  # a folder another organisation registers
    return tmp_path / "models"


@pytest.fixture
def models(client_for: Any, owner: Any, acme: Any, root: Path) -> dict[str, str]:
    """A catalog base (SmolLM2, subscribed to), two adapters on it, and one on another catalog card: their
    slugs."""
    client = client_for(owner)
    smol = ModelCard.objects.get(slug="smollm2-135m-instruct")
    subscribe(organization=acme, card=smol, license_sha256=None, user=owner)
    slugs = {"base": smol.slug}
    for name, rank in (("alpha", 8), ("beta", 16)):
        folder = write_adapter(root / name, smol.huggingface_repo, rank=rank, width=576)
        body = {"name": name, "source": "adapter", "path": str(folder), "base": slugs["base"]}
        answer = client.post(CUSTOM, body, format="json")
        assert answer.status_code == 201, answer.content
        slugs[name] = answer.json()["slug"]
    qwen = ModelCard.objects.get(slug="qwen2.5-0.5b-instruct")
    folder = write_adapter(root / "qwen-lora", qwen.huggingface_repo, width=896)
    body = {"name": "qwen-lora", "source": "adapter", "path": str(folder), "base": qwen.slug}
    answer = client.post(CUSTOM, body, format="json")
    assert answer.status_code == 201, answer.content
    slugs["other"] = answer.json()["slug"]
    return slugs


def deploy(client: Any, model: str, adapters: list[dict[str, str]]) -> Any:
    body = {"name": "mine", "model": model, "instance_type": "aws-g5-xlarge", "adapters": adapters}
    return client.post(DEPLOYMENTS, body, format="json")


def test_a_base_deployment_serves_several_adapters_each_by_its_own_name(client_for, owner, models) -> None:
    answer = deploy(client_for(owner), models["base"], [
        {"name": "support", "model": models["alpha"]}, {"name": "legal", "model": models["beta"]},
    ])  # fmt: skip
    assert answer.status_code == 201, answer.content
    assert answer.json()["adapters"] == [
        {"name": "legal", "model": models["beta"], "served_name": "mine:legal"},
        {"name": "support", "model": models["alpha"], "served_name": "mine:support"},
    ]
    spec = services.spec_for(Deployment.objects.get(name="mine"))
    args = engine_args(spec, ())
    paths = {adapter.served_name: adapter.path for adapter in spec.adapters}
    start = args.index("--lora-modules")
    assert args[start : start + 3] == [
        "--lora-modules", f"mine:legal={paths['mine:legal']}", f"mine:support={paths['mine:support']}",
    ]  # fmt: skip
    # the largest rank (16) sets the slot size; both adapters may share a batch
    assert args[args.index("--max-lora-rank") + 1] == "16" and args[args.index("--max-loras") + 1] == "2"
    assert args[args.index("--served-model-name") + 1] == "mine"  # the base keeps the deployment's name


def test_the_gateway_calls_each_adapter_on_the_deployments_replicas_and_a_scoped_key_reaches_them(
    client_for, owner, acme, models
) -> None:
    support = [{"name": "support", "model": models["alpha"]}]
    assert deploy(client_for(owner), models["base"], support).status_code == 201
    row = Deployment.objects.get(name="mine")
    Deployment.objects.filter(pk=row.pk).update(
        status=DeploymentStatus.READY, endpoints=["http://10.0.0.9:8000"]
    )
    targets = directory._load_targets(acme.pk)
    assert set(targets) == {"mine", "mine:support"}
    adapter = targets["mine:support"]
    assert (adapter.deployment_id, adapter.model_slug, adapter.endpoints) == (
        row.pk, models["alpha"], ("http://10.0.0.9:8000",),
    )  # fmt: skip
    assert adapter.routes == targets["mine"].routes
    only_mine = frozenset({"mine"})
    scoped = directory.Caller(key_id=1, organization_id=acme.pk, allowed_deployments=only_mine, limits=None)  # type: ignore[arg-type]
    assert scoped.may_call("mine:support") and not scoped.may_call("yours:support")


@pytest.mark.parametrize(
    ("adapters", "words"),
    [
        (
            [{"name": "x", "model": "other"}],
            "was trained on Qwen2.5 0.5B Instruct, and this deployment serves SmolLM2 135M Instruct's "
            "weights",
        ),
        ([{"name": "x", "model": "base"}], "is not one of your LoRA adapters"),
        ([{"name": "x", "model": "qwen2.5-0.5b-instruct"}], "is not one of your LoRA adapters"),
        ([{"name": "x", "model": "alpha"}, {"name": "x", "model": "beta"}], "two adapters are named x"),
        ([{"name": f"a{i}", "model": "alpha"} for i in range(17)], "At most 16 adapters"),
    ],
    ids=["another-base", "not-an-adapter", "a-catalog-card", "a-name-twice", "too-many"],
)
def test_an_adapter_the_deployment_cannot_serve_is_refused_naming_adapters(
    client_for, owner, models, adapters, words
) -> None:
    adapters = [{**adapter, "model": models.get(adapter["model"], adapter["model"])} for adapter in adapters]
    answer = deploy(client_for(owner), models["base"], adapters)
    assert answer.status_code == 400, answer.content
    assert words in answer.json()["adapters"][0]
    assert not Deployment.objects.filter(name="mine").exists()


@pytest.mark.parametrize(
    ("adapter", "field"),
    [({"model": "x"}, "name"), ({"name": "Bad Name", "model": "x"}, "name"), ({"name": "ok"}, "model")],
)
def test_a_malformed_adapter_entry_names_its_field(client_for, owner, models, adapter, field) -> None:
    answer = deploy(client_for(owner), models["base"], [adapter])
    assert answer.status_code == 400 and field in answer.json()["adapters"]["0"]  # the entry, then its field


def test_an_outsider_cannot_serve_another_organisations_adapter(client_for, outsider, models, root) -> None:
    client = client_for(outsider)
    body = {"name": "theirs", "source": "path", "path": str(root / "tiny-llama")}
    base = client.post(CUSTOM, body, format="json")
    assert base.status_code == 201, base.content
    answer = deploy(client, base.json()["slug"], [{"name": "stolen", "model": models["alpha"]}])
    nowhere = deploy(client, base.json()["slug"], [{"name": "stolen", "model": "custom-nowhere"}])
    assert (answer.status_code, nowhere.status_code) == (400, 400)
    # the same answer as for a slug that exists nowhere: another organisation's adapter is not even seen
    [unknown] = nowhere.json()["adapters"]["0"]["model"]
    assert "custom-nowhere" in unknown
    assert answer.json() == {
        "adapters": {"0": {"model": [unknown.replace("custom-nowhere", models["alpha"])]}}
    }


def test_changing_the_adapters_rolls_out_a_new_generation_and_the_same_ones_do_not(client_for, owner, models):
    client = client_for(owner)
    created = deploy(client, models["base"], [{"name": "support", "model": models["alpha"]}]).json()

    def patch(name: str, model: str) -> Any:
        return client.patch(url, {"adapters": [{"name": name, "model": models[model]}]}, format="json")

    url = f"{DEPLOYMENTS}{created['id']}/"
    same = patch("support", "alpha")
    assert same.status_code == 200 and same.json()["generation"] == created["generation"]
    changed = patch("legal", "beta")
    assert changed.status_code == 200, changed.content
    assert changed.json()["generation"] == created["generation"] + 1
    assert [adapter["served_name"] for adapter in changed.json()["adapters"]] == ["mine:legal"]
    refused = patch("x", "other")
    assert refused.status_code == 400 and "was trained on" in refused.json()["adapters"][0]
    assert [a.name for a in Deployment.objects.get(pk=created["id"]).adapters.all()] == ["legal"]
    none = client.patch(url, {"adapters": []}, format="json")
    assert none.status_code == 200 and none.json()["adapters"] == []


def test_an_adapter_a_live_deployment_serves_cannot_be_deleted(client_for, owner, models) -> None:
    client = client_for(owner)
    assert deploy(client, models["base"], [{"name": "support", "model": models["alpha"]}]).status_code == 201
    adapter_id = next(m["id"] for m in client.get(CUSTOM).json()["results"] if m["slug"] == models["alpha"])
    answer = client.delete(f"{CUSTOM}{adapter_id}/")
    assert answer.status_code == 409 and "still runs in deployment mine" in answer.json()["name"][0]


def test_an_adapters_deployment_serves_more_adapters_of_the_same_base(client_for, owner, models) -> None:
    answer = deploy(client_for(owner), models["alpha"], [{"name": "legal", "model": models["beta"]}])
    assert answer.status_code == 201, answer.content
    args = engine_args(services.spec_for(Deployment.objects.get(name="mine")), ())
    modules = args[args.index("--lora-modules") + 1 : args.index("--max-lora-rank")]
    assert [module.split("=")[0] for module in modules] == ["mine", "mine:legal"]
    assert args[args.index("--served-model-name") + 1] == "mine-base"


def test_an_outsider_does_not_see_a_deployments_adapters(client_for, owner, outsider, globex, models) -> None:
    created = deploy(client_for(owner), models["base"], [{"name": "support", "model": models["alpha"]}])
    Deployment.objects.filter(name="mine").update(
        status=DeploymentStatus.READY, endpoints=["http://10.0.0.9:8000"]
    )
    assert client_for(outsider).get(f"{DEPLOYMENTS}{created.json()['id']}/").status_code == 404
    assert directory._load_targets(globex.pk) == {}


def test_the_deployment_page_lists_each_adapter_by_the_name_apps_call(client_for, owner, outsider, models):
    created = deploy(client_for(owner), models["base"], [{"name": "support", "model": models["alpha"]}])
    page = Client()
    page.force_login(owner)
    html = page.get(f"/deployments/{created.json()['id']}/").content.decode()
    assert 'id="adapters"' in html and '<code>mine:support</code>: <a href="/custom-models/' in html
    page.force_login(outsider)
    assert page.get(f"/deployments/{created.json()['id']}/").status_code == 404
