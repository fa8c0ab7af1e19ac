"""The coarser cost and usage roll-ups (ReplicaMonth, UsageMonth, DeploymentDay, OrganizationDay) and the
PostgreSQL triggers that keep them equal to summing the daily rows they come from.

    ReplicaDay ──▶ ReplicaMonth          (deployment, instance type, month)
               └─▶ DeploymentDay ──▶ OrganizationDay
    UsageDay   ──▶ UsageMonth            (deployment, key, month; only calls a deployment answered)
               └─▶ DeploymentDay

Why triggers rather than Python beside each writer: the daily rows are written by metering, re-pricing,
the usage flush, merges on deletion, cascades of deleted deployments and organisations and raw SQL (the
migrations, the benchmark). A statement-level AFTER trigger sees every one of them, in the writer's own
transaction, with exactly the rows the statement changed (its transition tables). So:

1. Each statement that inserts, updates or deletes daily rows adds its change (new rows minus old rows,
   grouped by the coarser row) to the coarser rows, in the same transaction: a writer that rolls back
   changes nothing; one retried after a crash (the usage flush's batch, a metering pass) changes its
   daily rows only as often as it really does, and so the coarser ones too.
2. Additions are `INSERT ... ON CONFLICT DO UPDATE SET x = x + EXCLUDED.x`, in key order: two writers
   adding to one coarser row wait for each other and both count, and cannot deadlock on a pair of rows.
3. Each coarser row counts the daily rows it sums (`days`, `replica_days`, `usage_days`,
   `deployments`); one whose count reaches zero is deleted, so a report sees a row exactly where the
   daily tables have one (a day of failed calls only is a row of zero tokens, as before).
4. Updates and deletions only change rows that exist (locked in key order first): a row is created with
   the first daily row it sums and deleted with the last, except by a cascade (an organisation or a
   deployment deleted), which may delete the coarser rows before the daily ones; they must stay deleted.
5. DeploymentDay's own trigger keeps OrganizationDay, so an organisation's day is the sum of its
   deployments' days, and `deployments` is how many rows its report by day and deployment has that day.

Migration 0009 installs the triggers and fills the roll-ups from the daily rows then stored, in the
transaction that creates the triggers (which lock the daily tables against writes until it commits).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction


@dataclass(frozen=True)
class Target:
    """A coarser table: its key columns (as expressions over the changed rows `c`), the unique columns
    an addition conflicts on, its figures (name: expression over `c`, summed) and the counter that says
    whether a row holds anything."""

    table: str
    keys: dict[str, str]
    conflict: tuple[str, ...]
    figures: dict[str, str]
    counter: tuple[str, ...]
    where: str = "TRUE"


@dataclass(frozen=True)
class Source:
    """A table whose changes roll up: the columns its changed rows give (name: expression over the
    transition table's row, for a row counted with `sign`) and where they go."""

    table: str
    columns: dict[str, str]
    targets: tuple[Target, ...]


MONTH = "date_trunc('month', c.day::timestamp)::date"
SOURCES = (
    Source(
        "serving_replicaday",
        {
            "organization_id": "organization_id",
            "deployment_id": "deployment_id",
            "instance_type_id": "instance_type_id",
            "day": "day",
            "seconds": "{sign} replica_seconds",
            "cost": "{sign} cost_usd",
            "estimated": "{sign} price_is_estimate::int",
            "n": "{sign} 1",
        },
        (
            Target(
                "serving_replicamonth",
                {
                    "organization_id": "c.organization_id",
                    "deployment_id": "c.deployment_id",
                    "instance_type_id": "c.instance_type_id",
                    "month": MONTH,
                },
                ("deployment_id", "instance_type_id", "month"),
                {
                    "replica_seconds": "c.seconds",
                    "cost_usd": "c.cost",
                    "estimated_days": "c.estimated",
                    "days": "c.n",
                },
                ("days",),
            ),
            Target(
                "serving_deploymentday",
                {"organization_id": "c.organization_id", "deployment_id": "c.deployment_id", "day": "c.day"},
                ("deployment_id", "day"),
                {
                    "replica_seconds": "c.seconds",
                    "cost_usd": "c.cost",
                    "estimated_days": "c.estimated",
                    "replica_days": "c.n",
                },
                ("replica_days", "usage_days"),
            ),
        ),
    ),
    Source(
        "serving_usageday",
        {
            "organization_id": "organization_id",
            "deployment_id": "deployment_id",
            "api_key_id": "api_key_id",
            "day": "day",
            "tokens": "{sign} (prompt_tokens + completion_tokens)",
            "n": "{sign} 1",
        },
        (
            Target(
                "serving_usagemonth",
                {
                    "organization_id": "c.organization_id",
                    "month": MONTH,
                    "deployment_id": "c.deployment_id",
                    "api_key_id": "c.api_key_id",
                },
                ("organization_id", "month", "deployment_id", "api_key_id"),
                {"tokens": "c.tokens", "days": "c.n"},
                ("days",),
                where="c.deployment_id IS NOT NULL",
            ),
            Target(
                "serving_deploymentday",
                {"organization_id": "c.organization_id", "deployment_id": "c.deployment_id", "day": "c.day"},
                ("deployment_id", "day"),
                {"tokens": "c.tokens", "usage_days": "c.n"},
                ("replica_days", "usage_days"),
                where="c.deployment_id IS NOT NULL",
            ),
        ),
    ),
    Source(
        "serving_deploymentday",
        {
            "organization_id": "organization_id",
            "day": "day",
            "seconds": "{sign} replica_seconds",
            "cost": "{sign} cost_usd",
            "estimated": "{sign} estimated_days",
            "tokens": "{sign} tokens",
            "n": "{sign} 1",
        },
        (
            Target(
                "serving_organizationday",
                {"organization_id": "c.organization_id", "day": "c.day"},
                ("organization_id", "day"),
                {
                    "replica_seconds": "c.seconds",
                    "cost_usd": "c.cost",
                    "estimated_days": "c.estimated",
                    "tokens": "c.tokens",
                    "deployments": "c.n",
                },
                ("deployments",),
            ),
        ),
    ),
)


def _changes(source: Source, operation: str) -> str:
    """The rows a statement changed, new ones counted +1 and old ones -1."""
    parts = []
    for table, sign in (("new_rows", "+"), ("old_rows", "-")):
        if (table == "new_rows" and operation == "DELETE") or (table == "old_rows" and operation == "INSERT"):
            continue
        columns = ", ".join(f"{e.format(sign=sign)} AS {name}" for name, e in source.columns.items())
        parts.append(f"SELECT {columns} FROM {table}")  # noqa: S608 (column names only)
    return " UNION ALL ".join(parts)


def _add(source: Source, target: Target, operation: str) -> str:
    """Add the change to the target's rows, creating those it lacks (inserts and updates)."""
    columns = [*target.keys, *target.figures]
    chosen = [
        *(f"{e} AS {k}" for k, e in target.keys.items()),
        *(f"SUM({e})" for e in target.figures.values()),
    ]
    grouped = ", ".join(str(n + 1) for n in range(len(target.keys)))
    ordered = ", ".join(str(list(target.keys).index(k) + 1) for k in target.conflict)
    added = ", ".join(f"{f} = {target.table}.{f} + EXCLUDED.{f}" for f in target.figures)
    return f"""
        WITH c AS ({_changes(source, operation)})
        INSERT INTO {target.table} ({", ".join(columns)})
        SELECT {", ".join(chosen)} FROM c WHERE {target.where}
        GROUP BY {grouped} ORDER BY {ordered}
        ON CONFLICT ({", ".join(target.conflict)}) DO UPDATE SET {added};
    """  # noqa: S608 (table and column names only)


def _change_existing(source: Source, target: Target, operation: str) -> str:
    """Add the change (of updated or deleted rows) to the target's rows that still exist, locked first in
    key order; after a deletion, delete those left empty. A row missing here was deleted by a cascade
    earlier in the same deletion, and must stay deleted."""
    keys = list(target.keys)
    chosen = [
        *(f"{e} AS {k}" for k, e in target.keys.items()),
        *(f"SUM({e}) AS {f}" for f, e in target.figures.items()),
    ]
    grouped = ", ".join(str(n + 1) for n in range(len(keys)))
    # A key that may be null (api_key_id) matches null; `=` elsewhere, so the unique index is used.
    matches = " AND ".join(
        f"(t.{k} = x.{k} OR (t.{k} IS NULL AND x.{k} IS NULL))" if k == "api_key_id" else f"t.{k} = x.{k}"
        for k in keys
    )
    changes = _changes(source, operation)
    cells = f"""(SELECT DISTINCT {", ".join(f"{e} AS {k}" for k, e in target.keys.items())}
                 FROM ({changes}) c WHERE {target.where}) x"""  # noqa: S608 (column names only)
    taken = ", ".join(f"{f} = t.{f} + x.{f}" for f in target.figures)
    statements = f"""
        PERFORM 1 FROM {target.table} t JOIN {cells} ON {matches}
        ORDER BY {", ".join(f"t.{k}" for k in target.conflict)} FOR UPDATE OF t;
        UPDATE {target.table} t SET {taken}
        FROM (SELECT {", ".join(chosen)} FROM ({changes}) c WHERE {target.where} GROUP BY {grouped}) x
        WHERE {matches};
    """  # noqa: S608 (table and column names only)
    if operation == "DELETE":
        empty = " AND ".join(f"t.{counter} = 0" for counter in target.counter)
        statements += f"DELETE FROM {target.table} t USING {cells} WHERE {matches} AND {empty};"  # noqa: S608
    return statements


def _function(source: Source) -> str:
    branches = []
    for operation in ("INSERT", "UPDATE", "DELETE"):
        if operation == "INSERT":
            body = "".join(_add(source, target, operation) for target in source.targets)
        else:
            body = "".join(_change_existing(source, target, operation) for target in source.targets)
        branches.append(f"{'IF' if operation == 'INSERT' else 'ELSIF'} TG_OP = '{operation}' THEN {body}")
    return f"""
        CREATE OR REPLACE FUNCTION {source.table}_roll_up() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {" ".join(branches)}
            END IF;
            RETURN NULL;
        END $$;
    """


def _triggers(source: Source) -> list[str]:
    referencing = {
        "INSERT": "NEW TABLE AS new_rows",
        "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "DELETE": "OLD TABLE AS old_rows",
    }
    return [
        f"""CREATE TRIGGER {source.table}_{operation.lower()}_roll_up AFTER {operation} ON {source.table}
            REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {source.table}_roll_up()"""
        for operation, tables in referencing.items()
    ]


INSTALL_SQL = [statement for s in SOURCES for statement in (_function(s), *_triggers(s))]
REMOVE_SQL = [
    *(
        f"DROP TRIGGER IF EXISTS {s.table}_{op}_roll_up ON {s.table}"
        for s in SOURCES
        for op in ("insert", "update", "delete")
    ),
    *(f"DROP FUNCTION IF EXISTS {s.table}_roll_up()" for s in SOURCES),
]
# Every roll-up from the daily rows now stored: emptied, then each daily table "inserted" again through
# the same additions its trigger makes (DeploymentDay's own trigger fills OrganizationDay meanwhile).
ROLL_UP_TABLES = (
    "serving_replicamonth",
    "serving_usagemonth",
    "serving_deploymentday",
    "serving_organizationday",
)
FILL_SQL = [
    *(f"DELETE FROM {table}" for table in reversed(ROLL_UP_TABLES)),  # noqa: S608 (table names only)
    *(
        _add(source, target, "INSERT").replace("FROM new_rows", f"FROM {source.table}")
        for source in SOURCES[:2]
        for target in source.targets
    ),
]


def rebuild() -> None:
    """Fill the roll-ups again from the daily rows (locked against writes meanwhile). Only needed if
    rows were ever written with the triggers disabled."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE serving_replicaday, serving_usageday IN SHARE MODE")
        for statement in FILL_SQL:
            cursor.execute(statement)
