"""Which instance types a model fits, on how many GPUs and at what context, whether this platform can run
it there, and what it costs: the rows of the model page's table and of the deploy form's instance picker."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import Q

from marketplace.catalog import fits
from marketplace.catalog.choices import BYTES_PER_PARAMETER, UNSERVABLE_OUTPUTS
from marketplace.catalog.models import InstanceType, ModelCard
from serving.choices import Backend


def _reason(card: ModelCard, instance: InstanceType, needed_gb: int, tokens: int) -> str:
    if instance.gpu_count == 0:
        return "The model cannot run on CPU."
    return (
        f"Needs {needed_gb} GB of GPU memory at {tokens:,} tokens; "
        f"offers {instance.tensor_parallel_memory_gb} GB."
    )


def _instances(instance_types: Iterable[InstanceType] | None) -> list[InstanceType]:
    return list(InstanceType.objects.all() if instance_types is None else instance_types)


def deployable_here(card: ModelCard, instance_types: Iterable[InstanceType] | None = None) -> bool:
    """Whether this platform can run `card` on at least one instance type: on the local backend the
    engines run on this machine's CPU, so the card must run on CPU; on Kubernetes it must fit a GPU
    instance type. Pass the instance types when asking for many cards (one query instead of one each)."""
    return why_not_here(card, instance_types) is None


def servable_q() -> Q:
    """ModelCard.servable as a query (the cards the pinned engine can serve), for lists and facets."""
    return ~Q(modalities_out__overlap=list(UNSERVABLE_OUTPUTS)) & Q(engine_unsupported="")


def why_not_here(card: ModelCard, instance_types: Iterable[InstanceType] | None = None) -> str | None:
    """None when `card` can be deployed here, else why not, in a sentence for a person (no setting names):
    first whether the engine can serve the card at all, then whether this platform's machines hold it."""
    if not card.servable:
        return card.not_servable_reason
    instances = _instances(instance_types)
    if settings.SERVING_BACKEND == Backend.LOCAL:
        if not card.cpu_capable:
            return (
                f"{card.name} needs a GPU (about {card.gpu_memory_gb} GB of GPU memory), and this platform "
                "runs models on its own machine, which has no GPU."
            )
        if not any(instance.gpu_count == 0 for instance in instances):
            return "This platform runs models on its own machine, but offers no CPU instance type for them."
        return None
    gpu_instances = [instance for instance in instances if instance.gpu_count > 0]
    if any(card.placement(instance).fits for instance in gpu_instances):
        return None
    largest = max((instance.tensor_parallel_memory_gb for instance in gpu_instances), default=0)
    return (
        f"{card.name} needs about {card.min_gpu_memory_gb} GB of GPU memory; the largest instance type of "
        f"this platform offers {largest} GB."
    )


def instance_rows(card: ModelCard, *, min_replicas: int = 1, max_replicas: int = 1) -> list[dict[str, Any]]:
    """Every instance type, those the model fits and this platform can use first, cheapest first.

    Each row says on how many GPUs the model runs there and at what max model length (the card's
    default context, or the longest that fits when the instance cannot hold it; see fits.place)."""
    local = settings.SERVING_BACKEND == Backend.LOCAL
    rows = []
    for instance in InstanceType.objects.order_by("hourly_price_usd", "gpu_count"):
        if instance.gpu_count == 0:
            # What this machine's CPU engine serves: its KV cache space may hold less than the default.
            fitted, tensor_parallel_size = card.cpu_capable, None
            max_model_len = fits.cpu_context(card.facts) if fitted else None
            needed = fits.estimate(card.facts)
        else:
            placement = card.placement(instance)
            fitted, tensor_parallel_size = placement.fits, placement.tensor_parallel_size
            max_model_len = placement.max_model_len if fitted else None
            needed = placement.estimate
        usable = fitted and (instance.gpu_count == 0) == local
        if not fitted:
            reason = _reason(card, instance, needed.needed_gb, needed.tokens)
        elif not usable:
            reason = (
                "This platform runs deployments on this machine, which has no GPUs."
                if local
                else "Kubernetes deployments need a GPU instance."
            )
        else:
            reason = ""
        rows.append(
            {
                "instance": instance,
                "fits": fitted,
                "usable": usable,
                "reason": reason,
                "tensor_parallel_size": tensor_parallel_size,
                "max_model_len": max_model_len,
                "max_model_len_text": f"{max_model_len:,}" if max_model_len else "",
                "shortened": max_model_len is not None and max_model_len < card.facts.default_context,
                "price": instance.hourly_price_usd,
                "cost_min": instance.hourly_price_usd * min_replicas,
                "cost_max": instance.hourly_price_usd * max_replicas,
                # A replica rents the whole instance, however few of its GPUs the model needs.
                "idle_gpus": (
                    instance.gpu_count - tensor_parallel_size
                    if fitted and tensor_parallel_size and tensor_parallel_size < instance.gpu_count
                    else 0
                ),
            }
        )
    # By the price of an instance-hour, not of `min_replicas` of them (all free at zero replicas).
    rows.sort(key=lambda row: (not row["usable"], not row["fits"], row["price"]))
    return rows


def cheapest_fit(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row to recommend: the cheapest instance type the model fits that this platform can deploy
    on, else the cheapest it fits anywhere (`usable` False says it needs another platform); None when it
    fits nowhere. `rows` as instance_rows orders them."""
    for wanted in (True, False):
        for row in rows:
            if row["fits"] and row["usable"] == wanted:
                return row
    return None


def memory_arithmetic(card: ModelCard) -> dict[str, Any]:
    """The model page's worked estimate of GPU memory at the card's default context (see fits.py)."""
    estimate = fits.estimate(card.facts)
    gb = fits.GB
    return {
        "stated": estimate.stated,
        "tokens": estimate.tokens,
        "tokens_text": f"{estimate.tokens:,}",
        "parameters_text": f"{card.parameters:,}",
        "bytes_per_parameter": BYTES_PER_PARAMETER[card.facts.serving_dtype],
        "weights_gb": f"{estimate.weights_bytes / gb:.2f}",
        "kv_bytes_per_token": estimate.kv_bytes_per_token,
        "kv_kib_per_token": f"{estimate.kv_bytes_per_token / 1024:g}",
        "kv_gb": f"{estimate.kv_bytes / gb:.2f}",
        "kv_gib": f"{estimate.kv_bytes / 2**30:.2f}",
        "reserve_gb": f"{estimate.reserve_bytes / gb:.2f}",
        "subtotal_gb": f"{estimate.subtotal_bytes / gb:.2f}",
        "needed_gb": estimate.needed_gb,
    }
