"""Prometheus metrics of the gateway, by deployment. With PROMETHEUS_MULTIPROC_DIR set (gunicorn with
several workers), every worker writes its own files and /metrics adds them up."""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from serving.gateway import metrics_access

# `deployment_id` is what a scale-to-zero deployment's KEDA trigger watches (names repeat across
# organisations; ids do not); `deployment` is for people reading dashboards.
REQUESTS = Counter(
    "marketplace_gateway_requests_total",
    "Invocations by deployment, route and status",
    ["deployment_id", "deployment", "route", "status"],
)
TOKENS = Counter("marketplace_gateway_tokens_total", "Tokens by deployment and kind", ["deployment", "kind"])
LATENCY = Histogram(
    "marketplace_gateway_request_seconds", "Time to the last byte", ["deployment", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)  # fmt: skip
TTFT = Histogram(
    "marketplace_gateway_time_to_first_token_seconds", "Time to the first streamed token", ["deployment"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
ERRORS = Counter(
    "marketplace_gateway_errors_total", "Answers of 4xx/5xx by deployment", ["deployment", "status"]
)
METERING_ERRORS = Counter(
    "marketplace_gateway_metering_errors_total", "Metering writes to Redis that failed (tokens not counted)"
)
# A record Redis could not take is kept in the process's spool and pushed when Redis answers again
# (serving/gateway/metering.py); only one the spool could not keep either is lost.
USAGE_SPOOLED = Counter(
    "marketplace_gateway_usage_records_spooled_total", "Usage records kept on local disk while Redis was away"
)
USAGE_LOST = Counter(
    "marketplace_gateway_usage_records_lost_total", "Usage records Redis and the local spool both refused"
)

# Prompt routers (names repeat across organisations, like deployments' on dashboards).
ROUTED = Counter(
    "marketplace_gateway_routed_total",
    "Calls through a prompt router by router, the deployment that answered, and the router's mode",
    ["router", "deployment", "mode"],
)
ROUTER_EMBEDDING_FAILURES = Counter(
    "marketplace_gateway_router_embedding_failures_total",
    "Prompt embeddings a router's semantic predictor could not get (the router then answered untrained)",
    ["router"],
)
ROUTER_PREDICTION_FAILURES = Counter(
    "marketplace_gateway_router_prediction_failures_total",
    "Decisions whose predictor failed on the prompt (the router then answered untrained)",
    ["router"],
)
SHADOW_CALLS = Counter(
    "marketplace_gateway_router_shadow_calls_total",
    "Shadow calls of a router's other candidates, by outcome (called, capped, busy, failed)",
    ["router", "deployment", "outcome"],
)


def observe(
    deployment_id: int, deployment: str, route: str, status: int, seconds: float, ttft: float | None,
    prompt: int, completion: int,
) -> None:  # fmt: skip
    REQUESTS.labels(str(deployment_id), deployment, route, str(status)).inc()
    LATENCY.labels(deployment, route).observe(seconds)
    TOKENS.labels(deployment, "prompt").inc(prompt)
    TOKENS.labels(deployment, "completion").inc(completion)
    if ttft is not None:
        TTFT.labels(deployment).observe(ttft)
    if status >= 400:
        ERRORS.labels(deployment, str(status)).inc()


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format, for Prometheus only (serving/gateway/metrics_access.py)."""
    refused = metrics_access.refusal(request)
    if refused is not None:
        return refused
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        output = generate_latest(registry)
    else:
        output = generate_latest()
    return HttpResponse(output, content_type=CONTENT_TYPE_LATEST)


# Guardrails (serving/gateway/guardrails.py): every rule that acted on a call, and the denied-topic checks
# that could not run for want of an embedding.
GUARDRAIL_INTERVENTIONS = Counter(
    "marketplace_gateway_guardrail_interventions_total",
    "Guardrail interventions by guardrail, rule kind, direction (input/output) and action "
    "(masked/blocked/reported)",
    ["guardrail", "kind", "direction", "action"],
)
GUARDRAIL_EMBEDDING_FAILURES = Counter(
    "marketplace_gateway_guardrail_embedding_failures_total",
    "Texts whose denied topics a guardrail could not check (no embedding from its deployment)",
    ["guardrail"],
)
