"""What the GPUs cost: metered replica-seconds, priced by the version of the price in force then.

Metering. The reconciler observes each deployment's ready replicas once per pass and hands the readings to
`record_replicas`. Each deployment's ReplicaMeter keeps its previous reading; the interval between two
readings is metered, and nothing outside such an interval is:

1. The interval [previous reading, this reading] is attributed the LOWER of the two counts, for all of it.
   Between two readings nothing is known, so nothing is guessed: a replica that started (or stopped)
   somewhere inside the interval is counted from the first reading on which both ends see it. The error
   is at most one reconcile interval per change of count, always an under-count, and a long gap (the
   reconciler or its workers down for an hour) is bounded by what both of its ends saw.
2. A reading on another instance type than the previous one meters nothing for that interval (the moment
   of the change is not known).
3. The interval is split at UTC hour boundaries into ReplicaHour rows, added to what the hour holds
   (exact: decimal seconds to the microsecond), each hour priced at the version in force at its start.
4. The same increments are added to the days' ReplicaDay rows with their cost, so reports read ~24 times
   fewer rows (a price added later rewrites the days it changes from their hours).
5. A reading with the same count as its meter's, less than METER_FLUSH after the meter was last written,
   only moves the meter's `observed_at`: every reading since `metered_until` saw that count, so the
   stretch is written whole when the count changes or it is METER_FLUSH old. The same seconds as pass
   by pass, with one timestamp written per steady deployment; hours and reports lag by at most that.

Idempotency and concurrency: a pass locks the meters of its deployments (in id order, so two workers
never deadlock) before reading them, and advances them in the same transaction as the hours it adds.
A second worker reconciling at once waits, then meters only from the first worker's reading onwards; a
reading older than the meter's (a slower worker's) is ignored. A worker that dies before committing
meters nothing, and the next reading covers its interval.

Prices. InstanceTypePrice versions (marketplace.catalog.models): the one in force for an hour is the latest
whose `effective_from` is at or before the hour's start. `add_price` adds a version and re-prices the hours
it governs (until the next version), so a correction of the past is reflected everywhere.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import (
    DecimalField,
    ExpressionWrapper,
    F,
    QuerySet,
    Sum,
    Value,
)

from marketplace.accounts.models import ApiKey, Organization
from marketplace.catalog.models import InstanceType, InstanceTypePrice, ModelCard
from serving.models import (
    Deployment,
    DeploymentDay,
    OrganizationDay,
    ReplicaDay,
    ReplicaHour,
    ReplicaMeter,
    ReplicaMonth,
    UsageDay,
    UsageMonth,
)

HOUR = timedelta(hours=1)
# A steady meter's time is written to its hours at least this often (and at once when its count changes):
# a pass over deployments that changed nothing moves one timestamp each, and reports lag by at most this.
METER_FLUSH = timedelta(minutes=5)
COST_PLACES = Decimal("0.000000001")  # ReplicaDay.cost_usd's
MICROSECONDS = Decimal(1_000_000)


@dataclass(frozen=True)
class ReplicaReading:
    """One deployment's ready replicas, as one reconcile pass saw them."""

    deployment_id: int
    organization_id: int
    instance_type_id: int
    ready_replicas: int


