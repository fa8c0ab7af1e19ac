"""The daily usage roll-up (serving.usage_days), filled from the usage records already stored, and an
index for a deployment's last request (serving.idle)."""

import django.db.models.deletion
from django.db import migrations, models

# Every stored record, summed per organisation, deployment, key and UTC day (what
# serving.usage_days.REBUILD_SQL says, frozen here as it stood).
BACKFILL = """
    INSERT INTO serving_usageday (organization_id, deployment_id, api_key_id, day, requests, errors,
        prompt_tokens, completion_tokens, latency_ms, time_to_first_token_ms, time_to_first_token_count)
    SELECT u.organization_id, u.deployment_id, u.api_key_id, (u.created_at AT TIME ZONE 'UTC')::date,
           COUNT(*), COUNT(*) FILTER (WHERE u.status_code >= 400), COALESCE(SUM(u.prompt_tokens), 0),
           COALESCE(SUM(u.completion_tokens), 0), COALESCE(SUM(u.latency_ms), 0),
           COALESCE(SUM(u.time_to_first_token_ms), 0), COUNT(u.time_to_first_token_ms)
    FROM serving_usagerecord u
    GROUP BY 1, 2, 3, 4
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_budgets_and_idle_summaries"),
        ("serving", "0006_replica_meter_metered_until"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageDay",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("day", models.DateField()),
                ("requests", models.PositiveIntegerField(default=0)),
                (
                    "errors",
                    models.PositiveIntegerField(
                        default=0, help_text="Requests answered with a status of 400 or more"
                    ),
                ),
                ("prompt_tokens", models.BigIntegerField(default=0)),
                ("completion_tokens", models.BigIntegerField(default=0)),
                (
                    "latency_ms",
                    models.BigIntegerField(default=0, help_text="The sum of the requests' latencies"),
                ),
                (
                    "time_to_first_token_ms",
                    models.BigIntegerField(default=0, help_text="The sum over requests that had one"),
                ),
                ("time_to_first_token_count", models.PositiveIntegerField(default=0)),
            ],
        ),
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(fields=["deployment", "created_at"], name="usage_deployment_time"),
        ),
        migrations.AddField(
            model_name="usageday",
            name="api_key",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="accounts.apikey",
            ),
        ),
        migrations.AddField(
            model_name="usageday",
            name="deployment",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="serving.deployment",
            ),
        ),
        migrations.AddField(
            model_name="usageday",
            name="organization",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="accounts.organization",
            ),
        ),
        migrations.AddIndex(
            model_name="usageday",
            index=models.Index(fields=["organization", "day"], name="usage_day_org_time"),
        ),
        migrations.AddConstraint(
            model_name="usageday",
            constraint=models.UniqueConstraint(
                fields=("organization", "deployment", "api_key", "day"),
                name="one_usage_day_per_key_and_deployment",
                nulls_distinct=False,
            ),
        ),
        migrations.RunSQL(
            # Records a flush inserts meanwhile wait for the roll-up to be filled, then add to it.
            ["LOCK TABLE serving_usagerecord IN SHARE MODE", BACKFILL],
            migrations.RunSQL.noop,
        ),
    ]
