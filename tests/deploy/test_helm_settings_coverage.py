"""Every setting the platform reads that applies in a cluster has a value in the chart: a variable
missing from the ConfigMap (or the chart's secrets) can only be set through config.extraEnv, which
nobody finds. The exceptions are named, each with why a cluster has no use for it."""

from __future__ import annotations

import re

from tests.deploy.test_helm import PRODUCTION, ROOT, find, render, secret_sources

# Read by the settings, but not a chart's to set.
NOT_FOR_A_CLUSTER = {
    "DEBUG": "a development switch; a release always runs with it off",
    "KUBECONFIG": "the worker uses its service account inside the cluster",
    "DATA_DIR": "the embedded default's folder; pods keep bulk data in the object store",
    "GATEWAY_ONLY": "set by the gateway component's entry point, not by a value",
    "STATIC_ROOT": "fixed in the image, where collectstatic put the files",
}


def settings_variables() -> set[str]:
    """The variables marketplace/settings.py reads through marketplace.env."""
    text = (ROOT / "marketplace" / "settings.py").read_text()
    return set(re.findall(r'env\.[a-z_]+\(\s*"([A-Z][A-Z0-9_]*)"', text))


def test_every_setting_for_a_cluster_is_in_the_configmap_or_a_mounted_secret() -> None:
    objects = render((*PRODUCTION, "--set", "secrets.objectStoreSecretAccessKey.existingSecret=s3"))
    config = set(find(objects, "ConfigMap", "marketplace-config")["data"])
    secrets = set(secret_sources(find(objects, "Deployment", "marketplace-web")))
    secrets |= set(secret_sources(find(objects, "Deployment", "marketplace-worker")))
    missing = settings_variables() - config - secrets - set(NOT_FOR_A_CLUSTER)
    assert missing == set()


def test_the_invocation_log_queue_writer_and_window_are_chart_values() -> None:
    objects = render(
        (*PRODUCTION,
         "--set", "config.invocationLog.queueMax=250000",
         "--set", "config.invocationLog.writeIntervalSeconds=30",
         "--set", "config.invocationLog.windowMinutes=15")
    )  # fmt: skip
    data = find(objects, "ConfigMap", "marketplace-config")["data"]
    assert (
        data["INVOCATION_LOG_QUEUE_MAX"],
        data["INVOCATION_LOG_WRITE_INTERVAL_SECONDS"],
        data["INVOCATION_LOG_WINDOW_MINUTES"],
    ) == ("250000", "30", "15")
