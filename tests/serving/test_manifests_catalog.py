"""Every catalog card that fits, on a spread of instance types, under every autoscaling policy, renders
objects that pass `kubernetes-validate --strict` for Kubernetes 1.29 and 1.37 (and KEDA's CRD schema
for ScaledObjects, in test_manifests.py's validator)."""

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest

from marketplace.catalog.models import InstanceType, ModelCard
from serving import manifests
from serving.choices import AutoscalingPolicy
from serving.spec import Autoscaling, ClusterSettings, DeploymentSpec, InstanceSpec, ModelSpec

pytestmark = pytest.mark.django_db
VERSIONS = ("1.29", "1.37")
# One instance type per GPU shape: small single GPU, 4 GPUs, 8 × 80 GB, and an on-premises profile.
SPREAD = ("aws-g6-xlarge", "gcp-g2-standard-48", "azure-nd96isr-h100-v5", "onprem-8xa100-80gb")


@pytest.fixture(autouse=True)
def _cache_schema_files(monkeypatch: Any) -> None:
    """The library reads its JSON schema files on every call; reading each once keeps the whole catalog
    matrix (thousands of documents) to seconds. Validation itself is the library's, unchanged."""
    monkeypatch.setattr(
        kubernetes_validate.utils,
        "schema_contents",
        functools.cache(kubernetes_validate.utils.schema_contents),
    )


def scaledobject_validator() -> Any:
    path = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.json"
    schema = json.loads(path.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def spec_for(card: ModelCard, instance: InstanceType, policy: str) -> DeploymentSpec:
    from marketplace.catalog import fits

    # `fitting` places a card at its shortest deployable context (its least memory): size the group alike.
    needed = card.min_gpu_memory_gb
    tp = fits.smallest_tensor_parallel_size(needed, instance.gpu_count, instance.gpu_memory_gb)
    assert tp is not None
    minimum = 0 if policy == AutoscalingPolicy.SCALE_TO_ZERO else 1
    return DeploymentSpec(
        deployment_id=card.pk,
        name=card.slug.replace(".", "-")[:40].rstrip("-"),
        organization="catalog-check",
        generation=1,
        model=ModelSpec(
            slug=card.slug, huggingface_repo=card.huggingface_repo, revision=card.revision, gated=card.gated,
            parameters=card.parameters, gpu_memory_gb=card.gpu_memory_gb, context_length=card.context_length,
        ),
        instance=InstanceSpec(
            slug=instance.slug, gpu_count=instance.gpu_count, gpu_memory_gb=instance.gpu_memory_gb,
            gpu_product=instance.gpu_product, vcpu=instance.vcpu, memory_gb=instance.memory_gb,
            node_labels=dict(instance.node_labels),
        ),
        autoscaling=Autoscaling(
            policy=policy, min_replicas=1 if policy == AutoscalingPolicy.FIXED else minimum,
            max_replicas=1 if policy == AutoscalingPolicy.FIXED else 3,
            target=0.8 if policy == AutoscalingPolicy.KV_CACHE else 5.0,
        ),
        tensor_parallel_size=tp,
        engine_options={k: v for k, v in card.engine_defaults.items() if k != "dtype"},
    )  # fmt: skip


def test_every_fitting_card_on_a_spread_of_instance_types_under_every_policy_validates() -> None:
    instances = list(InstanceType.objects.filter(slug__in=SPREAD))
    assert len(instances) == len(SPREAD)
    keda = scaledobject_validator()
    checked, failures = 0, []
    for card in ModelCard.objects.all():
        for instance in InstanceType.objects.fitting(card).filter(slug__in=SPREAD):
            for policy in AutoscalingPolicy.values:
                for cluster in (
                    ClusterSettings(keda=True),
                    ClusterSettings(keda=False, model_cache_pvc="hf"),
                ):
                    if policy == AutoscalingPolicy.SCALE_TO_ZERO and not cluster.keda:
                        continue
                    for manifest in manifests.build_objects(spec_for(card, instance, policy), cluster):
                        where = f"{card.slug} on {instance.slug}, {policy}, {manifest['kind']}"
                        try:
                            if manifest["kind"] == "ScaledObject":
                                keda.validate(manifest)
                            else:
                                for version in VERSIONS:
                                    kubernetes_validate.validate(manifest, version, strict=True)
                        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
                            failures.append(f"{where}: {error}")
                        checked += 1
    assert failures == []
    assert checked > 2000  # the matrix really ran: cards × instance types × policies × objects
