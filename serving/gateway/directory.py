"""Who is calling and what they may call: API keys and ready deployments, cached in process.

In steady state a request costs no database query: a key's record and an organisation's deployments are
read at most once per TTL per process. A revoked key or a deployment that stopped being ready is
therefore noticed within the TTL (a few seconds), which is the price of that speed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from marketplace.accounts.models import API_KEY_PREFIX, ApiKey, Quota, hash_api_key
from marketplace.subscriptions.models import Subscription
from serving.choices import DeploymentStatus
from serving.gateway.limits import Limits
from serving.models import Deployment


@dataclass(frozen=True)
class Caller:
    key_id: int | None  # None: a signed-in person in the web playground, limited as their organisation
    organization_id: int
    allowed_deployments: frozenset[str]  # empty: every deployment of the organisation
    limits: Limits

    def may_call(self, name: str) -> bool:
        return not self.allowed_deployments or name in self.allowed_deployments


@dataclass(frozen=True)
class Target:
    deployment_id: int
    name: str
    model_slug: str
    endpoints: tuple[str, ...]
    is_embedding: bool


class _TtlCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self.entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key: Any, value: Any) -> None:
        if len(self.entries) > 50_000:  # a flood of made-up keys must not grow memory without end
            self.entries.clear()
        self.entries[key] = (time.monotonic() + self.ttl, value)


class Directory:
    def __init__(self, ttl: float | None = None) -> None:
        ttl = settings.GATEWAY_CACHE_SECONDS if ttl is None else ttl
        self.keys = _TtlCache(ttl)
        self.deployments = _TtlCache(ttl)
        # One load per missing entry at a time: a burst of requests with a cold cache makes one query,
        # not one query (and one database connection) per request.
        self.loading: dict[Any, asyncio.Lock] = {}

    async def _load(self, cache: _TtlCache, key: Any, load: Any, argument: Any) -> Any:
        found, value = cache.get(key)
        if found:
            return value
        lock = self.loading.setdefault(key, asyncio.Lock())
        async with lock:
            found, value = cache.get(key)  # another request may have loaded it while we waited
            if not found:
                value = await sync_to_async(_closing(load))(argument)
                cache.put(key, value)
        self.loading.pop(key, None)
        return value

    async def caller(self, authorization: str) -> Caller | None:
        """The caller behind `Authorization: Bearer mk-…`, or None for a missing, unknown, expired or
        revoked key (all answered alike)."""
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret.startswith(API_KEY_PREFIX):
            return None
        hashed = hash_api_key(secret)
        caller: Caller | None = await self._load(self.keys, hashed, _load_caller, hashed)
        return caller

    async def person(self, organization_id: int) -> Caller:
        """A signed-in person calling from the web playground: no key, so only the organisation's limits
        apply (and its budget is spent), and their calls are metered without a key."""
        caller: Caller = await self._load(
            self.keys, ("person", organization_id), _load_person, organization_id
        )
        return caller

    async def target(self, caller: Caller, name: str) -> Target | None:
        """The caller's organisation's ready deployment called `name`; None when there is none or the
        key may not call it, so an outsider learns nothing from the answer."""
        if not caller.may_call(name):
            return None
        return (await self._targets_of(caller.organization_id)).get(name)

    async def targets(self, caller: Caller) -> list[Target]:
        targets = await self._targets_of(caller.organization_id)
        return [t for name, t in sorted(targets.items()) if caller.may_call(name)]

    async def _targets_of(self, organization_id: int) -> dict[str, Target]:
        targets: dict[str, Target] = await self._load(
            self.deployments, ("org", organization_id), _load_targets, organization_id
        )
        return targets


def _closing(load: Any) -> Any:
    """`load`, then the database connection closed as at the end of a Django request (CONN_MAX_AGE):
    the invoke routes bypass Django's request cycle (serving/gateway/asgi.py), which would close it."""

    def run(argument: Any) -> Any:
        try:
            return load(argument)
        finally:
            close_old_connections()

    return run


def _load_caller(hashed: str) -> Caller | None:
    key = ApiKey.objects.usable().filter(hashed_key=hashed).first()
    if key is None:
        return None
    if key.last_used_at is None or (timezone.now() - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return _caller(key.organization_id, key)


def _load_person(organization_id: int) -> Caller:
    return _caller(organization_id, None)


def _caller(organization_id: int, key: ApiKey | None) -> Caller:
    quota = Quota.objects.get_or_create(organization_id=organization_id)[0]
    return Caller(
        key_id=None if key is None else key.pk,
        organization_id=organization_id,
        allowed_deployments=frozenset(key.allowed_deployments or ()) if key else frozenset(),
        limits=Limits(
            key_rpm=None if key is None else key.requests_per_minute,
            key_tpm=None if key is None else key.tokens_per_minute,
            org_rpm=quota.requests_per_minute,
            org_tpm=quota.tokens_per_minute,
            org_monthly_tokens=quota.monthly_token_budget,
        ),
    )


def _load_targets(organization_id: int) -> dict[str, Target]:
    # A ready deployment scaled to zero has no endpoint: it is still a target, so that its request is
    # counted (the metric its KEDA trigger wakes on) and answered 503 "try again shortly".
    # A deployment whose model's subscription is not in force (cancelled, or changed license terms not
    # yet accepted) is no target: it answers 404 like any name the caller cannot call, until an owner or
    # admin accepts the terms (the REST API and the model's page say why).
    rows = Deployment.objects.filter(
        organization_id=organization_id,
        status__in=(DeploymentStatus.READY, DeploymentStatus.UPDATING),
        model_card__in=Subscription.objects.in_force()
        .filter(organization_id=organization_id)
        .values("model_card"),
    ).select_related("model_card")
    return {
        row.name: Target(
            deployment_id=row.pk,
            name=row.name,
            model_slug=row.model_card.slug,
            endpoints=tuple(row.endpoints),
            is_embedding=row.model_card.is_embedding,
        )
        for row in rows
    }
