"""Liveness of the processes that serve no HTTP (the Celery worker and beat): each touches a file while
its loop runs, and `entrypoint alive worker|beat` (the chart's liveness probe) checks the file is fresh.

A stuck worker or beat (a deadlock, a loop that no longer turns) stops touching its file and is
restarted. Unlike `celery inspect ping`, the check starts no Python process and does not fail while
Redis is briefly away, which would restart healthy workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.beat import PersistentScheduler

# Seconds between touches; the probe allows several missed ones (see the chart's values).
INTERVAL_SECONDS = 10.0


def path(process: str) -> Path:
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"marketplace-{process}.alive"  # noqa: S108


def touch(process: str) -> None:
    file = path(process)
    file.touch()
    os.utime(file)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Touches the worker's file from the worker's own timer, so it stops when the worker's loop does."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.entry: Any = None

    def start(self, worker: Any) -> None:
        touch("worker")
        self.entry = worker.timer.call_repeatedly(INTERVAL_SECONDS, touch, ("worker",), priority=10)

    def stop(self, worker: Any) -> None:
        if self.entry is not None:
            self.entry.cancel()
        path("worker").unlink(missing_ok=True)


class Scheduler(PersistentScheduler):
    """Celery beat's persistent scheduler, touching beat's file on every tick (at least every few
    seconds: the reconcile task is due that often)."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        touch("beat")
        interval: float = super().tick(*args, **kwargs)
        return min(interval, INTERVAL_SECONDS)
