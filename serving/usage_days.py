"""The daily usage roll-up (UsageDay): UsageRecords summed per organisation, deployment, API key and UTC
day, kept exactly equal to summing the records themselves.

1. The usage flush writes UsageRecords with `insert_records`: one statement inserts the records (a
   request_id already stored is skipped) and adds what it really inserted, grouped by day, to the
   roll-up (INSERT ... ON CONFLICT DO UPDATE SET n = n + EXCLUDED.n). Both happen in one transaction,
   so the roll-up never sees a record the table does not hold, nor misses one. A record saved one at a
   time through the ORM (`UsageRecord.objects.create`) is added by a post_save receiver.
2. A batch inserted twice (a flush that died before trimming the queue, then ran again) inserts nothing
   the second time and so adds nothing. Two flushes racing on one record: PostgreSQL lets one insert
   it; the other waits for that one to commit, skips the record, and adds nothing for it. Cells are
   added in key order, so two flushes adding to the same cells cannot deadlock.
3. Deleting a deployment or an API key nulls it in its UsageRecords (SET_NULL); the same deletion adds
   its roll-up rows to the rows without it and removes them (`merge_into_none`), as summing the records
   would. Deleting an organisation removes its roll-up with its records.
4. The migration that created the roll-up filled it from the records then stored (`REBUILD_SQL`);
   `rebuild` does the same again, should records ever be written another way.

Days are UTC days, as the cost report's and /api/usage/'s are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction
from django.db.models.signals import post_save, pre_delete
from django.dispatch import receiver

from marketplace.accounts.models import ApiKey, Organization
from serving.models import Deployment, UsageDay, UsageRecord

# The figures each roll-up row holds, as sums over a group of UsageRecords (the source table is `u`).
FIGURES = {
    "requests": "COUNT(*)",
    "errors": "COUNT(*) FILTER (WHERE u.status_code >= 400)",
    "prompt_tokens": "COALESCE(SUM(u.prompt_tokens), 0)",
    "completion_tokens": "COALESCE(SUM(u.completion_tokens), 0)",
    "latency_ms": "COALESCE(SUM(u.latency_ms), 0)",
    "time_to_first_token_ms": "COALESCE(SUM(u.time_to_first_token_ms), 0)",
    "time_to_first_token_count": "COUNT(u.time_to_first_token_ms)",
}
CELL = ("organization_id", "deployment_id", "api_key_id", "day")


def _add_grouped(source: str) -> str:
    """INSERT into the roll-up the records of `source` (a table or CTE name), grouped into cells and
    added to what the cells hold."""
    table = UsageDay._meta.db_table
    figures = ", ".join(FIGURES)
    sums = ", ".join(FIGURES.values())
    added = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in FIGURES)
    return f"""
        INSERT INTO {table} ({", ".join(CELL)}, {figures})
        SELECT u.organization_id, u.deployment_id, u.api_key_id, (u.created_at AT TIME ZONE 'UTC')::date,
               {sums}
        FROM {source} u
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT ({", ".join(CELL)}) DO UPDATE SET {added}
    """  # noqa: S608 (table and column names only)


def insert_records(records: Sequence[UsageRecord]) -> int:
    """Insert the records whose request_id is not stored yet, and add them to the roll-up, in one
    statement; returns how many were inserted. Idempotent (see the module's docstring)."""
    if not records:
        return 0
    fields = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    row = f"({', '.join(['%s'] * len(fields))})"
    params: list[Any] = []
    for record in sorted(records, key=lambda r: r.request_id):  # one lock order for every flush
        params += [f.get_db_prep_save(getattr(record, f.attname), connection) for f in fields]
    returned = ", ".join(["organization_id", "deployment_id", "api_key_id", "created_at", "status_code"])
    returned += ", prompt_tokens, completion_tokens, latency_ms, time_to_first_token_ms"
    sql = f"""
        WITH inserted AS (
            INSERT INTO {UsageRecord._meta.db_table} ({columns})
            VALUES {", ".join([row] * len(records))}
            ON CONFLICT (request_id) DO NOTHING
            RETURNING {returned}
        ), added AS ({_add_grouped("inserted")})
        SELECT COUNT(*) FROM inserted
    """  # noqa: S608 (table and column names only; values are parameters)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        (inserted,) = cursor.fetchone()
    return int(inserted)


# The roll-up of every stored record; the migration that created the table runs the same statement.
REBUILD_SQL = _add_grouped(UsageRecord._meta.db_table)


def rebuild() -> None:
    """Fill the roll-up again from every stored UsageRecord (the records are locked against writes
    meanwhile, so no flush adds to what is being rebuilt)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {UsageRecord._meta.db_table} IN SHARE MODE")
        cursor.execute(f"DELETE FROM {UsageDay._meta.db_table}")  # noqa: S608 (a table name)
        cursor.execute(REBUILD_SQL)


def merge_into_none(column: str, pk: int) -> None:
    """Move the roll-up rows of one deployment or key (`column` names which) into the rows without it,
    as nulling it in the UsageRecords moves their records there."""
    table = UsageDay._meta.db_table
    cells = [c if c != column else "NULL" for c in CELL]
    figures = ", ".join(FIGURES)
    added = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in FIGURES)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} ({", ".join(CELL)}, {figures})
            SELECT {", ".join(cells)}, {figures} FROM {table} WHERE {column} = %s
            ORDER BY {", ".join(CELL)}
            ON CONFLICT ({", ".join(CELL)}) DO UPDATE SET {added}
            """,  # noqa: S608 (table and column names only)
            [pk],
        )
        cursor.execute(f"DELETE FROM {table} WHERE {column} = %s", [pk])  # noqa: S608


def _deleting_organization(origin: Any) -> bool:
    """Whether a deletion started from organisations (which remove their roll-up rows themselves)."""
    model = getattr(origin, "model", type(origin))
    return isinstance(model, type) and issubclass(model, Organization)


@receiver(pre_delete, sender=Deployment, dispatch_uid="usage_days_deployment")
def _deployment_deleted(sender: Any, instance: Deployment, origin: Any = None, **kwargs: Any) -> None:
    if not _deleting_organization(origin):
        merge_into_none("deployment_id", instance.pk)


@receiver(pre_delete, sender=ApiKey, dispatch_uid="usage_days_api_key")
def _api_key_deleted(sender: Any, instance: ApiKey, origin: Any = None, **kwargs: Any) -> None:
    if not _deleting_organization(origin):
        merge_into_none("api_key_id", instance.pk)


@receiver(post_save, sender=UsageRecord, dispatch_uid="usage_days_record")
def _record_saved(
    sender: Any, instance: UsageRecord, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    """A record created one at a time (the flush inserts in bulk, which sends no signal). Records are
    not edited once written, so only creation adds."""
    if created and not raw:
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH u AS (SELECT * FROM {UsageRecord._meta.db_table} WHERE id = %s) {_add_grouped('u')}",  # noqa: S608
                [instance.pk],
            )
