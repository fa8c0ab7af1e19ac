"""Whether a model fits an instance type: the rule, and the filters that apply it both ways."""

import pytest
from rest_framework.test import APIClient

from marketplace.catalog import fits
from marketplace.catalog.models import InstanceType, ModelCard


def fits_rule(card: ModelCard, instance_type: InstanceType) -> bool:
    """The rule itself: a CPU instance fits CPU-capable cards; a GPU instance fits a card that some
    tensor-parallel group holds at least at its shortest deployable context."""
    if instance_type.gpu_count == 0:
        return card.cpu_capable
    return card.placement(instance_type).fits


def test_memory_needed_without_layer_facts_is_weights_plus_a_fifth_plus_two_gigabytes() -> None:
    # 8.03B parameters in 16 bits: 16.06 GB of weights; × 1.2 + 2 = 21.27 → 22 GB.
    assert fits.required_gpu_memory_gb(8_030_000_000, "bfloat16") == 22
    assert fits.required_gpu_memory_gb(8_030_000_000, "auto") == 22
    assert fits.required_gpu_memory_gb(1_000_000_000, "float32") == 7


@pytest.mark.parametrize(("gpus", "widest"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 4), (6, 4), (8, 8)])
def test_tensor_parallel_groups_are_powers_of_two(gpus: int, widest: int) -> None:
    assert fits.largest_power_of_two_at_most(gpus) == widest


def test_smallest_tensor_parallel_size() -> None:
    assert fits.smallest_tensor_parallel_size(22, 4, 24) == 1
    assert fits.smallest_tensor_parallel_size(40, 4, 24) == 2
    assert fits.smallest_tensor_parallel_size(90, 4, 24) == 4
    assert fits.smallest_tensor_parallel_size(97, 4, 24) is None
    # Three GPUs offer 72 GB, but tensor parallelism needs a power of two: only 48 GB usable.
    assert fits.smallest_tensor_parallel_size(60, 3, 24) is None


def test_cpu_instances_fit_only_cpu_capable_models() -> None:
    assert fits.fits(needed_gb=1, cpu_capable=True, gpu_count=0, gpu_memory_gb=0)
    assert not fits.fits(needed_gb=1, cpu_capable=False, gpu_count=0, gpu_memory_gb=0)


@pytest.mark.django_db
def test_filters_agree_with_the_rule_both_ways() -> None:
    """For every pair in the real catalog, `models?fits=` and `instance-types?fits=` agree with the rule."""
    cards = list(ModelCard.objects.all())
    instance_types = list(InstanceType.objects.all())
    for instance_type in instance_types:
        expected = {c.slug for c in cards if fits_rule(c, instance_type)}
        assert set(ModelCard.objects.fitting(instance_type).values_list("slug", flat=True)) == expected
    for card in cards:
        expected = {t.slug for t in instance_types if fits_rule(card, t)}
        assert set(InstanceType.objects.fitting(card).values_list("slug", flat=True)) == expected


@pytest.mark.django_db
def test_a_70b_model_needs_more_than_one_24gb_gpu() -> None:
    client = APIClient()
    answer = client.get("/api/instance-types/", {"fits": "llama-3.1-70b-instruct", "page_size": 100}).json()
    slugs = {row["slug"] for row in answer["results"]}
    assert "aws-g5-xlarge" not in slugs
    assert "aws-p5-48xlarge" in slugs
    small = client.get("/api/models/", {"fits": "aws-g5-xlarge", "page_size": 100}).json()
    assert "llama-3.1-70b-instruct" not in {row["slug"] for row in small["results"]}
    assert "llama-3.1-8b-instruct" in {row["slug"] for row in small["results"]}


@pytest.mark.django_db
def test_model_detail_lists_fitting_instance_types_with_tensor_parallel_size() -> None:
    detail = APIClient().get("/api/models/llama-3.1-70b-instruct/").json()
    by_slug = {fit["instance_type"]: fit for fit in detail["fits"]}
    # 70.6B parameters at 32,768 tokens need 187 GB by the documented formula: four 80 GB GPUs, not two.
    assert by_slug["aws-p5-48xlarge"]["tensor_parallel_size"] == 4
    assert "aws-g5-xlarge" not in by_slug
