"""Who is calling and what they may call: API keys and ready deployments, cached in process.

In steady state a request costs no database query: a key's record and an organisation's deployments are
read at most once per TTL per process. A revoked key or a deployment that stopped being ready is
therefore noticed within the TTL (a few seconds), which is the price of that speed.

Unknown keys cost nothing either: a key the database does not know is remembered as unknown for the
same TTL (in a cache of its own, bounded, so a flood of made-up keys evicts only made-up keys), and
every failed authentication counts against its client address's budget in Redis
(GATEWAY_AUTH_FAILURES_PER_MINUTE, serving/gateway/limits.py). A key that has to be looked up takes
from that budget first, and gives it back when it was valid; an address without budget left is refused
(`AuthenticationThrottled`, a 429) before any database work. The client address is the ASGI scope's
(`client_address`, set by serving/gateway/asgi.py); behind a proxy, uvicorn's FORWARDED_ALLOW_IPS makes
it the client's own.

Prompt routers (learning.routing) are resolved here too: a model name is the organisation's ready
deployment of that name or, else, its router of that name. Routers are read with the deployments, once
per TTL per organisation and process (a router's newly trained predictor is therefore in use within
the TTL, without a restart). The key rule: a key whose allowed deployments are listed may call a router
only when the router's name is in its list, and the router then calls its candidates on the caller's
behalf whether or not they are in the list. Allowing a router is allowing what it routes to, as
allowing a deployment is allowing whatever model runs behind it; a key allowed only a candidate cannot
reach it through the router, since the router might send its prompts elsewhere.

The guardrails attached to the organisation's deployments, routers and keys are read with them too
(learning.guardrails.attachments: one query for the attachments, one for the latest versions, each
version compiled once per process), so applying them costs a call no query in steady state; a failed
read keeps the last one, as for routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from learning import routing
from learning.guardrails.attachments import EMPTY, Attached, attached_policies
from marketplace.accounts.models import API_KEY_PREFIX, ApiKey, Quota, hash_api_key
from marketplace.subscriptions.models import Subscription
from serving.choices import DeploymentStatus
from serving.gateway.limits import Limits, RateLimiter
from serving.models import Deployment, served_adapter_name


@dataclass(frozen=True)
class Caller:
    key_id: int | None  # None: a signed-in person in the web playground, limited as their organisation
    organization_id: int
    allowed_deployments: frozenset[str]  # empty: every deployment of the organisation
    limits: Limits
    key_prefix: str | None = None  # the key's visible prefix (`mk-…`), which invocation logs narrow by
    logged: bool = True  # False for the platform's own calls (evaluations): kept out of invocation logs

    def may_call(self, name: str) -> bool:
        """A key limited to some deployments may call them and the adapters served beside them."""
        return not self.allowed_deployments or name.split(":", 1)[0] in self.allowed_deployments


@dataclass(frozen=True)
class Target:
    deployment_id: int
    name: str
    model_slug: str
    endpoints: tuple[str, ...]
    routes: tuple[str, ...]  # the invoke routes its model serves (ModelCard.routes, choices.ROUTES names)
    modalities_in: tuple[str, ...] = ("text",)  # what its model reads (ModelCard.modalities_in)


@dataclass(frozen=True)
class RouterTarget:
    """A prompt router the caller may call, with what it needs at decision time: its candidates that
    are targets now (ready, subscription in force; a candidate missing here is unavailable), and its
    embedding deployment when its predictor needs a prompt embedding."""

    route: routing.Route
    candidates: Mapping[str, Target]
    embedder: Target | None

    @property
    def name(self) -> str:
        return self.route.name


@dataclass(frozen=True)
class Catalog:
    """What an organisation's callers can call, as one process holds it for a TTL."""

    targets: dict[str, Target]
    routers: dict[str, RouterTarget] = field(default_factory=dict)
    guardrails: Attached = EMPTY  # the guardrails attached to its deployments, routers and keys


log = logging.getLogger(__name__)

# The address of the client whose request is being served, when the ASGI front knows it.
client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)

UNKNOWN_KEYS_REMEMBERED = 10_000


