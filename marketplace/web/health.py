import logging

from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Readiness: the process answers and reaches its database and Redis. 503 names what is down."""
    problems = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        log.error("healthz: database: %s", error)  # details (host, user) stay in the log
        problems["database"] = "unreachable"
    try:
        cache.set("healthz", "ok", timeout=10)
        if cache.get("healthz") != "ok":
            problems["redis"] = "the value written was not read back"
    except RedisError as error:
        log.error("healthz: redis: %s", error)
        problems["redis"] = "unreachable"
    if problems:
        return JsonResponse({"status": "unavailable", "problems": problems}, status=503)
    return JsonResponse({"status": "ok"})
