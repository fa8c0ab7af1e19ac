"""Monthly cost budgets: who may set them, how crossings are found, alerted once, and sent to webhooks.

How a check works (`check_budget`, run for every budget by a periodic task, `check_budgets`):
1. What the budget covers has cost `spent` since the start of this month (UTC), by serving.costs.
2. Every threshold at or below spent / amount is a crossing. Each is inserted as a BudgetAlert; the
   unique constraint on (budget, month, threshold) lets exactly one insert succeed however many checkers
   race, and only the checker whose insert succeeded goes on. Crossing 50% and 80% in one pass alerts
   both, lowest first.
3. For each new alert, in the transaction that inserts it: a per-deployment budget writes a line in the
   deployment's history; at 100%, when the owner chose so, the covered deployments are scaled down to
   their minimum through serving.services (so quota and events stay right). Once it commits, the webhook
   delivery is enqueued (signed, retried with exponential backoff, every attempt kept as a
   WebhookDelivery); an enqueue that was lost is made again by a later check.
4. The banner every page shows for the organisation is refreshed in the cache (`banner`), so pages pay
   no query for it.

Webhook signatures follow Stripe's scheme: header `X-Marketplace-Signature: t=<unix time>,v1=<hex>`
where hex = HMAC-SHA256(secret, "<t>." + body). A receiver recomputes it over the raw body, compares in
constant time and refuses old timestamps (`verify_signature` does all three).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import exceptions

from marketplace.accounts import crypto
from marketplace.accounts.models import Budget, BudgetAlert, Organization, WebhookDelivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Marketplace-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, like Stripe's, not a secret)
MAX_AMOUNT_USD = Decimal("1000000000")
BANNER_KEY = "budgets:banner:{organization_id}"
BANNER_SECONDS = 40 * 86400  # longer than a month: the checker rewrites it on every pass


def month_start(now: datetime) -> datetime:
    """The first instant of `now`'s month, in UTC."""
    utc = now.astimezone(UTC)
    return utc.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _refuse(field: str, message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field: [message]})


# Who may do what.


def require_budget_owner(role: str | None, organization: Organization) -> None:
    """Budgets are set by an organisation's owners (and platform admins, whom tenancy counts as owners);
    everyone else in the organisation may read them."""
    if role != "owner":
        raise exceptions.PermissionDenied(
            f"Only an owner of '{organization.slug}' or a platform admin may change its budgets; ask an "
            "owner."
        )


# Writing budgets.


def check_thresholds(thresholds: list[int]) -> list[int]:
    """Whole percentages from 1 to 100, each once, in ascending order."""
    if not thresholds:
        raise _refuse("thresholds", "Give at least one percentage, e.g. [50, 80, 100].")
    wrong = [value for value in thresholds if not 1 <= value <= 100]
    if wrong:
        raise _refuse(
            "thresholds",
            f"Each threshold is a percentage of the amount from 1 to 100; {', '.join(map(str, wrong))} "
            "is not.",
        )
    return sorted(set(thresholds))


def webhook_for_readers(url: str) -> str:
    """What someone who may read a budget but not change it is shown of its webhook: where it goes, not
    its path, query or credentials, which often are the receiver's own secret (a Slack or Teams incoming
    webhook URL is all it takes to post there)."""
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


@transaction.atomic
def create_budget(
    *,
    organization: Organization,
    deployment: Any | None,
    monthly_amount_usd: Decimal,
    thresholds: list[int],
    webhook_url: str,
    scale_down_at_limit: bool,
    user: Any,
) -> tuple[Budget, str]:
    """A new budget and its webhook secret, which is returned here and never again (it is stored
    encrypted). One budget per organisation, and one per deployment."""
    what = f"the deployment {deployment.name}" if deployment is not None else organization.name
    duplicate = _refuse(
        "deployment", f"{what} already has a budget: change that one instead of adding another."
    )
    if Budget.objects.filter(organization=organization, deployment=deployment).exists():
        raise duplicate
    secret = new_webhook_secret()
    try:
        with transaction.atomic():  # a savepoint: a creation racing this one may insert first
            budget = Budget.objects.create(
                organization=organization,
                deployment=deployment,
                monthly_amount_usd=monthly_amount_usd,
                thresholds=check_thresholds(thresholds),
                webhook_url=webhook_url,
                webhook_secret_encrypted=crypto.encrypt(secret),
                scale_down_at_limit=scale_down_at_limit,
                created_by=user if user is not None and user.is_authenticated else None,
            )
    except IntegrityError:
        raise duplicate from None
    transaction.on_commit(lambda: refresh_banner(organization.pk))
    return budget, secret