@dataclass(frozen=True)
class PriceVersion:
    effective_from: datetime
    hourly_price_usd: Decimal
    is_estimate: bool


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def split_by_hour(start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
    """[(hour, seconds of [start, end) inside it)], exact to the microsecond."""
    pieces = []
    cursor = start
    while cursor < end:
        hour = hour_start(cursor)
        stop = min(end, hour + HOUR)
        span = stop - cursor
        microseconds = (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
        pieces.append((hour, Decimal(microseconds) / MICROSECONDS))
        cursor = stop
    return pieces


class PriceBook:
    """Price versions of some instance types, to price many hours without a query each."""

    def __init__(self, instance_type_ids: Iterable[int]) -> None:
        ids = set(instance_type_ids)
        self.versions: dict[int, list[PriceVersion]] = defaultdict(list)
        for price in InstanceTypePrice.objects.filter(instance_type_id__in=ids).order_by("effective_from"):
            self.versions[price.instance_type_id].append(
                PriceVersion(price.effective_from, price.hourly_price_usd, price.is_estimate)
            )
        # An instance type with no versions at all (made without InstanceType.save) costs its catalog price.
        self.catalog = {
            pk: PriceVersion(datetime.min, price, estimate)
            for pk, price, estimate in InstanceType.objects.filter(pk__in=ids).values_list(
                "pk", "hourly_price_usd", "price_is_estimate"
            )
        }

    def at(self, instance_type_id: int, hour: datetime) -> PriceVersion:
        versions = self.versions.get(instance_type_id, [])
        index = bisect.bisect_right([v.effective_from for v in versions], hour) - 1
        if index >= 0:
            return versions[index]
        # Before the first version (or none): the earliest known price is the best there is.
        return versions[0] if versions else self.catalog[instance_type_id]


def _lock_instance_types(ids: Iterable[int], *, exclusive: bool) -> None:
    """Recording shares these locks; adding a price takes one alone, so the hours a pass adds are priced
    either before or after the new version is in place, never half."""
    ordered = sorted(set(ids))
    if not ordered:
        return
    mode = "UPDATE" if exclusive else "SHARE"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {InstanceType._meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR {mode}",  # noqa: S608
            [ordered],
        )


def record_replicas(readings: Sequence[ReplicaReading], *, at: datetime) -> int:
    """Meter the interval from each deployment's previous reading to this one (module docstring).

    Returns the number of ReplicaHour rows added to. Safe to call from several workers at once.
    """
    if not readings:
        return 0
    readings = sorted(readings, key=lambda r: r.deployment_id)
    ids = [r.deployment_id for r in readings]
    increments: dict[tuple[int, int, datetime], Decimal] = defaultdict(Decimal)
    organizations: dict[int, int] = {}
    with transaction.atomic():
        meters = _locked_meters(ids)
        if len(meters) < len(ids):
            # A first reading only opens an interval: its meter starts here (sorted: no deadlock between
            # workers inserting the same new meters).
            ReplicaMeter.objects.bulk_create(
                [
                    ReplicaMeter(
                        deployment_id=r.deployment_id,
                        instance_type_id=r.instance_type_id,
                        ready_replicas=r.ready_replicas,
                        observed_at=at,
                        metered_until=at,
                    )
                    for r in readings
                    if r.deployment_id not in meters
                ],
                ignore_conflicts=True,
            )
            meters = _locked_meters(ids)
        seen_again: list[int] = []  # the same count, recently written: only the reading's time moves
        advanced = []
        for reading in readings:
            meter = meters[reading.deployment_id]
            if at <= meter.observed_at:
                continue  # a newer reading is already in, or this is the first
            same_type = meter.instance_type_id == reading.instance_type_id
            if (
                same_type
                and meter.ready_replicas == reading.ready_replicas
                and at - meter.metered_until < METER_FLUSH
            ):
                seen_again.append(reading.deployment_id)
                continue
            key = (reading.deployment_id, meter.instance_type_id)
            # Every reading since metered_until saw the meter's count; the last interval counts the lower
            # end (on another instance type, nothing: when it changed is not known).
            spans = [(meter.metered_until, meter.observed_at, meter.ready_replicas)]
            if same_type:
                spans.append((meter.observed_at, at, min(meter.ready_replicas, reading.ready_replicas)))
            for start, end, replicas in spans:
                if replicas:
                    for hour, seconds in split_by_hour(start, end):
                        increments[(*key, hour)] += seconds * replicas
                    organizations[reading.deployment_id] = reading.organization_id
            advanced.append((reading.deployment_id, reading.instance_type_id, reading.ready_replicas))
        _advance_meters(advanced, seen_again, at)
        if not increments:
            return 0
        type_ids = {key[1] for key in increments}
        _lock_instance_types(type_ids, exclusive=False)
        prices = PriceBook(type_ids)
        rows = []
        days: dict[tuple[int, int, date], list[Any]] = {}
        for (deployment_id, instance_type_id, hour), seconds in sorted(increments.items()):
            price = prices.at(instance_type_id, hour)
            organization_id = organizations[deployment_id]
            rows.append(
                (organization_id, deployment_id, instance_type_id, hour, seconds, price.hourly_price_usd,
                 price.is_estimate)
            )  # fmt: skip
            cost = (seconds * price.hourly_price_usd / 3600).quantize(COST_PLACES)
            day = days.setdefault(
                (deployment_id, instance_type_id, hour.date()),
                [organization_id, Decimal(0), Decimal(0), False],
            )
            day[1] += seconds
            day[2] += cost
            day[3] = day[3] or price.is_estimate
        _add_hours(rows)
        _add_days([(o, d, i, day, seconds, cost, e) for (d, i, day), (o, seconds, cost, e) in days.items()])
    return len(rows)


def _locked_meters(ids: list[int]) -> dict[int, ReplicaMeter]:
    """The meters of these deployments, locked in id order (two workers never deadlock)."""
    meters = ReplicaMeter.objects.select_for_update().filter(deployment_id__in=ids).order_by("pk")
    return {m.deployment_id: m for m in meters}


def _advance_meters(advanced: list[tuple[int, int, int]], seen_again: list[int], at: datetime) -> None:
    """Move the (locked) meters to this reading: those written up to it in one statement, those only
    seen again (their time moves, nothing else) in another."""
    with connection.cursor() as cursor:
        if seen_again:
            cursor.execute(
                f"UPDATE {ReplicaMeter._meta.db_table} SET observed_at = %s WHERE deployment_id = ANY(%s)",  # noqa: S608
                [at, seen_again],
            )
        if advanced:
            values = ", ".join(["(%s, %s, %s)"] * len(advanced))
            cursor.execute(
                f"""
                UPDATE {ReplicaMeter._meta.db_table} AS m
                SET instance_type_id = v.instance_type_id, ready_replicas = v.ready_replicas,
                    observed_at = %s, metered_until = %s
                FROM (VALUES {values}) AS v (deployment_id, instance_type_id, ready_replicas)
                WHERE m.deployment_id = v.deployment_id
                """,  # noqa: S608 (table names and placeholders only)
                [at, at, *(value for row in advanced for value in row)],
            )


def _add_days(rows: list[tuple[Any, ...]]) -> None:
    """Add increments to ReplicaDay rows: the same seconds as their hours, each hour's share of cost at
    its price (rounded to COST_PLACES, so a day may differ from its hours' exact sum by far less than a
    cent; add_price rewrites days from their hours exactly)."""
    table = ReplicaDay._meta.db_table
    values = ", ".join(["(%s, %s, %s, %s::date, %s, %s, %s)"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (organization_id, deployment_id, instance_type_id, day, replica_seconds,
                                 cost_usd, price_is_estimate)
            VALUES {values}
            ON CONFLICT (deployment_id, instance_type_id, day) DO UPDATE SET
                replica_seconds = {table}.replica_seconds + EXCLUDED.replica_seconds,
                cost_usd = {table}.cost_usd + EXCLUDED.cost_usd,
                price_is_estimate = {table}.price_is_estimate OR EXCLUDED.price_is_estimate
            """,  # noqa: S608 (table names and placeholders only)
            [value for row in rows for value in row],
        )


def _add_hours(rows: list[tuple[Any, ...]]) -> None:
    table = ReplicaHour._meta.db_table
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (organization_id, deployment_id, instance_type_id, hour, replica_seconds,
                                 hourly_price_usd, price_is_estimate)
            VALUES {values}
            ON CONFLICT (deployment_id, instance_type_id, hour)
            DO UPDATE SET replica_seconds = {table}.replica_seconds + EXCLUDED.replica_seconds
            """,  # noqa: S608 (table names and placeholders only)
            [value for row in rows for value in row],
        )


def _roll_up_days(
    *,
    start: datetime,
    end: datetime,
    deployment_ids: Sequence[int] | None = None,
    instance_type_id: int | None = None,
) -> None:
    """Rewrite the ReplicaDay rows of the UTC days that [start, end) touches from their hours."""
    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    last = end.replace(hour=0, minute=0, second=0, microsecond=0)
    if last < end:
        last += timedelta(days=1)
    where = ["h.hour >= %s", "h.hour < %s"]
    params: list[Any] = [first, last]
    if deployment_ids is not None:
        where.append("h.deployment_id = ANY(%s)")
        params.append(list(deployment_ids))
    if instance_type_id is not None:
        where.append("h.instance_type_id = %s")
        params.append(instance_type_id)
    day_table, hour_table = ReplicaDay._meta.db_table, ReplicaHour._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {day_table} (organization_id, deployment_id, instance_type_id, day, replica_seconds,
                                     cost_usd, price_is_estimate)
            SELECT h.organization_id, h.deployment_id, h.instance_type_id, (h.hour AT TIME ZONE 'UTC')::date,
                   SUM(h.replica_seconds), SUM(h.replica_seconds * h.hourly_price_usd / 3600),
                   BOOL_OR(h.price_is_estimate)
            FROM {hour_table} h
            WHERE {" AND ".join(where)}
            GROUP BY 1, 2, 3, 4
            ON CONFLICT (deployment_id, instance_type_id, day) DO UPDATE SET
                replica_seconds = EXCLUDED.replica_seconds, cost_usd = EXCLUDED.cost_usd,
                price_is_estimate = EXCLUDED.price_is_estimate
            """,  # noqa: S608 (table names and placeholders only)
            params,
        )


def add_price(
    instance_type: InstanceType,
    *,
    hourly_price_usd: Decimal,
    effective_from: datetime,
    source: str,
    is_estimate: bool = False,
) -> InstanceTypePrice:
    """Add a price version and re-price the metered hours it governs: from its first whole hour until the
    next version's. Raises IntegrityError when the instance type already has a version from that moment."""
    with transaction.atomic():
        _lock_instance_types([instance_type.pk], exclusive=True)
        price = InstanceTypePrice.objects.create(
            instance_type=instance_type,
            hourly_price_usd=hourly_price_usd,
            effective_from=effective_from,
            source=source,
            is_estimate=is_estimate,
        )
        later = (
            InstanceTypePrice.objects.filter(instance_type=instance_type, effective_from__gt=effective_from)
            .order_by("effective_from")
            .values_list("effective_from", flat=True)
            .first()
        )
        hours = ReplicaHour.objects.filter(instance_type=instance_type, hour__gte=effective_from)
        if later is not None:
            hours = hours.filter(hour__lt=later)
        span = hours.values_list("hour", flat=True).order_by("hour")
        first, last = span.first(), span.last()
        if first is not None and last is not None:
            hours.update(hourly_price_usd=hourly_price_usd, price_is_estimate=is_estimate)
            _roll_up_days(start=first, end=last + HOUR, instance_type_id=instance_type.pk)
    return price


def hour_cost() -> ExpressionWrapper:
    """A ReplicaHour's cost in USD: replica-hours × the price in force then."""
    return ExpressionWrapper(
        F("replica_seconds") * F("hourly_price_usd") / Value(Decimal(3600)),
        output_field=DecimalField(max_digits=24, decimal_places=9),
    )


def cost_between(
    *, organization_id: int, since: datetime, until: datetime, deployment_id: int | None = None
) -> Decimal:
    """USD an organisation's deployments (or one of them) cost in the metered hours that start in
    [since, until): replica-hours × the price in force at each hour. Hour-granular: a month's budget
    (since and until on hour boundaries) is exact; an hour that started before `since` is not counted."""
    hours = ReplicaHour.objects.filter(organization_id=organization_id, hour__gte=since, hour__lt=until)
    if deployment_id is not None:
        hours = hours.filter(deployment_id=deployment_id)
    total = hours.aggregate(cost=Sum(hour_cost()))["cost"]
    return Decimal(total or 0).quantize(Decimal("0.000001"))


def cost_by_deployment(*, organization_id: int, since: datetime, until: datetime) -> dict[int, Decimal]:
    """{deployment id: USD} over the same hours as cost_between, in one query."""
    rows = (
        ReplicaHour.objects.filter(organization_id=organization_id, hour__gte=since, hour__lt=until)
        .values("deployment_id")
        .annotate(cost=Sum(hour_cost()))
    )
    return {row["deployment_id"]: Decimal(row["cost"] or 0).quantize(Decimal("0.000001")) for row in rows}


# Reports. Each side is grouped by ids in PostgreSQL (a re-created deployment under an old name, or a
# renamed one, stays a row of its own; no name is joined to every day of every deployment), summed exactly
# in numeric and turned into floats once per group; the names of the ids on the page are joined last.
# Costs come from ReplicaDay, tokens from the daily usage roll-up, UsageDay (only calls a deployment
# answered: a call no deployment took served nothing that cost anything), or from their coarser
# roll-ups (serving.cost_rollups), which hold exactly their sums:
#
# - by day (and organisation): OrganizationDay, one row a day;
# - by day and deployment (and model, organisation): DeploymentDay, one row per deployment a day; the
#   report by day then deployment is cut to a page by its days (OrganizationDay says how many rows each
#   day has), so a page reads its own rows only;
# - without day: the window's whole months from ReplicaMonth and UsageMonth, and its other days from the
#   daily rows: added, or, where the window holds most of a month, the month less the days outside it;
# - by day with instance type or key: the daily rows themselves.
GROUPS = ("day", "deployment", "model", "instance_type", "api_key", "organization")
COST_KEYS = {
    "day": "day",
    "deployment": "deployment_id",
    "model": "deployment__model_card_id",
    "instance_type": "instance_type_id",
    "organization": "organization_id",
}
TOKEN_KEYS = {
    "day": "day",
    "deployment": "deployment_id",
    "model": "deployment__model_card_id",
    "instance_type": "deployment__instance_type_id",
    "organization": "organization_id",
    "api_key": "api_key_id",
}
# What a group's id is shown as: (model, field).
LABELS: dict[str, tuple[type[Any], str]] = {
    "deployment": (Deployment, "name"),
    "model": (ModelCard, "slug"),
    "instance_type": (InstanceType, "slug"),
    "organization": (Organization, "slug"),
    "api_key": (ApiKey, "prefix"),
}
# The figures of every row, in the order CSV exports them after the group columns.
FIGURES = ("replica_hours", "cost_usd", "tokens", "cost_per_1k_tokens", "cost_share", "price_is_estimate")
# Each source's figures, summed per group (the source's rows are `t`): cost sides give (seconds, cost,
# estimated rows, rows), token sides (tokens, rows); `rows` says whether a group holds any daily row.
FIGURES_SQL: dict[type[Any], tuple[str, ...]] = {
    ReplicaDay: ("SUM(t.replica_seconds)", "SUM(t.cost_usd)", "COUNT(*) FILTER (WHERE t.price_is_estimate)",
                 "COUNT(*)"),
    ReplicaMonth: ("SUM(t.replica_seconds)", "SUM(t.cost_usd)", "SUM(t.estimated_days)", "SUM(t.days)"),
    UsageDay: ("SUM(t.prompt_tokens + t.completion_tokens)", "COUNT(*)"),
    UsageMonth: ("SUM(t.tokens)", "SUM(t.days)"),
}  # fmt: skip
# Each group's id in a source's row `t` (`d`: its deployment).
COST_KEYS_SQL = {
    "day": "t.day",
    "deployment": "t.deployment_id",
    "model": "d.model_card_id",
    "instance_type": "t.instance_type_id",
    "organization": "t.organization_id",
}
TOKEN_KEYS_SQL = {**COST_KEYS_SQL, "instance_type": "d.instance_type_id", "api_key": "t.api_key_id"}
ONE_TABLE_GROUPS = {"day", "deployment", "model", "organization"}  # what DeploymentDay can be grouped by


Sql = tuple[str, list[Any]]


@dataclass(frozen=True)
class CostScope:
    """Whose costs, over which UTC days: the organisations' deployments (only those named
    `deployment_names`, a limited key's, or with ids `deployment_ids`, when given)."""

    organizations: QuerySet[Organization]
    since: date
    until: date
    deployment_names: frozenset[str] | None = None
    deployment_ids: Sequence[int] | None = None

    @property
    def narrowed(self) -> bool:
        return self.deployment_names is not None or self.deployment_ids is not None

    @cached_property
    def organizations_sql(self) -> Sql:
        try:
            sql, params = self.organizations.values("pk").query.sql_with_params()
        except EmptyResultSet:  # organizations.none()
            return "SELECT NULL::bigint WHERE FALSE", []
        return sql, list(params)

    def grouped(self, model: type[Any], keys: Sequence[str], figures: Sequence[str], window: Sql) -> Sql:
        """`model`'s rows of this scope within `window` (a condition on `t`), grouped by `keys`
        (expressions on `t` and its deployment `d`): (keys..., figures...)."""
        where = [f"t.organization_id IN ({self.organizations_sql[0]})", window[0]]
        params = [*self.organizations_sql[1], *window[1]]
        if self.deployment_names is not None:
            where.append("d.name = ANY(%s)")
            params.append(sorted(self.deployment_names))
        if self.deployment_ids is not None:
            where.append("t.deployment_id = ANY(%s)")
            params.append(list(self.deployment_ids))
        if model in (UsageDay, UsageMonth):
            where.append("t.deployment_id IS NOT NULL")  # only calls a deployment answered
        joined = any("d." in part for part in [*keys, *where])
        join = f"JOIN {Deployment._meta.db_table} d ON d.id = t.deployment_id" if joined else ""
        sql = f"""
            SELECT {", ".join([*keys, *figures])} FROM {model._meta.db_table} t {join}
            WHERE {" AND ".join(where)} GROUP BY {", ".join(str(n + 1) for n in range(len(keys)))}
        """  # noqa: S608 (table and column names only; values are parameters)
        return sql, params


@dataclass(frozen=True)
class CostReport:
    rows: list[dict[str, Any]]  # the rows asked for (all, or a page of them)
    count: int  # rows in the whole report


def cost_report(
    scope: CostScope, groups: Sequence[str], *, offset: int = 0, limit: int | None = None
) -> CostReport:
    """One row per group with replica-hours, cost (USD), tokens served, cost per 1,000 tokens (idle time
    included: what the tokens really cost) and the group's share of the whole cost; rows ordered by
    their groups (names, then ids), `limit` of them from `offset`. A row grouped by deployment also
    says the deployment's id (two deployments may have had one name). At most two queries (by key,
    plus one per named group), whatever the number of deployments or days.

    By `api_key`: each deployment's cost within a row's span (a day, when grouped by day; else the window)
    is shared among the keys by the tokens they had it serve; a deployment that served no tokens in the
    span leaves its cost to the row whose api_key is None, as do tokens of deleted keys.
    """
    names = [*(g for g in groups if g != "api_key"), *(["api_key"] if "api_key" in groups else [])]
    if "api_key" in groups:
        page, labels, count, whole = _keyed_page(scope, names, offset=offset, limit=limit)
    elif "day" in groups and set(groups) <= ONE_TABLE_GROUPS:
        page, labels, count, whole = _one_table_page(scope, names, offset=offset, limit=limit)
    else:
        merged = _merged(*_sides(scope, names), len(names))
        page, labels, count, whole = _page_in_sql(merged, names, offset=offset, limit=limit)
    rows: list[dict[str, Any]] = []
    for values, (seconds, cost, tokens, estimate) in page:
        where = dict(zip(names, values, strict=True))
        row: dict[str, Any] = {}
        for group in groups:
            value = where[group]
            if group == "day":
                row["day"] = value.isoformat() if value is not None else None
            elif group == "deployment":
                row["deployment"] = labels["deployment"].get(value)
                row["deployment_id"] = value
            else:
                row[group] = labels[group].get(value)
        row["replica_hours"] = round(seconds / 3600, 3)
        row["cost_usd"] = round(cost, 6)
        row["tokens"] = tokens
        row["cost_per_1k_tokens"] = round(cost * 1000 / tokens, 6) if tokens else None
        row["cost_share"] = round(cost / whole, 4) if whole else None
        row["price_is_estimate"] = estimate
        rows.append(row)
    return CostReport(rows, count)


def window_periods(
    since: date, until: date, today: date
) -> tuple[list[date], list[tuple[date, date]], list[tuple[date, date]]]:
    """The days [since, until] as whole months (their first days), plus day ranges added and day ranges
    taken away (from months the window holds most of). Days after `today` are not metered yet, so they
    cost nothing to take away."""
    months: list[date] = []
    added: list[tuple[date, date]] = []
    removed: list[tuple[date, date]] = []
    first = since.replace(day=1)
    while first <= until:
        following = (first + timedelta(days=32)).replace(day=1)
        last = following - timedelta(days=1)
        start, end = max(since, first), min(until, last)
        inside = (end - start).days + 1
        before = (start - first).days
        after = max(0, (min(last, today) - end).days)
        if start == first and end == last:
            months.append(first)
        elif before + after < inside:
            months.append(first)
            if start > first:
                removed.append((first, start - timedelta(days=1)))
            if end < last:
                removed.append((end + timedelta(days=1), last))
        else:
            added.append((start, end))
        first = following
    return months, added, removed


def _windows(scope: CostScope, daily: bool) -> list[tuple[bool, Sql, int]]:
    """The windows whose rows, signed, make up the report: (monthly?, condition, sign). The daily rows,
    or whole months and day ranges (each range on its own, so it reads the (organisation, day) index)."""
    if daily:
        return [(False, ("t.day BETWEEN %s AND %s", [scope.since, scope.until]), 1)]
    months, added, removed = window_periods(scope.since, scope.until, datetime.now(UTC).date())
    windows: list[tuple[bool, Sql, int]] = []
    if months:
        windows.append((True, ("t.month = ANY(%s)", [months]), 1))
    for ranges, sign in ((added, 1), (removed, -1)):
        windows += [(False, ("t.day BETWEEN %s AND %s", [start, end]), sign) for start, end in ranges]
    return windows


def _side(
    scope: CostScope,
    windows: list[tuple[bool, Sql, int]],
    models: tuple[type[Any], type[Any]],
    keys: list[str],
    shown: list[str],
) -> Sql | None:
    """One side of the report grouped by `keys`: each window's rows grouped and signed, then summed,
    keeping the groups that hold any row. `shown`: the side's figures from the sums s0, s1, ... (the
    last is rows). `models`: the side's (daily, monthly) sources."""
    parts, params = [], []
    width = len(keys)
    count = len(FIGURES_SQL[models[0]])
    names = ", ".join([*(f"k{i}" for i in range(width)), *(f"s{j}" for j in range(count))])
    for monthly, window, sign in windows:
        model = models[1] if monthly else models[0]
        sql, piece_params = scope.grouped(model, keys, FIGURES_SQL[model], window)
        columns = [f"p.k{i}" for i in range(width)] + [f"{sign} * p.s{j}" for j in range(count)]
        parts.append(f"SELECT {', '.join(columns)} FROM ({sql}) AS p ({names})")  # noqa: S608
        params += piece_params
    if not parts:
        return None
    listed = ", ".join(f"u.k{i}" for i in range(width))
    sql = f"""
        SELECT {listed}, {", ".join(shown)}
        FROM ({" UNION ALL ".join(parts)}) AS u ({names})
        GROUP BY {listed}
        HAVING SUM(u.s{count - 1}) > 0
    """  # noqa: S608 (column names only; values are parameters)
    return sql, params


def _sides(scope: CostScope, groups: Sequence[str]) -> tuple[Sql | None, Sql | None]:
    """Each side grouped by the groups' ids (by key: by deployment too, and the token side by key
    last): (day or ids..., seconds, cost, estimate) and (day or ids..., tokens)."""
    plain = [g for g in groups if g != "api_key"]
    by_key = "api_key" in groups
    windows = _windows(scope, "day" in groups)
    keys = [COST_KEYS_SQL[g] for g in plain] + (["t.deployment_id"] if by_key else [])
    costs_side = _side(
        scope, windows, (ReplicaDay, ReplicaMonth), keys,
        ["SUM(u.s0)::float8", "SUM(u.s1)::float8", "SUM(u.s2) > 0"],
    )  # fmt: skip
    token_keys = [TOKEN_KEYS_SQL[g] for g in plain] + (["t.deployment_id", "t.api_key_id"] if by_key else [])
    tokens_side = _side(scope, windows, (UsageDay, UsageMonth), token_keys, ["SUM(u.s0)::bigint"])
    return costs_side, tokens_side


def _merged(costs_side: Sql | None, tokens_side: Sql | None, width: int) -> Sql | None:
    """Both sides joined on their ids: (k0.., seconds, cost, tokens, estimate)."""
    keys = [f"k{i}" for i in range(width)]
    listed = ", ".join(keys)
    if costs_side is None and tokens_side is None:
        return None
    # A side that can match nothing (a key scope naming no deployment) is the other side's columns with
    # no rows, so that the types still join.
    if costs_side is None:
        assert tokens_side is not None
        costs_side = (
            f"SELECT {listed}, 0::float8, 0::float8, FALSE FROM ({tokens_side[0]}) AS x ({listed}, n) "  # noqa: S608
            "WHERE FALSE",
            tokens_side[1],
        )
    if tokens_side is None:
        tokens_side = (
            f"SELECT {listed}, 0::bigint FROM ({costs_side[0]}) AS x ({listed}, s, c, e) WHERE FALSE",  # noqa: S608
            costs_side[1],
        )
    sql = f"""
        SELECT {", ".join(f"COALESCE(c.{k}, t.{k}) AS {k}" for k in keys)},
               COALESCE(c.seconds, 0) AS seconds, COALESCE(c.cost, 0) AS cost,
               COALESCE(t.tokens, 0) AS tokens, COALESCE(c.estimate, FALSE) AS estimate
        FROM ({costs_side[0]}) AS c ({listed}, seconds, cost, estimate)
        FULL JOIN ({tokens_side[0]}) AS t ({listed}, tokens)
            ON {" AND ".join(f"c.{k} = t.{k}" for k in keys)}
    """  # noqa: S608 (column names only; values are parameters)
    return sql, [*costs_side[1], *tokens_side[1]]


def _one_table_page(
    scope: CostScope, groups: Sequence[str], *, offset: int, limit: int | None
) -> tuple[list[tuple[tuple[Any, ...], list[Any]]], dict[str, dict[Any, Any]], int, float]:
    """A report by day (and deployment, model, organisation) from the roll-up that already holds both
    sides a day: OrganizationDay when it is by day (and organisation) of whole organisations, else
    DeploymentDay. By day then deployment, the page's days are found first from OrganizationDay's
    counts, and only their rows read."""
    whole_organizations = not scope.narrowed
    by_organization = whole_organizations and set(groups) <= {"day", "organization"}
    model = OrganizationDay if by_organization else DeploymentDay
    since, until = scope.since, scope.until
    known: tuple[int, float] | None = None
    if list(groups) == ["day", "deployment"] and whole_organizations:
        sql, params = scope.grouped(
            OrganizationDay, ["t.day"], ["SUM(t.deployments)", "SUM(t.cost_usd)::float8"],
            ("t.day BETWEEN %s AND %s", [since, until]),
        )  # fmt: skip
        counted = sorted(_fetch((sql, params)))
        known = (sum(n for _, n, _ in counted), sum(cost or 0.0 for _, _, cost in counted))
        before, skipped, first, last = 0, 0, None, None
        for day, n, _ in counted:
            if first is None and before + n > offset:
                first, skipped = day, before
            before += n
            last = day
            if limit is not None and before >= offset + limit:
                break
        if first is None or last is None:
            return [], {}, known[0], known[1]
        since, until, offset = first, last, offset - skipped
    figures = ["SUM(t.replica_seconds)::float8", "SUM(t.cost_usd)::float8", "SUM(t.tokens)::bigint",
               "SUM(t.estimated_days) > 0"]  # fmt: skip
    keys = [COST_KEYS_SQL[g] for g in groups]
    merged = scope.grouped(model, keys, figures, ("t.day BETWEEN %s AND %s", [since, until]))
    return _page_in_sql(merged, groups, offset=offset, limit=limit, known=known)


def _page_in_sql(
    merged: Sql | None,
    groups: Sequence[str],
    *,
    offset: int,
    limit: int | None,
    known: tuple[int, float] | None = None,
) -> tuple[list[tuple[tuple[Any, ...], list[Any]]], dict[str, dict[Any, Any]], int, float]:
    """The report's rows (`merged`: ids..., seconds, cost, tokens, estimate) named, ordered and cut to a
    page by PostgreSQL: only the page's rows reach Python (a day-by-deployment report of 1,000
    deployments over 90 days is 90,000 rows). Returns the page as (ids, [seconds, cost, tokens,
    estimate]), the names of its ids, the number of rows in the whole report and its whole cost
    (`known`, when the caller knows them already)."""
    if merged is None:
        return [], {}, 0, 0.0
    keys = [f"k{i}" for i in range(len(groups))]
    shown, joins, order = [], [], []
    for i, group in enumerate(groups):
        if group in LABELS:
            model, field = LABELS[group]
            joins.append(f"LEFT JOIN {model._meta.db_table} l{i} ON l{i}.id = r.k{i}")
            shown.append(f"l{i}.{field}")
            order += [f"l{i}.{field}", f"r.k{i}"]
        else:
            shown.append("NULL")
            order.append(f"r.k{i}")
    totals = "0, 0" if known else "COUNT(*) OVER (), SUM(r.cost) OVER ()"
    sql = f"""
        SELECT {", ".join(f"r.{k}" for k in keys)}, r.seconds, r.cost, r.tokens, r.estimate,
               {", ".join(shown)}, {totals}
        FROM ({merged[0]}) AS r ({", ".join(keys)}, seconds, cost, tokens, estimate)
        {" ".join(joins)}
        ORDER BY {", ".join(order)}
        LIMIT %s OFFSET %s
    """  # noqa: S608 (table and column names only; values are parameters)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*merged[1], limit, offset])
        fetched = cursor.fetchall()
    if not fetched and offset and not known:  # past the end: how long the report is still needs saying
        _, _, count, whole = _page_in_sql(merged, groups, offset=0, limit=1)
        return [], {}, count, whole
    width = len(keys)
    page = [
        (tuple(row[:width]), [row[width], row[width + 1], int(row[width + 2]), row[width + 3]])
        for row in fetched
    ]
    labels: dict[str, dict[Any, Any]] = {group: {} for group in groups if group in LABELS}
    for row in fetched:
        for i, group in enumerate(groups):
            if group in labels:
                labels[group][row[i]] = row[width + 4 + i]
    if known:
        return page, labels, known[0], known[1]
    count, whole = (fetched[0][-2], fetched[0][-1] or 0.0) if fetched else (0, 0.0)
    return page, labels, count, whole


def _keyed_page(
    scope: CostScope, names: Sequence[str], *, offset: int, limit: int | None
) -> tuple[list[tuple[tuple[Any, ...], list[Any]]], dict[str, dict[Any, Any]], int, float]:
    """The report with keys: shared out in Python (rows are few: keys × the other groups), ordered by
    names read afterwards, one query per named group."""
    tallies = _tally(scope, names)
    labels = {
        group: dict(
            LABELS[group][0]
            .objects.filter(pk__in={where[i] for where in tallies} - {None})
            .values_list("pk", LABELS[group][1])
        )
        for i, group in enumerate(names)
        if group in LABELS
    }

    def order(item: tuple[tuple[Any, ...], list[Any]]) -> tuple[Any, ...]:
        key: list[Any] = []
        for group, value in zip(names, item[0], strict=True):
            shown = labels[group].get(value) if group in labels else value
            key += [value is None, shown or "", value or 0]
        return tuple(key)

    ordered = sorted(tallies.items(), key=order)
    whole = sum(tally[1] for tally in tallies.values())
    page = ordered[offset : None if limit is None else offset + limit]
    return page, labels, len(ordered), whole


def _fetch(side: Sql | None) -> list[tuple[Any, ...]]:
    if side is None:
        return []
    with connection.cursor() as cursor:
        cursor.execute(*side)
        return list(cursor.fetchall())


def _tally(scope: CostScope, groups: Sequence[str]) -> dict[tuple[Any, ...], list[Any]]:
    """{group ids (api_key last): [replica-seconds, cost, tokens, estimate]}, from one query per side."""
    costs_side, tokens_side = _sides(scope, groups)
    tallies: dict[tuple[Any, ...], list[Any]] = {}
    served: dict[tuple[Any, ...], dict[int | None, int]] = defaultdict(dict)
    for *where, key, tokens in _fetch(tokens_side):
        served[tuple(where)][key] = tokens or 0
    for *where, seconds, cost, estimate in _fetch(costs_side):
        keys = served.get(tuple(where)) or {}
        total = sum(keys.values())
        shares = {key: tokens / total for key, tokens in keys.items()} if total else {None: 1.0}
        for key, share in shares.items():
            tally = tallies.setdefault((*where[:-1], key), [0.0, 0.0, 0, False])
            tally[0] += (seconds or 0.0) * share
            tally[1] += (cost or 0.0) * share
            tally[3] = tally[3] or estimate
    for cell, keys in served.items():
        for key, tokens in keys.items():
            tallies.setdefault((*cell[:-1], key), [0.0, 0.0, 0, False])[2] += tokens
    return tallies
