import logging
import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Liveness files for the processes that serve no HTTP (marketplace/liveness.py).
from marketplace.liveness import WorkerHeartbeat  # noqa: E402

app.steps["worker"].add(WorkerHeartbeat)

# Celery's own INFO lines for every task run: "Task … received" (the worker's strategy) and "Task …
# succeeded in …" (the trace), and beat's "Scheduler: Sending due task …". With reconcile and the usage
# flush due every few seconds they fill the console forever and bury what matters. Failures are logged
# at WARNING or ERROR by the same loggers, so they still show; beat keeps its other lines ("beat:
# Starting…"). Tasks that change something say so themselves (serving/tasks.py). LOG_LEVEL=DEBUG (the
# worker's and beat's --loglevel) shows everything again.
QUIET_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
BEAT_LOGGER = "celery.beat"


class NotDueTaskLines(logging.Filter):
    """Drops beat's "Scheduler: Sending due task …" lines, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Scheduler: Sending due task")


_NOT_DUE_TASK_LINES = NotDueTaskLines()


def quiet_periodic_logs(level: str | None = None) -> None:
    """Silence Celery's per-task lines, unless the log level is DEBUG. Idempotent."""
    if (level or os.environ.get("LOG_LEVEL") or "INFO").upper() == "DEBUG":
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(BEAT_LOGGER).addFilter(_NOT_DUE_TASK_LINES)  # the same filter is added once


@after_setup_logger.connect
def _quiet_after_celery_sets_up_logging(**kwargs: Any) -> None:
    # Celery configures logging when a worker or beat starts, after this module is imported.
    quiet_periodic_logs(logging.getLevelName(kwargs.get("loglevel") or logging.INFO))