BUDGET_SETTINGS = ("monthly_amount_usd", "thresholds", "webhook_url", "scale_down_at_limit")


def update_budget(budget: Budget, changes: dict[str, Any]) -> Budget:
    """Change the amount, thresholds, webhook or scale-down choice. Alerts already sent this month stay
    sent: raising the amount does not re-arm a crossed threshold until next month."""
    fields = {name: changes[name] for name in BUDGET_SETTINGS if name in changes}
    if "thresholds" in fields:
        fields["thresholds"] = check_thresholds(fields["thresholds"])
    for name, value in fields.items():
        setattr(budget, name, value)
    if fields:
        budget.save(update_fields=[*fields, "updated_at"])
        refresh_banner(budget.organization_id)
    return budget


def rotate_secret(budget: Budget) -> str:
    """A new webhook secret, returned once; deliveries from now on are signed with it."""
    secret = new_webhook_secret()
    Budget.objects.filter(pk=budget.pk).update(
        webhook_secret_encrypted=crypto.encrypt(secret), updated_at=timezone.now()
    )
    return secret


def delete_budget(budget: Budget) -> None:
    organization_id = budget.organization_id
    budget.delete()
    refresh_banner(organization_id)


# Checking budgets.


def spent(budget: Budget, now: datetime) -> Decimal:
    """What the budget covers has cost this month so far, in USD."""
    from serving.costs import cost_between  # serving builds on accounts, not the other way round

    return cost_between(
        organization_id=budget.organization_id,
        since=month_start(now),
        until=now,
        deployment_id=budget.deployment_id,
    )


def percent_of(amount_spent: Decimal, amount: Decimal) -> Decimal:
    return (amount_spent * 100 / amount).quantize(Decimal("0.1")) if amount > 0 else Decimal(0)


def _scope(budget: Budget) -> str:
    if budget.deployment_id is not None:
        return f"The deployment {budget.deployment.name}"  # type: ignore[union-attr]
    return budget.organization.name


def alert_message(budget: Budget, threshold: int, amount_spent: Decimal) -> str:
    percent = percent_of(amount_spent, budget.monthly_amount_usd)
    verb = "has used up" if threshold >= 100 else f"has passed {threshold}% of"
    return (
        f"{_scope(budget)} {verb} its monthly budget: ${amount_spent:,.2f} of "
        f"${budget.monthly_amount_usd:,.2f} ({percent}%) this month."
    )


def check_budget(budget: Budget, now: datetime | None = None) -> list[BudgetAlert]:
    """Alert every threshold the budget crossed this month and had not alerted yet; the new alerts.
    Safe to run in many workers at once: each crossing is alerted by exactly one of them."""
    now = now or timezone.now()
    amount_spent = spent(budget, now)
    month = month_start(now).date()
    # Exact, not against the rounded percentage a message shows: $49.96 of $100 has not crossed 50%.
    crossed = [t for t in budget.thresholds if amount_spent * 100 >= t * budget.monthly_amount_usd]
    already = set(
        BudgetAlert.objects.filter(budget=budget, month=month, threshold__in=crossed).values_list(
            "threshold", flat=True
        )
    )
    created = []
    for threshold in sorted(set(crossed) - already):
        try:
            with transaction.atomic():
                alert = BudgetAlert.objects.create(
                    budget=budget,
                    month=month,
                    threshold=threshold,
                    spent_usd=amount_spent.quantize(Decimal("0.01")),
                    amount_usd=budget.monthly_amount_usd,
                    message=alert_message(budget, threshold, amount_spent),
                )
                _after_alert(budget, alert)
        except IntegrityError:
            continue  # another checker alerted this crossing first
        created.append(alert)
    return created


def _after_alert(budget: Budget, alert: BudgetAlert) -> None:
    """What a new alert sets off, inside the transaction that made it."""
    if budget.deployment_id is not None:
        from serving import services

        deployment = budget.deployment
        assert deployment is not None
        services.record(deployment, deployment.status, alert.message)
    if budget.webhook_url:
        transaction.on_commit(lambda: enqueue_delivery(alert.pk))
    if alert.threshold >= 100 and budget.scale_down_at_limit:
        # In the alert's own transaction, not after it commits: a checker that dies in between must not
        # leave an alert that says the limit was reached and deployments that were never scaled down
        # (the alert exists, so no later check would scale them). The backend work is queued on commit.
        scale_down(alert.pk)


