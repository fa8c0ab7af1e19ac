"""Every setting the platform reads that applies in a cluster has a value in the chart: a variable
missing from the ConfigMap (or the chart's secrets) can only be set through config.extraEnv, which
nobody finds. The exceptions are named, each with why a cluster has no use for it."""

from __future__ import annotations

import base64
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
    objects = render(
        (
            *PRODUCTION,
            "--set", "secrets.objectStoreSecretAccessKey.existingSecret=s3",
            "--set", "secrets.secretsEncryptionKey.existingSecret=fernet",
        )
    )  # fmt: skip
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


def test_the_secrets_encryption_key_given_as_a_value_is_stored_and_read_as_a_file() -> None:
    key = "kJ3vC1mK2m5oYbq4Zb3v6r1nU8x0pWq7sT2yH9dLfE0="
    objects = render((*PRODUCTION, "--set", f"secrets.secretsEncryptionKey.value={key}"))
    stored = find(objects, "Secret", "marketplace-secrets")["data"]
    assert base64.b64decode(stored["SECRETS_ENCRYPTION_KEY"]).decode() == key
    for name in ("marketplace-web", "marketplace-worker"):
        deployment = find(objects, "Deployment", name)
        assert secret_sources(deployment)["SECRETS_ENCRYPTION_KEY"] == (
            "marketplace-secrets",
            "SECRETS_ENCRYPTION_KEY",
        )
        environment = {
            variable["name"]: variable.get("value")
            for container in deployment["spec"]["template"]["spec"]["containers"]
            for variable in container.get("env", [])
        }
        assert (
            environment["SECRETS_ENCRYPTION_KEY_FILE"]
            == "/var/run/secrets/marketplace/SECRETS_ENCRYPTION_KEY"
        )


def test_budget_and_idle_settings_are_chart_values() -> None:
    objects = render(
        (*PRODUCTION,
         "--set", "config.budgets.checkIntervalSeconds=60",
         "--set", "config.budgets.webhookPrivateAddresses=true",
         "--set", "config.idleAfterHours=48")
    )  # fmt: skip
    data = find(objects, "ConfigMap", "marketplace-config")["data"]
    assert (
        data["BUDGET_CHECK_INTERVAL_SECONDS"],
        data["BUDGET_WEBHOOK_PRIVATE_ADDRESSES"],
        data["IDLE_AFTER_HOURS"],
    ) == ("60", "True", "48")
