"""The gunicorn worker class every web and gateway process runs: uvicorn's, with a graceful-shutdown
limit of its own.

On SIGTERM uvicorn waits for open connections before it sends the ASGI lifespan shutdown, in which the
gateway writes the usage still in flight (serving/gateway/asgi.py). A stream may run for minutes, so
without a limit gunicorn's graceful timeout would kill the worker first and that usage would be lost.
Past GRACEFUL_SECONDS uvicorn cancels the open requests (each stream closes its engine request and is
metered), then shuts down; keep it below gunicorn's --graceful-timeout (10 s in run.py, 30 s by default).
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker as _UvicornWorker

GRACEFUL_SECONDS = 8


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
    }