def enqueue_delivery(alert_id: int) -> bool:
    """Queue the alert's webhook delivery; False when the broker is away. The alert is committed already,
    so a lost enqueue (broker away, or the process gone before its commit callbacks ran) is picked up by
    the next checks' `requeue_lost_deliveries` rather than failing the pass."""
    from kombu.exceptions import OperationalError

    from marketplace.accounts import tasks

    try:
        tasks.deliver_budget_alert.delay(alert_id)
    except OperationalError as error:
        log.warning(
            "budget alert %s: delivery not queued (%s); the next check queues it again", alert_id, error
        )
        return False
    return True


# An alert this old with no delivery attempt at all lost its enqueue: a queued delivery runs well within it.
LOST_DELIVERY_AFTER = timedelta(minutes=10)


def requeue_lost_deliveries(now: datetime) -> int:
    """Queue again the deliveries of this month's alerts that never made an attempt; how many. Delivery
    is idempotent (an alert delivered already is not sent again)."""
    lost = BudgetAlert.objects.filter(
        month=month_start(now).date(),
        budget__webhook_url__gt="",
        deliveries__isnull=True,
        created_at__lte=timezone.now() - LOST_DELIVERY_AFTER,
    ).values_list("pk", flat=True)
    return sum(enqueue_delivery(alert_id) for alert_id in lost)


def check_budgets(now: datetime | None = None) -> dict[str, int]:
    """One pass over every budget; then every organisation with a budget gets its banner refreshed, and
    deliveries whose enqueue was lost are queued again."""
    now = now or timezone.now()
    counts = {"budgets": 0, "alerts": 0}
    organizations = set()
    for budget in Budget.objects.select_related("organization", "deployment"):
        counts["budgets"] += 1
        counts["alerts"] += len(check_budget(budget, now))
        organizations.add(budget.organization_id)
    for organization_id in organizations:
        refresh_banner(organization_id, now)
    counts["requeued"] = requeue_lost_deliveries(now)
    return counts


# Scaling down at 100%.


def minimum_scaling(deployment: Any) -> Any | None:
    """The deployment's scaling with its maximum brought down to its minimum (one replica for a
    scale-to-zero deployment, which still sleeps when idle); None when it is there already."""
    from serving import services
    from serving.choices import AutoscalingPolicy

    floor = deployment.min_replicas
    if deployment.autoscaling_policy == AutoscalingPolicy.SCALE_TO_ZERO:
        floor = max(floor, 1)
    if deployment.max_replicas <= floor:
        return None
    return services.Scaling(
        min_replicas=deployment.min_replicas,
        max_replicas=floor,
        policy=deployment.autoscaling_policy,
        target=deployment.autoscaling_target,
        idle_seconds=deployment.idle_seconds,
        scale_up_window_seconds=deployment.scale_up_window_seconds,
        scale_down_window_seconds=deployment.scale_down_window_seconds,
    )


def scale_down(alert_id: int) -> list[str]:
    """Scale the deployments the alert's budget covers down to their minimum; the names scaled. The
    alert's message says what was done, or what could not be."""
    from serving import services
    from serving.models import Deployment

    alert = BudgetAlert.objects.select_related("budget").get(pk=alert_id)
    budget = alert.budget
    deployments = Deployment.objects.live().filter(organization=budget.organization_id)
    if budget.deployment_id is not None:
        deployments = deployments.filter(pk=budget.deployment_id)
    scaled, refused = [], []
    for deployment in deployments.order_by("name"):
        scaling = minimum_scaling(deployment)
        if scaling is None:
            continue
        try:
            services.scale_deployment(deployment, scaling)
        except exceptions.APIException as error:
            refused.append(f"{deployment.name} ({_first_message(error.detail)})")
            continue
        scaled.append(deployment.name)
    notes = []
    if scaled:
        notes.append(f"Scaled down to their minimum: {', '.join(scaled)}.")
    if refused:
        notes.append(f"Could not scale down: {'; '.join(refused)}.")
    if notes:
        BudgetAlert.objects.filter(pk=alert.pk).update(message=f"{alert.message} {' '.join(notes)}")
    return scaled


