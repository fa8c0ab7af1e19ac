"""Every catalog card that fits, on a spread of instance types, under every autoscaling policy, renders
objects that pass `kubernetes-validate --strict` for Kubernetes 1.29 and 1.37 (and KEDA's CRD schema
for ScaledObjects, in test_manifests.py's validator)."""

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
from referencing import Registry, Resource

from marketplace.catalog.models import InstanceType, ModelCard
from serving import manifests
from serving.choices import AutoscalingPolicy
from serving.spec import Autoscaling, ClusterSettings, DeploymentSpec, InstanceSpec, ModelSpec

pytestmark = pytest.mark.django_db
VERSIONS = ("1.29", "1.37")
# One instance type per GPU shape: small single GPU, 4 GPUs, 8 × 80 GB, and an on-premises profile.
SPREAD = ("aws-g6-xlarge", "gcp-g2-standard-48", "azure-nd96isr-h100-v5", "onprem-8xa100-80gb")


@functools.cache
def kubernetes_validator(kind: str, api_version: str, version: str) -> Any:
    """The validator `kubernetes_validate.validate(manifest, version, strict=True)` builds for this kind,
    built once: the library builds it (and re-reads its schema files and lists its schema folders) on
    every call, which made the catalog matrix (thousands of documents) take minutes. The schema, the
    registry of its definitions and the validator class are the library's own choices, unchanged."""
    versions = kubernetes_validate.utils.all_versions()
    chosen = [v for v in versions if kubernetes_validate.utils.major_minor(v) <= version][-1]
    folder = f"kubernetes-json-schema/v{chosen}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kubernetes_validate.utils.schema_contents(
        f"{folder}/{kind.lower()}-{group_version}.json", version
    )
    definitions = kubernetes_validate.utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_cached_validator_is_the_library_s_strict_validation() -> None:
    """Both refuse the same mistake and accept the same object, for both versions."""
    good = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "engine"},
        "spec": {"ports": [{"port": 8000}]},
    }
    bad = {**good, "spec": {"ports": [{"port": 8000, "portt": 1}]}}  # an unknown field: strict refuses it
    for version in VERSIONS:
        kubernetes_validate.validate(good, version, strict=True)
        kubernetes_validator("Service", "v1", version).validate(good)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)
        with pytest.raises(jsonschema.ValidationError):
            kubernetes_validator("Service", "v1", version).validate(bad)


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
                                    kind, api = manifest["kind"], manifest["apiVersion"]
                                    kubernetes_validator(kind, api, version).validate(manifest)
                        except jsonschema.ValidationError as error:
                            failures.append(f"{where}: {error}")
                        checked += 1
    assert failures == []
    assert checked > 2000  # the matrix really ran: cards × instance types × policies × objects
