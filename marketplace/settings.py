"""Settings, read only from the environment (see the configuration table in README.md).

Every variable is validated here; a bad value stops start-up with a message naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import django_stubs_ext

from marketplace import env

# Lets classes such as ModelAdmin[Card] be subscripted at run time, as the type checker reads them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def _database(url: str) -> dict[str, object]:
    """DATABASE_URL (postgres://user:password@host:port/name?sslmode=...) as Django's DATABASES entry.

    A Unix socket directory may be given as `?host=/path` (what the embedded server hands out).
    """
    parsed = urlparse(url)
    query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    host = query.pop("host", None) or unquote(parsed.hostname or "")
    name = unquote(parsed.path.lstrip("/"))
    if not name:
        raise env.ConfigurationError(
            "DATABASE_URL must name a database, e.g. postgres://localhost/marketplace"
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "OPTIONS": query,
        # 0: under ASGI each request's database work runs in a thread of its own, so a kept connection
        # would outlive its thread and leak (Django's advice for ASGI; pool outside Django instead).
        "CONN_MAX_AGE": env.integer("DATABASE_CONN_MAX_AGE", 0, minimum=0),
        "CONN_HEALTH_CHECKS": True,
    }


def _proxy_ssl_header(header: str) -> tuple[str, str] | None:
    """SECURE_PROXY_SSL_HEADER as Django wants it: `X-Forwarded-Proto` → ("HTTP_X_FORWARDED_PROTO",
    "https"). Set it only behind a proxy that always sets (and never passes on) that header."""
    if not header:
        return None
    if not all(part.isalnum() for part in header.split("-")):
        raise env.ConfigurationError(
            f"SECURE_PROXY_SSL_HEADER must be a header name such as X-Forwarded-Proto, not {header!r}"
        )
    return ("HTTP_" + header.upper().replace("-", "_"), "https")


try:
    DEBUG = env.boolean("DEBUG", False)
    SECRET_KEY = env.string("SECRET_KEY", required=True)
    ALLOWED_HOSTS = env.string_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
    CSRF_TRUSTED_ORIGINS = env.string_list("CSRF_TRUSTED_ORIGINS", [])
    DATABASES = {
        "default": _database(env.url("DATABASE_URL", schemes=("postgres", "postgresql"), required=True))
    }
    REDIS_URL = env.url("REDIS_URL", schemes=("redis", "rediss", "unix"), required=True)
    LOG_LEVEL = env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
    API_PAGE_SIZE_MAX = env.integer("API_PAGE_SIZE_MAX", 100, minimum=1, maximum=1000)
    SECURE_COOKIES = env.boolean("SECURE_COOKIES", False)
    # Where people and apps reach the platform (https://marketplace.example.com), for the copy-paste
    # snippets; unset, the address the page was requested at (which behind a TLS proxy says http://).
    PUBLIC_URL = env.url("PUBLIC_URL", schemes=("http", "https")).rstrip("/")

    # HTTPS in production (README, "Production settings"), usually behind a TLS-terminating proxy that says
    # so in a header. /healthz and /metrics stay reachable over plain HTTP for probes and Prometheus.
    SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", False)
    SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 0, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env.boolean("SECURE_HSTS_PRELOAD", False)
    SECURE_PROXY_SSL_HEADER = _proxy_ssl_header(env.string("SECURE_PROXY_SSL_HEADER"))
    # Sign-in: after this many failures for one username, or from one address, within the window, the
    # sign-in is refused until the window has passed (marketplace/web/sign_in.py).
    SIGN_IN_MAX_FAILURES = env.integer("SIGN_IN_MAX_FAILURES", 5, minimum=1, maximum=1000)
    SIGN_IN_WINDOW_SECONDS = env.integer("SIGN_IN_WINDOW_SECONDS", 900, minimum=1, maximum=86400)

    # Serving: where deployments run.
    SERVING_BACKEND = env.choice("SERVING_BACKEND", "local", ("local", "kubernetes"))
    KUBERNETES_NAMESPACE = env.string("KUBERNETES_NAMESPACE", "marketplace-serving")
    KUBECONFIG = env.string("KUBECONFIG")  # unset: in-cluster configuration
    VLLM_IMAGE = env.string("VLLM_IMAGE", "vllm/vllm-openai:v0.33.0")
    # Tuning jobs on the cluster: the trainer image (the Dockerfile's `trainer` target: the engine image with
    # PEFT and TRL) and how long a training Job may hold its GPUs.
    TRAINING_IMAGE = env.string("TRAINING_IMAGE", "model-marketplace-trainer:v0.33.0")
    TRAINING_DEADLINE_SECONDS = env.integer("TRAINING_DEADLINE_SECONDS", 86_400, minimum=600, maximum=518_400)
    KEDA_ENABLED = env.boolean("KEDA_ENABLED", True)
    PROMETHEUS_URL = env.url(
        "PROMETHEUS_URL", schemes=("http", "https"), default="http://prometheus-operated.monitoring.svc:9090"
    )
    MODEL_CACHE_PVC = env.string("MODEL_CACHE_PVC")
    HF_TOKEN_SECRET = env.string("HF_TOKEN_SECRET", "huggingface-token")
    # Engines reach only these domains for media given by URL (image_url …); empty: none, so a caller
    # cannot make an engine fetch arbitrary addresses (data: URLs still work).
    ENGINE_MEDIA_DOMAINS = env.string_list("ENGINE_MEDIA_DOMAINS", [])
    # Who may call an engine pod (a NetworkPolicy per deployment): the platform's web and gateway pods,
    # found by these labels in GATEWAY_NAMESPACE (empty: KUBERNETES_NAMESPACE), and Prometheus.
    NETWORK_POLICY_ENABLED = env.boolean("NETWORK_POLICY_ENABLED", True)
    GATEWAY_NAMESPACE = env.string("GATEWAY_NAMESPACE")
    GATEWAY_POD_LABELS = env.labels("GATEWAY_POD_LABELS", {"app.kubernetes.io/part-of": "model-marketplace"})
    PROMETHEUS_NAMESPACE = env.string("PROMETHEUS_NAMESPACE", "monitoring")
    PROMETHEUS_POD_LABELS = env.labels("PROMETHEUS_POD_LABELS", {"app.kubernetes.io/name": "prometheus"})
    RECONCILE_INTERVAL_SECONDS = env.integer("RECONCILE_INTERVAL_SECONDS", 5, minimum=1, maximum=3600)
    DATA_DIR = env.string("DATA_DIR", str(BASE_DIR / ".data"))
    # Folders of the platform's disk custom models and adapters may be registered from: a path outside them
    # is refused, so no organisation reads another's weights or the machine's files.
    CUSTOM_MODEL_ROOTS = env.string_list(
        "CUSTOM_MODEL_ROOTS",
        [str(Path(DATA_DIR) / "custom-models"), str(Path(DATA_DIR) / "engine" / "models")],
    )
    # S3-compatible endpoints (https://minio.example.com) custom models may be registered from, besides AWS
    # S3 itself: the platform reads, and its engines stream, only from stores its admins named, so no
    # organisation can point the platform at an address inside the network.
    CUSTOM_MODEL_STORE_ENDPOINTS = env.string_list("CUSTOM_MODEL_STORE_ENDPOINTS", [])
    # Folders held by volumes (PersistentVolumeClaims of the serving namespace, by folder): a cluster's engine
    # pods mount the claim read-only at the same folder, so a model registered from under one is deployed
    # there like any other. Each is a folder custom models are registered from, beside CUSTOM_MODEL_ROOTS.
    CUSTOM_MODEL_VOLUMES = env.volume_claims("CUSTOM_MODEL_VOLUMES")
    CUSTOM_MODEL_ROOTS += [folder for folder in CUSTOM_MODEL_VOLUMES if folder not in CUSTOM_MODEL_ROOTS]

    # Gateway (the invoke API).
    GATEWAY_ONLY = env.boolean("GATEWAY_ONLY", False)
    # /metrics names every tenant's deployments: only a caller with this bearer token may read it (unset:
    # only loopback callers). Give it as METRICS_TOKEN_FILE from a mounted Secret in a cluster.
    METRICS_TOKEN = env.string("METRICS_TOKEN")
    if METRICS_TOKEN and len(METRICS_TOKEN) < 24:
        raise env.ConfigurationError(
            "METRICS_TOKEN must be at least 24 characters (e.g. `openssl rand -hex 32`)"
        )
    GATEWAY_CACHE_SECONDS = env.integer("GATEWAY_CACHE_SECONDS", 3, minimum=0, maximum=300)
    GATEWAY_CONNECT_TIMEOUT = env.integer("GATEWAY_CONNECT_TIMEOUT", 3, minimum=1, maximum=60)
    GATEWAY_READ_TIMEOUT = env.integer("GATEWAY_READ_TIMEOUT", 300, minimum=1, maximum=3600)
    GATEWAY_MAX_BODY_BYTES = env.integer("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
    # The largest image, video or audio sent inline in a chat or Responses request, decoded.
    GATEWAY_MAX_MEDIA_BYTES = env.integer("GATEWAY_MAX_MEDIA_BYTES", 2 * 1024 * 1024, minimum=1024)
    USAGE_FLUSH_INTERVAL_SECONDS = env.integer("USAGE_FLUSH_INTERVAL_SECONDS", 5, minimum=1, maximum=3600)
    # Where a gateway process keeps the usage records Redis could not take, until it can.
    GATEWAY_SPOOL_DIR = env.string("GATEWAY_SPOOL_DIR", str(Path(DATA_DIR) / "usage-spool"))
    # Failed authentications one client address may make per minute before it is answered 429.
    GATEWAY_AUTH_FAILURES_PER_MINUTE = env.integer("GATEWAY_AUTH_FAILURES_PER_MINUTE", 10, minimum=1)
    # A prompt router passes over a candidate whose least busy replica has more requests than this in hand
    # (outstanding from the gateway process, or waiting at the engine): serving/gateway/capacity.py.
    GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA = env.integer(
        "GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA", 32, minimum=0, maximum=100_000
    )

    # Learning from traffic: the object store for bulk data (S3-compatible when a bucket is named, else a
    # folder under DATA_DIR), and the invocation log's queue and writer.
    OBJECT_STORE_BUCKET = env.string("OBJECT_STORE_BUCKET")
    OBJECT_STORE_ENDPOINT_URL = env.url("OBJECT_STORE_ENDPOINT_URL", schemes=("http", "https"))
    OBJECT_STORE_REGION = env.string("OBJECT_STORE_REGION", "us-east-1")
    OBJECT_STORE_ACCESS_KEY_ID = env.string("OBJECT_STORE_ACCESS_KEY_ID")
    OBJECT_STORE_SECRET_ACCESS_KEY = env.string("OBJECT_STORE_SECRET_ACCESS_KEY")
    INVOCATION_LOG_QUEUE_MAX = env.integer("INVOCATION_LOG_QUEUE_MAX", 100_000, minimum=1)
    INVOCATION_LOG_WRITE_INTERVAL_SECONDS = env.integer(
        "INVOCATION_LOG_WRITE_INTERVAL_SECONDS", 10, minimum=1, maximum=3600
    )
    INVOCATION_LOG_WINDOW_MINUTES = env.integer("INVOCATION_LOG_WINDOW_MINUTES", 5, minimum=1, maximum=60)

    # Costs, budgets and idle deployments (marketplace/accounts/budgets.py, serving/idle.py). A stored secret
    # (a budget webhook's) is encrypted under SECRETS_ENCRYPTION_KEY, a Fernet key
    # (`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`); unset,
    # under a key derived from SECRET_KEY.
    SECRETS_ENCRYPTION_KEY = env.string("SECRETS_ENCRYPTION_KEY")
    if SECRETS_ENCRYPTION_KEY:
        try:
            from cryptography.fernet import Fernet

            Fernet(SECRETS_ENCRYPTION_KEY.encode())
        except ValueError:
            raise env.ConfigurationError(
                "SECRETS_ENCRYPTION_KEY must be a Fernet key: 32 bytes in URL-safe base64 (44 characters)"
            ) from None
    BUDGET_CHECK_INTERVAL_SECONDS = env.integer(
        "BUDGET_CHECK_INTERVAL_SECONDS", 300, minimum=10, maximum=86400
    )
    BUDGET_WEBHOOK_TIMEOUT_SECONDS = env.integer("BUDGET_WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1, maximum=60)
    # Attempts per alert, the first included; waits between them double from the backoff (10 s, 20 s, …).
    BUDGET_WEBHOOK_ATTEMPTS = env.integer("BUDGET_WEBHOOK_ATTEMPTS", 6, minimum=1, maximum=20)
    BUDGET_WEBHOOK_BACKOFF_SECONDS = env.integer(
        "BUDGET_WEBHOOK_BACKOFF_SECONDS", 10, minimum=0, maximum=3600
    )
    # Webhooks are tenants' URLs called from inside the platform's network: internal addresses (loopback,
    # private, link-local: the cluster's API, cloud metadata) are refused unless this allows them.
    BUDGET_WEBHOOK_PRIVATE_ADDRESSES = env.boolean("BUDGET_WEBHOOK_PRIVATE_ADDRESSES", False)
    # A ready deployment that served no request for this long is flagged idle.
    IDLE_AFTER_HOURS = env.integer("IDLE_AFTER_HOURS", 24, minimum=1, maximum=24 * 90)
except env.ConfigurationError as error:
    # Django would turn an exception here into a long traceback; one line names the variable.
    sys.stderr.write(f"Configuration error: {error}\n")
    raise SystemExit(2) from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "marketplace.catalog",
    "marketplace.accounts",
    "marketplace.subscriptions",
    "marketplace.web",
    "serving",
    "learning",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "marketplace.middleware.RefuseNulMiddleware",  # a NUL in a path, query or form: 400, never a 500
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
if GATEWAY_ONLY:
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]

# A gateway-only process serves just the invoke routes, through the fewest middlewares.
ROOT_URLCONF = "serving.gateway.only_urls" if GATEWAY_ONLY else "marketplace.urls"
# Bodies above this are refused by the gateway with a clear 413 before Django would raise.
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES + 1
WSGI_APPLICATION = "marketplace.wsgi.application"
ASGI_APPLICATION = "marketplace.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "marketplace.web.context_processors.navigation",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `collectstatic` gathers files for an image; unset, files are served from the apps and static/.
STATIC_ROOT = env.string("STATIC_ROOT") or None
# The project's own static/ folder exists in a source tree; an installed package (an image) has its
# files collected into STATIC_ROOT at build time instead.
STATICFILES_DIRS = [folder for folder in [BASE_DIR / "static"] if folder.is_dir()]
WHITENOISE_USE_FINDERS = STATIC_ROOT is None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "web:sign-in"
LOGIN_REDIRECT_URL = "web:catalog"
LOGOUT_REDIRECT_URL = "web:catalog"

SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
# Probes and Prometheus speak plain HTTP to the pods; everything else is redirected to HTTPS when asked.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# Counts failed sign-ins (web, API and admin alike) and refuses them past SIGN_IN_MAX_FAILURES.
AUTHENTICATION_BACKENDS = ["marketplace.web.sign_in.ThrottledModelBackend"]

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "marketplace.accounts.tenancy.WithinKeyScope",  # a key limited to some deployments reaches only them
    ],
    "DEFAULT_PAGINATION_CLASS": "marketplace.rest.Pagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "marketplace.rest.exception_handler",
    "PAGE_SIZE": 20,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Model Marketplace API",
    "DESCRIPTION": (
        "Browse the model catalog, subscribe to models, manage organisations, API keys and quotas."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # An evaluation's status gets a name of its own beside the other `status` choice sets.
    "ENUM_NAME_OVERRIDES": {"EvaluationStatusEnum": "learning.choices.EvaluationStatus"},
    # Every operation documents its error answers (400 with field errors, 401, 403, 404, 409, 429).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.rest.document_organization_filter",
        "marketplace.rest.document_error_answers",
        "serving.gateway.openapi.add_invoke_api",  # after the REST API's: its errors have their own format
    ],
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "marketplace.liveness:Scheduler"  # persistent, and touches beat's liveness file
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "reconcile-deployments": {
        "task": "serving.tasks.reconcile",
        "schedule": float(RECONCILE_INTERVAL_SECONDS),
    },
    "flush-usage": {"task": "serving.tasks.flush_usage", "schedule": float(USAGE_FLUSH_INTERVAL_SECONDS)},
    "write-invocation-logs": {
        "task": "learning.tasks.write_invocation_logs",
        "schedule": float(INVOCATION_LOG_WRITE_INTERVAL_SECONDS),
    },
    "expire-invocation-logs": {"task": "learning.tasks.expire_invocation_logs", "schedule": 3600.0},
    "resume-evaluations": {"task": "learning.tasks.resume_evaluations", "schedule": 60.0},
    "resume-router-trainings": {"task": "learning.tasks.resume_router_trainings", "schedule": 60.0},
    "resume-tuning-jobs": {"task": "learning.tasks.resume_tuning_jobs", "schedule": 60.0},
    "resume-router-samples": {"task": "learning.tasks.resume_router_samples", "schedule": 300.0},
    "check-budgets": {
        "task": "marketplace.accounts.tasks.check_budgets",
        "schedule": float(BUDGET_CHECK_INTERVAL_SECONDS),
    },
    # The nodes for the capacity page: only the worker holds the cluster credentials to read them.
    "remember-nodes": {"task": "serving.tasks.remember_nodes", "schedule": 60.0},
    "summarize-idle-deployments": {
        "task": "marketplace.accounts.tasks.summarize_idle_deployments",
        # Hourly, but each organisation's summary is written once per week (the first run of the week).
        "schedule": 3600.0,
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # One INFO line per proxied request would cost the gateway more than the request itself.
    "loggers": {"aiohttp.access": {"level": "WARNING"}},
}
