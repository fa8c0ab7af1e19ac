"""Strict readers for configuration that comes from the environment.

A value that cannot be read stops the process at start-up with a message naming the variable, so a
typo in a deployment manifest is found at once instead of as odd behaviour later.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlparse


class ConfigurationError(Exception):
    """A configuration variable is missing or malformed."""


def _raw(name: str) -> str | None:
    """The variable's value, or the contents of the file named by NAME_FILE (for mounted secrets)."""
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigurationError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return None


def string(name: str, default: str | None = None, *, required: bool = False) -> str:
    value = _raw(name)
    if value is None or value == "":
        if required:
            raise ConfigurationError(f"{name} is required but not set")
        return default or ""
    return value


def boolean(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None or value == "":
        return default
    if value in ("True", "true", "1", "yes"):
        return True
    if value in ("False", "false", "0", "no"):
        return False
    raise ConfigurationError(f"{name} must be True or False, not {value!r}")


def integer(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, not {number}")
    return number


def string_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = string(name, default)
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def url(name: str, *, schemes: tuple[str, ...], required: bool = False, default: str = "") -> str:
    value = string(name, default, required=required)
    if value and urlparse(value).scheme not in schemes:
        raise ConfigurationError(
            f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        )
    return value


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def labels(name: str, default: dict[str, str]) -> dict[str, str]:
    """Kubernetes labels written `key=value,key=value` (a label selector of equalities)."""
    value = _raw(name)
    if value is None or value == "":
        return dict(default)
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in value.split(",")):
        key, sep, label = (piece.strip() for piece in item.partition("="))
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
            raise ConfigurationError(
                f"{name} must be Kubernetes labels such as app.kubernetes.io/name=prometheus,team=ml; "
                f"{item!r} is not one"
            )
        pairs[key] = label
    return pairs


_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def volume_claims(name: str) -> dict[str, str]:
    """Folders held by PersistentVolumeClaims, written `/folder=claim,/other=claim2`: claims by folder."""
    value = _raw(name)
    claims: dict[str, str] = {}
    for item in (part.strip() for part in (value or "").split(",") if part.strip()):
        folder, sep, claim = (piece.strip() for piece in item.partition("="))
        if not sep or not folder.startswith("/") or not _CLAIM.match(claim):
            raise ConfigurationError(
                f"{name} must be absolute folders with the claims that hold them, such as "
                f"/models=shared-models; {item!r} is not one"
            )
        claims[folder.rstrip("/") or "/"] = claim
    return claims
