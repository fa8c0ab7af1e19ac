"""Settings come from the environment and a bad value stops start-up with a message naming it."""

import os
import subprocess
import sys

import pytest

from marketplace import env

# A signing key as run.py generates one: the one used unless a test says otherwise.
STRONG_KEY = "kV9-3qLr_8ZtYw2mXc7NbH4uJ6sD1fGpQe5aT0yRi_UoPlKjMnBvCxZaSdFgHjKl"
# The production settings the README documents (and the chart sets behind its TLS Ingress).
PRODUCTION = {
    "SECURE_SSL_REDIRECT": "True",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "True",
    "SECURE_HSTS_PRELOAD": "True",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "SECURE_COOKIES": "True",
    "ALLOWED_HOSTS": "marketplace.example.com",
}


def start(*arguments: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "DEBUG"}
    environment.update({"SECRET_KEY": STRONG_KEY, **overrides})
    return subprocess.run(
        [sys.executable, "-m", "django", "check", *arguments, "--settings", "marketplace.settings"],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DEBUG", "perhaps", "DEBUG must be True or False"),
        ("DATABASE_URL", "mysql://localhost/x", "DATABASE_URL must be a URL starting with postgres://"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must be a URL"),
        ("API_PAGE_SIZE_MAX", "0", "API_PAGE_SIZE_MAX must be at least 1"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be one of"),
        ("SECRET_KEY", "", "SECRET_KEY is required"),
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https", "SECURE_PROXY_SSL_HEADER must be a header"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0"),
        ("METRICS_TOKEN", "too-short", "METRICS_TOKEN must be at least 24 characters"),
        ("PROMETHEUS_POD_LABELS", "app=prometheus,=x", "PROMETHEUS_POD_LABELS must be Kubernetes labels"),
        ("GATEWAY_POD_LABELS", "app.kubernetes.io/instance", "GATEWAY_POD_LABELS must be Kubernetes labels"),
        ("CUSTOM_MODEL_VOLUMES", "models=shared", "CUSTOM_MODEL_VOLUMES must be absolute folders"),
        ("CUSTOM_MODEL_VOLUMES", "/models=Shared_Models", "CUSTOM_MODEL_VOLUMES must be absolute folders"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name: str, value: str, words: str) -> None:
    result = start(**{name: value})
    assert result.returncode != 0
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_good_settings_start() -> None:
    result = start()
    assert result.returncode == 0, result.stderr


def test_a_secret_can_come_from_a_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "key").write_text("from-a-file\n")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "key"))
    assert env.string("SECRET_KEY", required=True) == "from-a-file"


def test_labels_are_read_as_a_selector_of_equalities(monkeypatch) -> None:
    monkeypatch.setenv("PROMETHEUS_POD_LABELS", "app.kubernetes.io/name=prometheus, team=ml")
    assert env.labels("PROMETHEUS_POD_LABELS", {}) == {"app.kubernetes.io/name": "prometheus", "team": "ml"}
    monkeypatch.delenv("PROMETHEUS_POD_LABELS")
    assert env.labels("PROMETHEUS_POD_LABELS", {"app": "x"}) == {"app": "x"}


def test_volume_claims_are_read_by_folder(monkeypatch) -> None:
    monkeypatch.setenv("CUSTOM_MODEL_VOLUMES", "/models/=shared-models, /data/lab=lab.claim")
    assert env.volume_claims("CUSTOM_MODEL_VOLUMES") == {"/models": "shared-models", "/data/lab": "lab.claim"}
    monkeypatch.setenv("CUSTOM_MODEL_VOLUMES", "")
    assert env.volume_claims("CUSTOM_MODEL_VOLUMES") == {}


def test_each_volumes_folder_is_one_models_are_registered_from_beside_the_default_roots() -> None:
    environment = {**os.environ, "SECRET_KEY": STRONG_KEY, "DATA_DIR": "/srv/data"}
    environment.update(
        CUSTOM_MODEL_VOLUMES="/models=shared-models", DJANGO_SETTINGS_MODULE="marketplace.settings"
    )
    environment.pop("CUSTOM_MODEL_ROOTS", None)
    program = "from django.conf import settings; print(','.join(settings.CUSTOM_MODEL_ROOTS))"
    shown = subprocess.run(
        [sys.executable, "-c", program], env=environment, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["/srv/data/custom-models,/srv/data/engine/models,/models"]


def test_an_unreadable_secret_file_names_the_variable(monkeypatch) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("SECRET_KEY_FILE", "/nonexistent/key")
    with pytest.raises(env.ConfigurationError, match="SECRET_KEY_FILE: cannot read"):
        env.string("SECRET_KEY", required=True)


# Production settings.


def test_check_deploy_is_clean_with_the_documented_production_settings() -> None:
    result = start("--deploy", "--tag", "security", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_names_each_missing_production_setting() -> None:
    result = start("--deploy", "--tag", "security", "--fail-level", "WARNING")
    assert result.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):  # HSTS, SSL redirect, secure cookies
        assert f"security.{warning}" in result.stderr, warning


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("s3cr3t", "it has 6 characters, fewer than 50"),
        ("ab" * 40, "it has 2 different characters, fewer than 5"),
        ("django-insecure-" + STRONG_KEY, "generated development key"),
    ],
    ids=["short", "repetitive", "development"],
)
def test_a_weak_secret_key_is_refused_when_debug_is_off(key: str, words: str) -> None:
    result = start(SECRET_KEY=key)
    assert result.returncode != 0
    assert "SECRET_KEY is too weak to run with DEBUG off" in result.stderr
    assert words in result.stderr and "openssl rand" in result.stderr


def test_a_weak_secret_key_is_allowed_for_development_with_debug_on() -> None:
    result = start(SECRET_KEY="dev", DEBUG="True")
    assert result.returncode == 0, result.stderr


def test_migrate_refuses_a_weak_secret_key_before_touching_the_database() -> None:
    """`migrate` is the first step of run.py and of the chart's install: a weak key stops it there."""
    result = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--plan", "--settings", "marketplace.settings"],
        env={**os.environ, "SECRET_KEY": "s3cr3t"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "SECRET_KEY is too weak" in result.stderr


def test_the_proxy_header_means_https_and_probes_stay_on_plain_http(settings) -> None:
    from marketplace.settings import _proxy_ssl_header

    assert _proxy_ssl_header("X-Forwarded-Proto") == ("HTTP_X_FORWARDED_PROTO", "https")
    assert _proxy_ssl_header("") is None
    assert r"^healthz$" in settings.SECURE_REDIRECT_EXEMPT and r"^metrics$" in settings.SECURE_REDIRECT_EXEMPT


def test_with_ssl_redirect_pages_redirect_but_probes_and_scrapes_are_answered(client, settings, db) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert client.get("/").status_code == 301
    assert client.get("/", HTTP_X_FORWARDED_PROTO="https").status_code == 200
    assert client.get("/metrics").status_code == 200  # loopback, no token configured
    assert client.get("/healthz").status_code in (200, 503)  # answered, not redirected
