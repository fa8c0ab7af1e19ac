"""Which instance types a model fits, on how many GPUs, whether this platform can run it there, and
what it costs: the rows of the model page's table and of the deploy form's instance picker."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from marketplace.catalog import fits
from marketplace.catalog.models import InstanceType, ModelCard
from serving.choices import Backend


def instance_rows(card: ModelCard, *, min_replicas: int = 1, max_replicas: int = 1) -> list[dict[str, Any]]:
    """Every instance type, those the model fits and this platform can use first, cheapest first."""
    local = settings.SERVING_BACKEND == Backend.LOCAL
    rows = []
    for instance in InstanceType.objects.order_by("hourly_price_usd", "gpu_count"):
        fitted = fits.fits(
            needed_gb=card.gpu_memory_gb,
            cpu_capable=card.cpu_capable,
            gpu_count=instance.gpu_count,
            gpu_memory_gb=instance.gpu_memory_gb,
        )
        usable = fitted and (instance.gpu_count == 0) == local
        if not fitted:
            reason = (
                "The model cannot run on CPU."
                if instance.gpu_count == 0
                else f"Needs {card.gpu_memory_gb} GB of GPU memory; "
                f"offers {instance.tensor_parallel_memory_gb} GB."
            )
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
                "tensor_parallel_size": fits.smallest_tensor_parallel_size(
                    card.gpu_memory_gb, instance.gpu_count, instance.gpu_memory_gb
                )
                if instance.gpu_count
                else None,
                "cost_min": instance.hourly_price_usd * min_replicas,
                "cost_max": instance.hourly_price_usd * max_replicas,
            }
        )
    rows.sort(key=lambda row: (not row["usable"], not row["fits"], row["cost_min"]))
    return rows
