import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Liveness files for the processes that serve no HTTP (marketplace/liveness.py).
from marketplace.liveness import WorkerHeartbeat  # noqa: E402

app.steps["worker"].add(WorkerHeartbeat)
