"""Fixtures of the serving tests: a fake Kubernetes API and the kubernetes backend wired to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from serving.backends.kubernetes import KubernetesBackend
from serving.spec import ClusterSettings
from tests.serving.fake_kubernetes import NAMESPACE, FakeKubernetes


@pytest.fixture
def fake_kubernetes() -> Iterator[FakeKubernetes]:
    """A stateful fake API server on a free local port, stopped after the test."""
    fake = FakeKubernetes().start()
    try:
        yield fake
    finally:
        fake.stop()


def backend_for(url: str, cluster: ClusterSettings | None = None) -> KubernetesBackend:
    """A KubernetesBackend talking plain HTTP to `url` (the fake), with the fake's namespace."""
    configuration = client.Configuration()
    configuration.host = url
    return KubernetesBackend(client.ApiClient(configuration), cluster or ClusterSettings(namespace=NAMESPACE))


@pytest.fixture
def kubernetes_backend(fake_kubernetes: FakeKubernetes) -> Iterator[KubernetesBackend]:
    backend = backend_for(fake_kubernetes.url)
    try:
        yield backend
    finally:
        backend.api_client.close()
