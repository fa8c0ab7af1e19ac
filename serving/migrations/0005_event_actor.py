import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# Entries written before who acted was recorded. A request's entry names the person who made the
# deployment; scaling, rolling out and removing were asked by a person or a budget, which nobody can
# tell now, so they say so rather than claim the platform did it.
NOT_RECORDED = "someone (not recorded)"
ASKED = ("Scaling to ", "Rolling out a change", "Removing the engine")


def name_earlier_actors(apps, schema_editor):
    event_model = apps.get_model("serving", "DeploymentEvent")
    requested = event_model.objects.filter(status="pending", message__startswith="Requested ")
    for event in requested.select_related("deployment__created_by").iterator():
        creator = event.deployment.created_by
        if creator is not None:
            event_model.objects.filter(pk=event.pk).update(actor=creator, actor_name=creator.username)
    asked = models.Q()
    for start in ASKED:
        asked |= models.Q(message__startswith=start)
    event_model.objects.filter(asked, actor_name="").update(actor_name=NOT_RECORDED)


class Migration(migrations.Migration):
    dependencies = [
        ("serving", "0004_replica_metering"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="deploymentevent",
            name="actor",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="deploymentevent",
            name="actor_name",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.RunPython(name_earlier_actors, migrations.RunPython.noop),
    ]
