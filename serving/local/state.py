"""The local backend's shared state in Redis: the one module that knows its keys.

The control plane writes what should run (`desired`); the engine supervisor writes what runs (`actual`)
and a heartbeat. Redis plays the part the API server plays for the kubernetes backend, so both backends
are driven the same way: apply desired state, read actual state back with one call per kind.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from django.conf import settings

PREFIX = "serving:local:"
DESIRED = PREFIX + "desired"
ACTUAL = PREFIX + "actual"
HEARTBEAT = PREFIX + "heartbeat"
HEARTBEAT_SECONDS = 10


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def put_desired(connection: redis.Redis, deployment_id: int, spec: dict[str, Any]) -> None:
    connection.hset(DESIRED, str(deployment_id), json.dumps(spec, sort_keys=True))


def remove_desired(connection: redis.Redis, deployment_id: int) -> None:
    connection.hdel(DESIRED, str(deployment_id))


def read_hash(connection: redis.Redis, key: str) -> dict[int, dict[str, Any]]:
    raw: dict[bytes, bytes] = connection.hgetall(key)  # type: ignore[assignment]
    return {int(field): json.loads(value) for field, value in raw.items()}


def write_actual(connection: redis.Redis, actual: dict[int, dict[str, Any]]) -> None:
    """Replace the actual state in one transaction, and renew the heartbeat."""
    pipe = connection.pipeline(transaction=True)
    pipe.delete(ACTUAL)
    if actual:
        pipe.hset(ACTUAL, mapping={str(k): json.dumps(v, sort_keys=True) for k, v in actual.items()})
    pipe.set(HEARTBEAT, "1", ex=HEARTBEAT_SECONDS)
    pipe.execute()
