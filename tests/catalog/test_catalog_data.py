"""The shipped catalog: enough real models and instance types, and the coverage the product promises."""

from collections import Counter

import pytest

from marketplace.catalog.loader import read_catalog
from marketplace.catalog.models import InstanceType, ModelCard, Provider

pytestmark = pytest.mark.django_db


def test_at_least_100_cards_from_30_providers() -> None:
    assert ModelCard.objects.count() >= 100
    assert Provider.objects.filter(models__isnull=False).distinct().count() >= 30


@pytest.mark.parametrize(
    "task",
    [
        "chat",
        "text-generation",
        "code-generation",
        "embedding",
        "reranking",
        "vision-language",
        "translation",
    ],
)
def test_every_kind_of_model_is_present(task: str) -> None:
    assert ModelCard.objects.filter(tasks__contains=[task]).count() >= 2


@pytest.mark.parametrize("domain", ["finance", "legal", "medical", "science", "code"])
def test_every_domain_has_a_model(domain: str) -> None:
    assert ModelCard.objects.filter(domains__contains=[domain]).exists()


def test_multilingual_models_are_present() -> None:
    multilingual = [card for card in ModelCard.objects.all() if len(card.languages) >= 5]
    assert len(multilingual) >= 10


def test_the_two_small_models_are_cpu_capable_and_nothing_else_is() -> None:
    cpu = set(ModelCard.objects.filter(cpu_capable=True).values_list("huggingface_repo", flat=True))
    assert cpu == {"HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"}


def test_instance_types_cover_three_clouds_and_on_premises() -> None:
    assert InstanceType.objects.count() >= 15
    providers = Counter(InstanceType.objects.values_list("provider", flat=True))
    for provider in ("aws", "gcp", "azure", "on-prem"):
        assert providers[provider] >= 1, provider


def test_gpu_instance_types_carry_the_labels_that_select_them() -> None:
    for instance_type in InstanceType.objects.filter(gpu_count__gt=0):
        assert instance_type.node_labels.get("nvidia.com/gpu.product") == instance_type.gpu_product
        assert instance_type.node_labels.get("node.kubernetes.io/instance-type")
        assert instance_type.price_source and instance_type.price_as_of


def test_repo_ids_are_unique() -> None:
    repos = Counter(card.huggingface_repo for p in read_catalog().providers for card in p.models)
    assert [repo for repo, n in repos.items() if n > 1] == []