class AuthenticationThrottled(Exception):
    """The client address has used its failed-authentication budget; answered 429 in the route's API
    format (serving/gateway/asgi.py)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            f"Too many failed authentications from your address: retry in {retry_after_seconds} s "
            "with a valid API key."
        )
        self.retry_after_seconds = retry_after_seconds


class GuardrailsUnavailable(Exception):
    """An organisation's guardrails could not be read, and none were read before: its calls are refused
    (503) rather than sent to a model unchecked."""


class AuthenticationUnavailable(Exception):
    """A key that must be looked up in the database cannot be, because Redis cannot count the attempt
    against its address's budget (a 503 in the route's API format, like any request the limits cannot
    check): otherwise a flood that exhausts Redis would reach the database unbounded."""


class _TtlCache:
    """Entries that expire `ttl` seconds after they were put; past `size` entries the oldest go first
    (all share one TTL, so the oldest is also the first to expire)."""

    def __init__(self, ttl: float, size: int = 50_000) -> None:
        self.ttl = ttl
        self.size = size
        self.entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self.entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key: Any, value: Any) -> None:
        self.entries.pop(key, None)  # re-inserted at the end: insertion order stays expiry order
        while len(self.entries) >= self.size:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = (time.monotonic() + self.ttl, value)


class _Loads:
    """One lock per key being looked up, kept for as long as a request holds or awaits it: requests for
    a key wait for the one look-up in progress and then find its answer in the cache, even when a
    look-up failed (Redis away) and the next waiter tries again. Without that, a burst arriving while
    a look-up fails would start look-ups side by side, each taking from its address's budget."""

    def __init__(self) -> None:
        self.locks: dict[Any, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        lock, users = self.locks.get(key) or (asyncio.Lock(), 0)
        self.locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.locks[key]
            if users == 1:
                del self.locks[key]
            else:
                self.locks[key] = (lock, users - 1)


class Directory:
    def __init__(self, ttl: float | None = None, *, limiter: RateLimiter | None = None) -> None:
        ttl = settings.GATEWAY_CACHE_SECONDS if ttl is None else ttl
        self.keys = _TtlCache(ttl)
        self.unknown_keys = _TtlCache(ttl, size=UNKNOWN_KEYS_REMEMBERED)
        self.deployments = _TtlCache(ttl)
        # The routers last read of each organisation: kept when a later read fails, so a broken router
        # table (or object store) cannot take the routers down between two reads, nor the deployments.
        self.last_routes: dict[int, dict[str, routing.Route]] = {}
        self.last_guardrails: dict[int, Attached] = {}  # likewise for the guardrails' attachments
        # One load per missing entry at a time: a burst of requests with a cold cache makes one query,
        # not one query (and one database connection) per request.
        self.loading: dict[Any, asyncio.Lock] = {}
        self.key_loads = _Loads()
        self._limiter = limiter

    @property
    def limiter(self) -> RateLimiter:
        """The failed-authentication budgets' limiter: a connection of the directory's own, opened
        when first needed (only requests that are not in the cache need it)."""
        if self._limiter is None:
            # Blocking: a burst waits (up to 5 s) for a free connection instead of failing.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                settings.REDIS_URL, max_connections=50, timeout=5, socket_timeout=5
            )
            self._limiter = RateLimiter(redis.asyncio.Redis(connection_pool=pool))
        return self._limiter

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
        revoked key (all answered alike). AuthenticationThrottled when the client address has no
        failed-authentication budget left and the answer is not in the cache."""
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret.startswith(API_KEY_PREFIX):
            await self._take_attempt()
            return None
        hashed = hash_api_key(secret)
        found, caller = self.keys.get(hashed)
        if found:
            return caller
        async with self.key_loads.hold(hashed):
            caller, counted = await self._look_up(hashed)
        if caller is None and not counted:
            await self._take_attempt()
        return caller

    async def _look_up(self, hashed: str) -> tuple[Caller | None, bool]:
        """(the caller, whether a failed attempt was counted): from the caches when they know the key
        (another request may have loaded it while this one waited), else from the database, the attempt
        counted first and given back if the key is valid."""
        found, caller = self.keys.get(hashed)
        if found:
            return caller, False
        if self.unknown_keys.get(hashed)[0]:
            return None, False
        entry = await self._take_attempt(before_lookup=True)
        caller = await sync_to_async(_closing(_load_caller))(hashed)
        if caller is None:
            self.unknown_keys.put(hashed, None)
            return None, True
        self.keys.put(hashed, caller)
        if entry:
            await self._give_back(entry)
        return caller, False

    async def _take_attempt(self, *, before_lookup: bool = False) -> str:
        """Count an attempt against the client address's budget; raise AuthenticationThrottled when it
        has none left. Without a known address (a request that did not come through the ASGI front)
        nothing is counted. Without Redis, an attempt about to reach the database raises
        AuthenticationUnavailable; one that already failed without it is not counted (it cost nothing)."""
        address = client_address.get()
        if address is None:
            return ""
        try:
            entry, wait_ms = await self.limiter.take_authentication_attempt(
                address, settings.GATEWAY_AUTH_FAILURES_PER_MINUTE
            )
        except redis.RedisError as error:
            if before_lookup:
                raise AuthenticationUnavailable(str(error)) from error
            return ""
        if not entry:
            raise AuthenticationThrottled(max(1, -(-wait_ms // 1000)))
        return entry

    async def _give_back(self, entry: str) -> None:
        address = client_address.get()
        if address is not None:
            try:
                await self.limiter.give_back_authentication_attempt(address, entry)
            except redis.RedisError as error:
                log.debug("failed-authentication attempt not given back: %s", error)

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
        return (await self._catalog_of(caller.organization_id)).targets.get(name)

    async def resolve(self, caller: Caller, name: str) -> Target | RouterTarget | None:
        """What `name` calls for this caller: its organisation's ready deployment of that name, else its
        router of that name; None when neither exists or the key may not call it (the same answer, so an
        outsider learns nothing from it)."""
        if not caller.may_call(name):
            return None
        catalog = await self._catalog_of(caller.organization_id)
        return catalog.targets.get(name) or catalog.routers.get(name)

    async def targets(self, caller: Caller) -> list[Target]:
        targets = (await self._catalog_of(caller.organization_id)).targets
        return [t for name, t in sorted(targets.items()) if caller.may_call(name)]

    async def callables(self, caller: Caller) -> list[Target | RouterTarget]:
        """Everything the caller may call, by name: its organisation's ready deployments and its
        routers (a router shadowed by a deployment's name is not one)."""
        catalog = await self._catalog_of(caller.organization_id)
        found: dict[str, Target | RouterTarget] = {**catalog.routers, **catalog.targets}
        return [found[name] for name in sorted(found) if caller.may_call(name)]

    async def catalog(self, caller: Caller) -> Catalog:
        """The caller's organisation's catalog (targets, routers, attached guardrails), as cached."""
        return await self._catalog_of(caller.organization_id)

    async def _catalog_of(self, organization_id: int) -> Catalog:
        catalog: Catalog = await self._load(
            self.deployments, ("org", organization_id), self._load_catalog, organization_id
        )
        return catalog

    def _load_catalog(self, organization_id: int) -> Catalog:
        """The organisation's targets and routers (in a worker thread). A router whose name is also a
        deployment's is shadowed by the deployment (learning refuses such names; a deployment created
        later wins)."""
        targets = _load_targets(organization_id)
        try:
            routes = _load_routes(organization_id)
        except Exception:  # whatever broke there, the deployments keep answering, and the routers too
            log.exception(
                "could not read the routers of organisation %s; keeping the last read", organization_id
            )
            routes = self.last_routes.get(organization_id, {})
        else:
            self.last_routes[organization_id] = routes
        routers = {
            name: RouterTarget(
                route=route,
                candidates={
                    candidate.deployment: targets[candidate.deployment]
                    for candidate in route.candidates
                    if candidate.deployment in targets
                },
                embedder=targets.get(route.embedding_deployment) if route.embedding_deployment else None,
            )
            for name, route in routes.items()
            if name not in targets
        }
        try:
            attached = attached_policies(organization_id)
        except Exception as error:  # as for routers, the last read stays in force and the calls go on;
            # with none, nobody knows what must be checked, so nothing is sent unchecked
            last = self.last_guardrails.get(organization_id)
            if last is None:
                log.exception(
                    "could not read the guardrails of organisation %s; refusing its calls", organization_id
                )
                raise GuardrailsUnavailable(str(error)) from error
            log.exception(
                "could not read the guardrails of organisation %s; keeping the last read", organization_id
            )
            attached = last
        else:
            self.last_guardrails[organization_id] = attached
        return Catalog(targets, routers, attached)


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
        key_prefix=None if key is None else key.prefix,
    )


