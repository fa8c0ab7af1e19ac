"""Settings come from the environment and a bad value stops start-up with a message naming it."""

import os
import subprocess
import sys

import pytest

from marketplace import env


def start(**overrides: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **overrides}
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", "marketplace.settings"],
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


def test_an_unreadable_secret_file_names_the_variable(monkeypatch) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("SECRET_KEY_FILE", "/nonexistent/key")
    with pytest.raises(env.ConfigurationError, match="SECRET_KEY_FILE: cannot read"):
        env.string("SECRET_KEY", required=True)
