#!/bin/sh
# The one image's entry points: `entrypoint web|gateway|worker|beat|migrate [extra arguments]`.
#
# Each process is exec'd, so it is the container's PID 1 and receives Kubernetes' SIGTERM itself:
# gunicorn and Celery both stop gracefully on it. Extra arguments go to gunicorn or Celery.
# Besides the platform's settings it reads (the first three mean what they mean for run.py):
#   PORT                where web and gateway listen (default 8000, as the chart's Services expect)
#   WEB_CONCURRENCY     gunicorn worker processes (gunicorn reads it itself; default 1)
#   WORKER_CONCURRENCY  Celery worker processes; unset, Celery starts one per CPU of the node, not of
#                       the container's share of it
#   LOG_LEVEL           Celery's log level, the variable the Django settings read too (default INFO)
#   TMPDIR              where beat keeps its schedule file (default /tmp, an emptyDir in the chart)
set -eu

usage() {
    echo "usage: entrypoint web|gateway|worker|beat|migrate [extra arguments] | alive worker|beat" >&2
    exit 64 # EX_USAGE
}

# prometheus_client's multiprocess mode keeps one file per gunicorn worker; files left by an earlier run
# of the container (an emptyDir outlives a container restart) would be added into this run's counters.
reset_metrics_dir() {
    if [ -n "${PROMETHEUS_MULTIPROC_DIR-}" ]; then
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db
    fi
}

# Django's error-level security checks (a weak SECRET_KEY with DEBUG off, marketplace/checks.py) stop a
# serving process before it starts, with the reason; warnings are printed and do not stop it.
check_settings() {
    python -m django check --tag security --fail-level ERROR >/dev/null
}

[ $# -ge 1 ] || usage
process=$1
shift

case "$process" in
web)
    check_settings
    reset_metrics_dir
    exec gunicorn marketplace.asgi:application --worker-class marketplace.server.UvicornWorker \
        --bind "0.0.0.0:${PORT:-8000}" "$@"
    ;;
gateway)
    export GATEWAY_ONLY=True
    check_settings
    reset_metrics_dir
    exec gunicorn marketplace.asgi:application --worker-class marketplace.server.UvicornWorker \
        --bind "0.0.0.0:${PORT:-8000}" "$@"
    ;;
worker)
    check_settings
    if [ -n "${WORKER_CONCURRENCY-}" ]; then
        set -- --concurrency "$WORKER_CONCURRENCY" "$@"
    fi
    exec celery --app marketplace worker --loglevel "${LOG_LEVEL:-INFO}" "$@"
    ;;
beat)
    check_settings
    exec celery --app marketplace beat --loglevel "${LOG_LEVEL:-INFO}" \
        --schedule "${TMPDIR:-/tmp}/celerybeat-schedule" "$@"
    ;;
alive)
    # The liveness probe of worker and beat: their file was touched within ALIVE_SECONDS (default 60).
    [ $# -eq 1 ] && { [ "$1" = worker ] || [ "$1" = beat ]; } || usage
    file="${TMPDIR:-/tmp}/marketplace-$1.alive"
    [ -f "$file" ] || { echo "$file does not exist: $1 has not started its loop" >&2; exit 1; }
    age=$(($(date +%s) - $(stat -c %Y "$file")))
    if [ "$age" -gt "${ALIVE_SECONDS:-60}" ]; then
        echo "$1 last touched $file ${age}s ago" >&2
        exit 1
    fi
    ;;
migrate)
    # Both steps are idempotent, so a retried Job (or two upgrades in a row) is harmless.
    python -m django migrate --noinput
    exec python -m django load_catalog
    ;;
*)
    usage
    ;;
esac
