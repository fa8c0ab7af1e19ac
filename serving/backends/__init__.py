"""Backends run deployments somewhere: `kubernetes` (a cluster) or `local` (engine processes here).

Both take the same plain-data DeploymentSpec, apply it idempotently, and report what actually runs as
Observations, which `serving.status` turns into a status and a message for people.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings

from serving.backends.base import Backend


@cache
def get_backend(name: str | None = None) -> Backend:
    name = name or settings.SERVING_BACKEND
    if name == "kubernetes":
        from serving.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.from_settings()
    if name == "local":
        from serving.backends.local import LocalBackend

        return LocalBackend.from_settings()
    raise ValueError(f"Unknown serving backend {name!r}")
