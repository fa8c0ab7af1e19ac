"""The key a local engine demands on its API, which only the platform's gateway knows.

Every engine the supervisor starts gets `VLLM_API_KEY` (in its environment, which only its own user can
read, rather than `--api-key` on a command line every local user can list), so an engine called around
the gateway answers 401 and nothing it serves escapes authentication, limits or metering.

The key is derived, never stored: an HMAC of the platform's SECRET_KEY and the replica's address
(`http://127.0.0.1:PORT`). The supervisor knows the address before it starts the engine, and the
gateway's upstream client knows it when it picks the replica, so the key travels with nothing: no
column, no Redis entry, no change to what the invoke path passes around. Rotating SECRET_KEY rotates
every engine's key at the engine's next restart.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.utils.crypto import salted_hmac

SALT = "serving.local.engine_key"


def engine_key(endpoint: str) -> str:
    """The engine key of the replica answering at `endpoint` (a base URL, no trailing slash)."""
    return _derive(endpoint, settings.SECRET_KEY)


@lru_cache(maxsize=4096)
def _derive(endpoint: str, secret: str) -> str:
    # Cached: the gateway asks once per request, and the replicas of a process's targets are few.
    return salted_hmac(SALT, endpoint, secret=secret, algorithm="sha256").hexdigest()


def local_endpoint(port: int) -> str:
    """The address the supervisor binds an engine to, as the reconciler publishes it."""
    return f"http://127.0.0.1:{port}"
