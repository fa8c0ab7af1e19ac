from django.db import migrations, models


class Migration(migrations.Migration):
    """Meters write their steady stretches in batches: each says how far ReplicaHour holds its time.
    Until now every reading was written at once, so an existing meter is metered up to its reading."""

    dependencies = [
        ("serving", "0005_event_actor"),
    ]

    operations = [
        migrations.AddField(
            model_name="replicameter",
            name="metered_until",
            field=models.DateTimeField(
                help_text="ReplicaHour holds this deployment's time until here", null=True
            ),
        ),
        migrations.RunSQL(
            "UPDATE serving_replicameter SET metered_until = observed_at", migrations.RunSQL.noop
        ),
        migrations.AlterField(
            model_name="replicameter",
            name="metered_until",
            field=models.DateTimeField(help_text="ReplicaHour holds this deployment's time until here"),
        ),
    ]
