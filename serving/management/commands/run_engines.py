import signal
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from serving.local import engine_env, state
from serving.local.supervisor import EngineSupervisor


class Command(BaseCommand):
    help = "Run the local backend's engine supervisor until SIGINT or SIGTERM (then stop every engine)."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        supervisor = EngineSupervisor(state.client(), Path(settings.DATA_DIR), engine_env.engine_dir())
        supervisor.run(stop)