def _first_message(detail: Any) -> str:
    while isinstance(detail, dict | list) and detail:
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return str(detail).rstrip(".")


# The banner.


@dataclass(frozen=True)
class BannerLine:
    level: str  # "warning" below 100%, "danger" at 100%
    message: str


def refresh_banner(organization_id: int, now: datetime | None = None) -> list[BannerLine]:
    """Write the organisation's banner for this month to the cache: the highest alert of each budget."""
    now = now or timezone.now()
    month = month_start(now).date()
    highest: dict[int, BudgetAlert] = {}
    for alert in BudgetAlert.objects.filter(budget__organization=organization_id, month=month).order_by(
        "threshold"
    ):
        highest[alert.budget_id] = alert
    lines = [
        BannerLine("danger" if alert.threshold >= 100 else "warning", alert.message)
        for alert in sorted(highest.values(), key=lambda a: -a.threshold)
    ]
    cache.set(
        BANNER_KEY.format(organization_id=organization_id),
        {"month": month.isoformat(), "lines": [(line.level, line.message) for line in lines]},
        BANNER_SECONDS,
    )
    return lines


def banner(organization_id: int, today: date | None = None) -> list[BannerLine]:
    """The banner as the last check left it (no query); nothing once the month it was written in is over.
    When the cache has none (Redis was flushed or restarted without persistence), it is rebuilt from this
    month's alerts, one query, and kept again, so a crossed budget never vanishes from the pages until the
    next check; an organisation without alerts keeps an empty banner, so it pays that query once too."""
    stored = cache.get(BANNER_KEY.format(organization_id=organization_id))
    if stored is None:
        refresh_banner(organization_id)
        stored = cache.get(BANNER_KEY.format(organization_id=organization_id))
    month = month_start(timezone.now()).date() if today is None else today.replace(day=1)
    if not stored or stored.get("month") != month.isoformat():
        return []
    return [BannerLine(level, message) for level, message in stored["lines"]]


# Webhooks.


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: the header's signature matches the body, and its time is recent (a replayed
    delivery is refused)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def payload(alert: BudgetAlert) -> dict[str, Any]:
    budget = alert.budget
    return {
        "type": "budget.threshold_crossed",
        "alert_id": alert.pk,
        "budget_id": budget.pk,
        "organization": budget.organization.slug,
        "deployment": budget.deployment.name if budget.deployment is not None else None,
        "month": f"{alert.month:%Y-%m}",
        "threshold_percent": alert.threshold,
        "spent_usd": str(alert.spent_usd),
        "amount_usd": str(alert.amount_usd),
        "message": alert.message,
        "created_at": alert.created_at.isoformat(),
    }


def private_address_refusal(url: str) -> str:
    """Why the platform will not call `url`, or "": its host resolves to a loopback, private, link-local
    or otherwise internal address, which a tenant must not reach from inside the platform's network
    (the cluster's API, cloud metadata), unless BUDGET_WEBHOOK_PRIVATE_ADDRESSES allows it. A host that
    does not resolve is left to the delivery to report (and retry)."""
    if settings.BUDGET_WEBHOOK_PRIVATE_ADDRESSES:
        return ""
    parsed = urllib.parse.urlsplit(url)
    try:
        infos = socket.getaddrinfo(parsed.hostname or "", parsed.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        return ""
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            return (
                f"The webhook's host {parsed.hostname} is an internal address ({address}), which the "
                "platform does not call: use a public address, or a platform admin sets "
                "BUDGET_WEBHOOK_PRIVATE_ADDRESSES=True."
            )
    return ""


class InternalPeer(OSError):
    """The connection reached an internal address although the host's name resolved to a public one when
    checked (DNS rebinding: a name that answers differently the second time)."""


def _refuse_internal_peer(sock: socket.socket | None, host: str) -> None:
    if sock is None or settings.BUDGET_WEBHOOK_PRIVATE_ADDRESSES:
        return
    address = ipaddress.ip_address(str(sock.getpeername()[0]).split("%")[0])
    if not address.is_global:
        sock.close()
        raise InternalPeer(
            f"The webhook's host {host} led to an internal address ({address}), which the platform does "
            "not call: use a public address, or a platform admin sets BUDGET_WEBHOOK_PRIVATE_ADDRESSES=True."
        )


class _PublicHTTPConnection(http.client.HTTPConnection):
    """Checks the address it really connected to, before anything is sent: the name was resolved again
    by the connection, so the earlier check alone can be fooled."""

    def connect(self) -> None:
        super().connect()
        _refuse_internal_peer(self.sock, self.host)


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_internal_peer(self.sock, self.host)


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> Any:
        if req.has_proxy():  # the peer is the proxy, which decides where its network may go
            return super().http_open(req)
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> Any:
        if getattr(req, "_tunnel_host", None):  # through a proxy, as above
            return super().https_open(req)
        return self.do_open(_PublicHTTPSConnection, req, context=getattr(self, "_context", None))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answers where it was asked; a redirect is reported as the failure it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects, _PublicHTTPHandler, _PublicHTTPSHandler)


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    attempt: int
    final: bool  # nothing more to try (delivered, no webhook any more, or a secret that cannot be read)


