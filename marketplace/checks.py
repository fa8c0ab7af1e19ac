"""System checks of the platform's own settings, beyond Django's `check --deploy`.

A weak SECRET_KEY is an error, not a deploy-only warning, whenever DEBUG is off: anyone who guesses it
can forge sessions, password-reset links and signed values. `migrate` runs the checks, so `run.py` and
the chart's migrate Job stop there; `entrypoint web|gateway|worker|beat` runs them before starting.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)


def weak_secret_key_reason(key: str) -> str | None:
    """Why `key` is too weak to sign with (Django's own measure: length, variety, the insecure
    prefix of generated development keys), or None."""
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return f"it starts with {SECRET_KEY_INSECURE_PREFIX!r}, the mark of a generated development key"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"it has {len(key)} characters, fewer than {SECRET_KEY_MIN_LENGTH}"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return f"it has {len(set(key))} different characters, fewer than {SECRET_KEY_MIN_UNIQUE_CHARACTERS}"
    return None


def secret_key_refusal(key: str, debug: bool) -> str | None:
    """The sentence that refuses to start with `key`, or None when it may be used."""
    reason = None if debug else weak_secret_key_reason(key)
    if reason is None:
        return None
    return (
        f"SECRET_KEY is too weak to run with DEBUG off: {reason}. Generate one with "
        "`openssl rand -base64 48` (or set DEBUG=True on a development machine)."
    )


@register(Tags.security)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    refusal = secret_key_refusal(settings.SECRET_KEY, settings.DEBUG)
    return [Error(refusal, id="marketplace.E001")] if refusal else []
