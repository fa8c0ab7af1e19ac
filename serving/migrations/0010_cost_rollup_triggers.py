"""The triggers that keep the coarser cost and usage roll-ups (serving.cost_rollups), and the roll-ups
filled from the daily rows stored now. Apart from 0009: its unique constraints, which the additions
conflict on, are only created when that migration ends."""

from django.db import migrations

from serving import cost_rollups


class Migration(migrations.Migration):
    dependencies = [("serving", "0009_cost_rollups")]

    operations = [
        # Creating the triggers locks the daily tables against writes until this commits, so the fill
        # sees every row written before and the triggers every row written after.
        migrations.RunSQL([*cost_rollups.INSTALL_SQL, *cost_rollups.FILL_SQL], cost_rollups.REMOVE_SQL),
    ]