def deliver(alert_id: int) -> DeliveryOutcome:
    """POST the alert to its budget's webhook once, signed, and keep the attempt's outcome. Idempotent
    per (alert, attempt): the alert's row is locked from reading its attempts until the attempt's outcome
    is written, so a redelivered task running beside the first (or after it) waits, then finds the
    alert delivered and does not call the webhook again, or makes the next attempt under its own number.
    The lock is held for at most the webhook's timeout. A worker that dies mid-call writes nothing; the
    next attempt carries the same X-Marketplace-Delivery id, so the receiver can tell it is a repeat."""
    with transaction.atomic():
        return _deliver_locked(alert_id)


def _deliver_locked(alert_id: int) -> DeliveryOutcome:
    alert = (
        BudgetAlert.objects.select_for_update(of=("self",))
        .select_related("budget__organization", "budget__deployment")
        .filter(pk=alert_id)
        .first()
    )
    if alert is None or not alert.budget.webhook_url:
        return DeliveryOutcome(delivered=False, attempt=0, final=True)
    if alert.deliveries.filter(delivered=True).exists():
        return DeliveryOutcome(delivered=True, attempt=0, final=True)
    attempt = alert.deliveries.count() + 1
    url = alert.budget.webhook_url
    try:
        secret = crypto.decrypt(alert.budget.webhook_secret_encrypted)
    except crypto.UnreadableSecret as error:
        WebhookDelivery.objects.create(alert=alert, attempt=attempt, url=url, error=str(error))
        return DeliveryOutcome(delivered=False, attempt=attempt, final=True)
    refusal = private_address_refusal(url)
    if refusal:
        WebhookDelivery.objects.create(alert=alert, attempt=attempt, url=url, error=refusal)
        return DeliveryOutcome(delivered=False, attempt=attempt, final=True)
    body = json.dumps(payload(alert), sort_keys=True).encode()
    request = urllib.request.Request(  # noqa: S310 (the URL was checked to be http or https)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "model-marketplace-webhooks/1",
            SIGNATURE_HEADER: sign(secret, int(time.time()), body),
            "X-Marketplace-Delivery": f"{alert.pk}-{attempt}",
        },
    )
    started = time.monotonic()
    status_code: int | None = None
    problem = ""
    try:
        with _OPENER.open(request, timeout=settings.BUDGET_WEBHOOK_TIMEOUT_SECONDS) as response:
            status_code = response.status
    except urllib.error.HTTPError as failure:
        status_code = failure.code
        problem = f"The webhook answered {failure.code} {failure.reason}."
    except (urllib.error.URLError, TimeoutError, OSError) as failure:
        reason = getattr(failure, "reason", failure)
        if isinstance(reason, InternalPeer):  # refused, not failed: trying again changes nothing
            WebhookDelivery.objects.create(alert=alert, attempt=attempt, url=url, error=str(reason))
            return DeliveryOutcome(delivered=False, attempt=attempt, final=True)
        problem = f"The webhook could not be reached: {reason}."
    delivered = status_code is not None and 200 <= status_code < 300
    WebhookDelivery.objects.create(
        alert=alert,
        attempt=attempt,
        url=url,
        status_code=status_code,
        error=problem,
        delivered=delivered,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    if not delivered:
        log.warning("budget alert %s: webhook attempt %s failed: %s", alert.pk, attempt, problem)
    return DeliveryOutcome(delivered=delivered, attempt=attempt, final=delivered)


def backoff_seconds(attempt: int) -> float:
    """The wait after failed attempt `attempt` (1-based): the backoff, doubled after each failure."""
    return float(settings.BUDGET_WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1))
