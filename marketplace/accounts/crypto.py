"""Secrets the platform must read back (a budget webhook's signing secret), encrypted at rest.

API keys are hashed because the platform only ever compares them; a webhook secret signs every delivery,
so it has to come back. It is encrypted with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`)
under SECRETS_ENCRYPTION_KEY, or, when that is unset, under a key derived from SECRET_KEY with HKDF, so
a database dump alone does not give the secrets away. Changing SECRET_KEY without setting
SECRETS_ENCRYPTION_KEY to the old derived key makes the stored secrets unreadable: `decrypt` then raises
UnreadableSecret, and the owner makes a new secret.
"""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

_INFO = b"model-marketplace stored secrets v1"


class UnreadableSecret(Exception):
    """The stored secret was encrypted under another key (SECRET_KEY or SECRETS_ENCRYPTION_KEY changed)."""


@cache
def _fernet(secret_key: str, explicit_key: str) -> Fernet:
    if explicit_key:
        return Fernet(explicit_key.encode())
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def _current() -> Fernet:
    return _fernet(settings.SECRET_KEY, settings.SECRETS_ENCRYPTION_KEY)


def encrypt(plain: str) -> str:
    return _current().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken:
        raise UnreadableSecret(
            "The stored secret cannot be decrypted with this platform's key (SECRET_KEY or "
            "SECRETS_ENCRYPTION_KEY changed since it was made): make a new secret."
        ) from None