def _load_routes(organization_id: int) -> dict[str, routing.Route]:
    return routing.routes_of(organization_id)


def _load_targets(organization_id: int) -> dict[str, Target]:
    # A ready deployment scaled to zero has no endpoint: it is still a target, so that its request is
    # counted (the metric its KEDA trigger wakes on) and answered 503 "try again shortly".
    # A deployment whose model's subscription is not in force (cancelled, or changed license terms not
    # yet accepted) is no target: it answers 404 like any name the caller cannot call, until an owner or
    # admin accepts the terms (the REST API and the model's page say why).
    rows = (
        Deployment.objects.filter(
            organization_id=organization_id,
            status__in=(DeploymentStatus.READY, DeploymentStatus.UPDATING),
            model_card__in=Subscription.objects.in_force()
            .filter(organization_id=organization_id)
            .values("model_card"),
        )
        .select_related("model_card")
        .prefetch_related("adapters__model_card")
    )
    targets: dict[str, Target] = {}
    for row in rows:
        target = Target(
            deployment_id=row.pk,
            name=row.name,
            model_slug=row.model_card.slug,
            endpoints=tuple(row.endpoints),
            routes=row.model_card.routes,
            modalities_in=tuple(row.model_card.modalities_in),
        )
        targets[row.name] = target
        # Each adapter served beside the model: the same replicas, called (and metered) by its own name.
        for adapter in row.adapters.all():
            served = served_adapter_name(row.name, adapter.name)
            targets[served] = replace(target, name=served, model_slug=adapter.model_card.slug)
    return targets
