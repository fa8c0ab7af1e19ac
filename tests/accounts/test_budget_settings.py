"""The settings and schedules budgets and idle deployments rely on, and the encryption of stored secrets."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet

from marketplace.accounts import crypto
from tests.test_settings import start


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("SECRETS_ENCRYPTION_KEY", "not-a-fernet-key", "SECRETS_ENCRYPTION_KEY must be a Fernet key"),
        ("IDLE_AFTER_HOURS", "0", "IDLE_AFTER_HOURS must be at least 1"),
        ("BUDGET_WEBHOOK_ATTEMPTS", "many", "BUDGET_WEBHOOK_ATTEMPTS must be a whole number"),
    ],
)
def test_a_bad_budget_setting_stops_start_up_naming_it(name: str, value: str, words: str) -> None:
    result = start(**{name: value})
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr


def test_the_budget_check_and_the_idle_summary_are_scheduled_celery_tasks(settings: Any) -> None:
    from marketplace.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for name in (
        "marketplace.accounts.tasks.check_budgets",
        "marketplace.accounts.tasks.summarize_idle_deployments",
    ):
        assert name in app.tasks and name in scheduled
    assert "marketplace.accounts.tasks.deliver_budget_alert" in app.tasks


def test_a_secret_is_encrypted_under_the_configured_key(settings: Any) -> None:
    settings.SECRETS_ENCRYPTION_KEY = Fernet.generate_key().decode()
    token = crypto.encrypt("whsec_abc")
    assert "whsec_abc" not in token
    assert Fernet(settings.SECRETS_ENCRYPTION_KEY.encode()).decrypt(token.encode()) == b"whsec_abc"


def test_a_secret_made_under_another_key_is_unreadable_with_a_sentence(settings: Any) -> None:
    settings.SECRETS_ENCRYPTION_KEY = ""
    token = crypto.encrypt("whsec_abc")  # under the key derived from SECRET_KEY
    assert crypto.decrypt(token) == "whsec_abc"
    settings.SECRET_KEY = settings.SECRET_KEY + "-rotated"
    with pytest.raises(crypto.UnreadableSecret, match="make a new secret"):
        crypto.decrypt(token)
