"""The chart's object store settings: the bucket and endpoint in the ConfigMap, the secret key as a
mounted file in every pod that may read or write logs (and the migrations Job, which reads settings)."""

from __future__ import annotations

import pytest

from tests.deploy.test_helm import (
    DEFAULTS,
    PRODUCTION,
    env,
    find,
    readme_variables,
    refusal,
    render,
    secret_sources,
)

S3 = (
    *DEFAULTS,
    "--set", "config.objectStore.bucket=marketplace-logs",
    "--set", "config.objectStore.endpointUrl=https://minio.example.com:9000",
    "--set", "config.objectStore.accessKeyId=marketplace",
)  # fmt: skip
SECRET_FILE = "/var/run/secrets/marketplace/OBJECT_STORE_SECRET_ACCESS_KEY"


def test_the_bucket_endpoint_region_and_key_id_are_settings_of_the_readme() -> None:
    data = find(render(S3), "ConfigMap", "marketplace-config")["data"]
    assert (data["OBJECT_STORE_BUCKET"], data["OBJECT_STORE_ENDPOINT_URL"]) == (
        "marketplace-logs",
        "https://minio.example.com:9000",
    )
    assert (data["OBJECT_STORE_REGION"], data["OBJECT_STORE_ACCESS_KEY_ID"]) == ("us-east-1", "marketplace")
    assert {name for name in data if name.startswith("OBJECT_STORE_")} <= readme_variables()


def test_without_a_secret_key_no_pod_looks_for_its_file() -> None:
    objects = render(PRODUCTION)
    for name in ("marketplace-web", "marketplace-worker"):
        deployment = find(objects, "Deployment", name)
        assert "OBJECT_STORE_SECRET_ACCESS_KEY_FILE" not in env(deployment)
        assert "OBJECT_STORE_SECRET_ACCESS_KEY" not in secret_sources(deployment)


def test_a_secret_key_value_goes_into_the_charts_secrets_and_reaches_pods_as_a_file() -> None:
    objects = render((*S3, "--set", "secrets.objectStoreSecretAccessKey.value=s3-secret-for-tests"))
    assert "OBJECT_STORE_SECRET_ACCESS_KEY" in find(objects, "Secret", "marketplace-secrets")["data"]
    assert "OBJECT_STORE_SECRET_ACCESS_KEY" in find(objects, "Secret", "marketplace-migrate")["data"]
    for name in ("marketplace-web", "marketplace-gateway", "marketplace-worker", "marketplace-beat"):
        deployment = find(objects, "Deployment", name)
        assert env(deployment)["OBJECT_STORE_SECRET_ACCESS_KEY_FILE"] == SECRET_FILE
        assert secret_sources(deployment)["OBJECT_STORE_SECRET_ACCESS_KEY"] == (
            "marketplace-secrets",
            "OBJECT_STORE_SECRET_ACCESS_KEY",
        )
    job = find(objects, "Job", "marketplace-migrate")
    assert secret_sources(job)["OBJECT_STORE_SECRET_ACCESS_KEY"][0] == "marketplace-migrate"


def test_an_existing_secret_is_read_by_name_and_key() -> None:
    objects = render(
        (*S3,
         "--set", "secrets.objectStoreSecretAccessKey.existingSecret=minio-credentials",
         "--set", "secrets.objectStoreSecretAccessKey.key=secretkey")
    )  # fmt: skip
    worker = find(objects, "Deployment", "marketplace-worker")
    assert secret_sources(worker)["OBJECT_STORE_SECRET_ACCESS_KEY"] == ("minio-credentials", "secretkey")
    assert "OBJECT_STORE_SECRET_ACCESS_KEY" not in find(objects, "Secret", "marketplace-secrets")["data"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("config.objectStore.endpointUrl=minio:9000", "at '/config/objectStore/endpointUrl'"),
        ("config.objectStore.bucket=Logs_Bucket", "at '/config/objectStore/bucket'"),
        ("config.objectStore.buckets=x", "additional properties 'buckets' not allowed"),
    ],
)
def test_bad_object_store_values_are_refused_naming_them(setting: str, message: str) -> None:
    assert message in refusal(*DEFAULTS, "--set", setting)


def test_a_secret_key_given_both_ways_is_refused() -> None:
    message = refusal(
        *DEFAULTS,
        "--set", "secrets.objectStoreSecretAccessKey.value=x",
        "--set", "secrets.objectStoreSecretAccessKey.existingSecret=minio",
    )  # fmt: skip
    assert "secrets.objectStoreSecretAccessKey: give either value or existingSecret" in message
