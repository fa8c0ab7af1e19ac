"""The Helm chart, rendered by the real helm binary (fetched by deploy/tools.py): `helm lint --strict`,
every object against the Kubernetes 1.29 and 1.37 schemas, names within 63 characters, the worker's Role
against the calls the kubernetes backend really makes, and values.schema.json refusing bad values with a
message that names them."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy.tools import helm_binary
from learning.training.kube_job import build_training_objects
from serving.choices import AutoscalingPolicy
from serving.spec import ClusterSettings
from tests.learning.test_training_job_manifests import SPEC as TRAINING_SPEC
from tests.serving.conftest import backend_for
from tests.serving.fake_kubernetes import NAMESPACE as FAKE_NAMESPACE
from tests.serving.fake_kubernetes import FakeKubernetes
from tests.serving.test_kubernetes_backend import make_spec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "marketplace"
RELEASE = "marketplace"
NAMESPACE = "marketplace"
KUBERNETES_VERSIONS = ("1.29", "1.37")
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

# The least a user must give: the three secrets. Everything else is the chart's defaults.
DATABASE_URL = "postgres://marketplace:db-password@db.internal:5432/marketplace"
DEFAULTS = (
    "--set", "secrets.secretKey.value=signing-key-for-tests",
    "--set", f"secrets.databaseUrl.value={DATABASE_URL}",
    "--set", "secrets.redisUrl.value=redis://:redis-password@redis.internal:6379/0",
)  # fmt: skip
PRODUCTION = ("--values", str(CHART / "examples" / "production-values.yaml"))
METRICS_TOKEN = "metrics-token-for-tests-0123456789"
# The optional objects the other two leave out, and web carrying the invoke API alone.
NO_GATEWAY = (
    *DEFAULTS,
    "--set", "gateway.enabled=false",
    "--set", "web.autoscaling.enabled=true",
    "--set", "ingress.enabled=true",
    "--set", "ingress.hosts[0]=marketplace.example.com",
    "--set", "serviceMonitor.enabled=true",
    "--set", f"secrets.metricsToken.value={METRICS_TOKEN}",
    "--set", "secrets.huggingfaceToken.value=hf_test_token",
)  # fmt: skip
SCENARIOS = {"defaults": DEFAULTS, "production": PRODUCTION, "no-gateway": NO_GATEWAY}
COMPONENTS = ("web", "gateway", "worker", "beat")
# The worker's ClusterRole (list nodes, for the capacity page): cluster-wide, so named for its namespace.
NODE_READER = f"{NAMESPACE}-marketplace-worker-nodes"

# prometheus-operator's ServiceMonitor is a CRD that kubernetes-validate has no schema for: this checks
# the fields the chart sets (as monitoring.coreos.com/v1 defines them) and refuses any other.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?"
                                "(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
                            },
                            "scrapeTimeout": {"type": "string"},
                            "bearerTokenSecret": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name", "key"],
                                "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


@functools.cache
def render(
    values: tuple[str, ...], kube_version: str = "1.37.0", release: str = RELEASE
) -> tuple[dict[str, Any], ...]:
    """The objects `helm template` renders (cached: tests must not change them)."""
    result = helm(
        "template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version, *values
    )
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def refusal(*values: str) -> str:
    """helm's error when it refuses to render with these values."""
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)
    assert result.returncode != 0, f"helm rendered {values} without complaint"
    return result.stderr


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: found {len(matches)}"
    return matches[0]


def kinds(objects: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container(deployment)["env"]}


# Lint and schemas.


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chart_passes_helm_lint_strict(scenario: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *SCENARIOS[scenario])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_passes_the_kubernetes_schema_strictly(scenario: str, version: str) -> None:
    for obj in render(SCENARIOS[scenario], f"{version}.0"):
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where} is not valid Kubernetes {version}: {error.message}")


def test_every_component_gets_its_objects() -> None:
    rendered = kinds(render(DEFAULTS))
    for component in COMPONENTS:
        assert ("Deployment", f"marketplace-{component}") in rendered
        assert ("PodDisruptionBudget", f"marketplace-{component}") in rendered
    for component in ("web", "gateway"):
        assert ("Service", f"marketplace-{component}") in rendered
    assert ("HorizontalPodAutoscaler", "marketplace-gateway") in rendered
    assert ("HorizontalPodAutoscaler", "marketplace-web") in kinds(render(NO_GATEWAY))
    assert {("ConfigMap", "marketplace-config"), ("Secret", "marketplace-secrets")} <= rendered
    assert {("Job", "marketplace-migrate"), ("Pod", "marketplace-test")} <= rendered
    assert {("ServiceAccount", "marketplace-worker"), ("Role", "marketplace-worker")} <= rendered


def test_optional_objects_are_left_out_by_default() -> None:
    rendered = {kind for kind, _ in kinds(render(DEFAULTS))}
    assert not rendered & {"Ingress", "ServiceMonitor", "Namespace"}


# Names.


@pytest.mark.parametrize(
    "overrides",
    [(), ("--set", "nameOverride=" + "n" * 63), ("--set", "fullnameOverride=" + "f" * 63)],
    ids=["release-name", "name-override", "fullname-override"],
)
def test_names_fit_in_63_characters_and_stay_distinct(overrides: tuple[str, ...]) -> None:
    release = "r" * 53  # the longest release name helm accepts
    objects = render((*PRODUCTION, *overrides), release=release)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert all(len(name) <= 63 and not name.endswith("-") for _, name in names), names
    assert len(set(names)) == len(names), names
    deployments = {name for kind, name in names if kind == "Deployment"}
    assert len(deployments) == len(COMPONENTS)
    for obj in objects:
        assert all(len(str(value)) <= 63 for value in obj["metadata"]["labels"].values()), obj["metadata"]


def test_names_are_release_chart_and_component() -> None:
    deployments = {o["metadata"]["name"] for o in render(("--set", "nameOverride=shop", *DEFAULTS))}
    assert "marketplace-shop-web" in deployments


# Image.


def test_image_tag_defaults_to_the_charts_app_version() -> None:
    objects = render(DEFAULTS)
    images = {
        c["image"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"model-marketplace:{APP_VERSION}"}


def test_every_component_runs_its_entry_point_of_the_one_image() -> None:
    objects = render(DEFAULTS)
    for component in COMPONENTS:
        main = container(find(objects, "Deployment", f"marketplace-{component}"))
        assert (main["command"], main["args"]) == (["entrypoint"], [component])
    migrate = find(objects, "Job", "marketplace-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert (migrate["command"], migrate["args"]) == (["entrypoint"], ["migrate"])


def test_pods_run_as_the_non_root_user_on_a_read_only_root() -> None:
    for obj in render(PRODUCTION):
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
        assert container(obj)["securityContext"]["readOnlyRootFilesystem"] is True
        tmp = {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108 (the pod's own emptyDir)
        assert tmp in container(obj)["volumeMounts"]


# Settings and secrets.


def readme_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Configuration") :].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)`", table, flags=re.MULTILINE))


def test_configmap_holds_only_variables_of_the_readme_table() -> None:
    data = find(render(PRODUCTION), "ConfigMap", "marketplace-config")["data"]
    assert set(data) <= readme_variables()
    assert data["SERVING_BACKEND"] == "kubernetes"
    assert data["KUBERNETES_NAMESPACE"] == "marketplace-serving"
    assert data["KEDA_ENABLED"] == "True"
    assert data["MODEL_CACHE_PVC"] == "model-cache"
    assert data["HF_TOKEN_SECRET"] == "huggingface-token"
    assert data["SECURE_COOKIES"] == "True"
    assert data["GATEWAY_MAX_BODY_BYTES"] == "4194304"  # a whole number, not 4.194304e+06


def test_custom_model_volumes_are_mounted_read_only_where_models_are_registered_and_named_to_the_platform():
    objects = render(PRODUCTION)
    data = find(objects, "ConfigMap", "marketplace-config")["data"]
    assert data["CUSTOM_MODEL_VOLUMES"] == "/models=shared-models"
    assert data["CUSTOM_MODEL_ROOTS"] == ""  # the defaults; the platform adds each volume's folder to them
    for component in COMPONENTS:
        pod = find(objects, "Deployment", f"marketplace-{component}")["spec"]["template"]["spec"]
        claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        mounts = [
            m
            for m in container({"spec": {"template": {"spec": pod}}})["volumeMounts"]
            if m["name"].startswith("custom-models")
        ]
        if component in (
            "web",
            "worker",
        ):  # web reads a model's files at registration, the worker a student's base
            assert claims == [{"claimName": "shared-models", "readOnly": True}]
            assert mounts == [{"name": "custom-models-0", "mountPath": "/models", "readOnly": True}]
        else:
            assert claims == [] and mounts == []


def test_a_custom_model_volume_needs_a_folder_and_a_claim_name() -> None:
    assert "claim" in refusal(*DEFAULTS, "--set", "serving.customModelVolumes[0].path=/models")
    bad = (
        "--set",
        "serving.customModelVolumes[0].path=/models",
        "--set",
        "serving.customModelVolumes[0].claim=Bad_Claim",
    )
    assert "claim" in refusal(*DEFAULTS, *bad)


def test_serving_namespace_defaults_to_the_release_namespace() -> None:
    data = find(render(DEFAULTS), "ConfigMap", "marketplace-config")["data"]
    assert data["KUBERNETES_NAMESPACE"] == NAMESPACE


@pytest.mark.parametrize("scenario", ["defaults", "production"])
def test_the_platform_accepts_the_rendered_settings_at_start_up(scenario: str) -> None:
    """The ConfigMap, as a pod would see it, passes the settings' own checks (they exit 2 on a bad value)."""
    data = find(render(SCENARIOS[scenario]), "ConfigMap", "marketplace-config")["data"]
    environment = {
        key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "SECRET_KEY")
    }
    environment.update(data, DATABASE_URL=DATABASE_URL, REDIS_URL="redis://redis.internal:6379/0")
    environment["ALLOWED_HOSTS"] = f"{data['ALLOWED_HOSTS']},10.0.0.7"  # what the pod appends
    environment.setdefault("SECRET_KEY", "x")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**environment, "DJANGO_SETTINGS_MODULE": "marketplace.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_allowed_hosts_cover_the_ingress_the_services_and_each_pods_ip() -> None:
    objects = render(PRODUCTION)
    hosts = find(objects, "ConfigMap", "marketplace-config")["data"]["ALLOWED_HOSTS"].split(",")
    assert "marketplace.example.com" in hosts
    assert {"marketplace-web", "marketplace-gateway.marketplace.svc.cluster.local", "localhost"} <= set(hosts)
    # Probes and Prometheus address a pod by its IP, which only the pod knows.
    web = env(find(objects, "Deployment", "marketplace-web"))
    assert web["ALLOWED_HOSTS"] == "$(ALLOWED_HOSTS),$(POD_IP)"
    assert web["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_csrf_trusted_origins_include_the_tls_hosts() -> None:
    data = find(render(PRODUCTION), "ConfigMap", "marketplace-config")["data"]
    assert data["CSRF_TRUSTED_ORIGINS"].split(",") == ["https://marketplace.example.com"]


def test_the_public_url_is_the_ingress_tls_host_and_empty_without_an_ingress() -> None:
    assert find(render(PRODUCTION), "ConfigMap", "marketplace-config")["data"]["PUBLIC_URL"] == (
        "https://marketplace.example.com"
    )
    assert find(render(DEFAULTS), "ConfigMap", "marketplace-config")["data"]["PUBLIC_URL"] == ""


def secret_sources(pod_owner: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """file name → (Secret, key) of the projected secrets volume."""
    (volume,) = [v for v in pod_owner["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
    return {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }


def test_secret_values_go_into_the_charts_secret_and_reach_pods_as_files() -> None:
    objects = render(DEFAULTS)
    assert set(find(objects, "Secret", "marketplace-secrets")["data"]) == {
        "SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
    }
    web = find(objects, "Deployment", "marketplace-web")
    assert secret_sources(web) == {
        name: ("marketplace-secrets", name) for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL")
    }
    assert env(web)["DATABASE_URL_FILE"] == "/var/run/secrets/marketplace/DATABASE_URL"
    assert "DATABASE_URL" not in env(web)


def test_existing_secrets_are_read_by_name_and_key() -> None:
    objects = render(
        (*DEFAULTS,
         "--set", "secrets.redisUrl.value=",
         "--set", "secrets.redisUrl.existingSecret=shared-redis",
         "--set", "secrets.redisUrl.key=url")
    )  # fmt: skip
    sources = secret_sources(find(objects, "Deployment", "marketplace-worker"))
    assert sources["REDIS_URL"] == ("shared-redis", "url")
    assert sources["SECRET_KEY"] == ("marketplace-secrets", "SECRET_KEY")
    assert "REDIS_URL" not in find(objects, "Secret", "marketplace-secrets")["data"]


def test_no_chart_secret_when_every_secret_is_an_existing_one() -> None:
    assert not [o for o in render(PRODUCTION) if o["kind"] == "Secret"]


def test_secret_values_never_appear_in_pod_specs() -> None:
    for obj in render(DEFAULTS):
        if obj["kind"] in ("Deployment", "Job", "Pod", "ConfigMap"):
            assert "db-password" not in json.dumps(obj), f"{obj['kind']} {obj['metadata']['name']}"


def test_huggingface_token_value_becomes_a_secret_in_the_serving_namespace() -> None:
    values = (*NO_GATEWAY, "--set", "serving.namespace=marketplace-serving")
    objects = render(values)
    secret = find(objects, "Secret", "marketplace-huggingface-token")
    assert secret["metadata"]["namespace"] == "marketplace-serving"
    assert set(secret["data"]) == {"token"}  # the key the engines read
    data = find(objects, "ConfigMap", "marketplace-config")["data"]
    assert data["HF_TOKEN_SECRET"] == "marketplace-huggingface-token"


def test_settings_or_secrets_changing_rolls_the_pods() -> None:
    def checksums(*values: str) -> dict[str, str]:
        web = find(render((*DEFAULTS, *values)), "Deployment", "marketplace-web")
        return dict(web["spec"]["template"]["metadata"]["annotations"])

    before = checksums()
    assert checksums("--set", "config.logLevel=DEBUG")["checksum/config"] != before["checksum/config"]
    assert checksums("--set", "secrets.secretKey.value=new")["checksum/secret"] != before["checksum/secret"]


# Components.


@pytest.mark.parametrize("component", ["web", "gateway"])
def test_http_components_are_ready_on_healthz_and_alive_while_listening(component: str) -> None:
    main = container(find(render(DEFAULTS), "Deployment", f"marketplace-{component}"))
    assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Not /healthz: a database outage would restart every pod and bring nothing back.
    assert main["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert main["startupProbe"]["tcpSocket"] == {"port": "http"}
    assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


@pytest.mark.parametrize("component", ["worker", "beat"])
def test_celery_components_are_probed_by_their_liveness_file(component: str) -> None:
    probe = container(find(render(DEFAULTS), "Deployment", f"marketplace-{component}"))["livenessProbe"]
    assert probe["exec"]["command"] == ["entrypoint", "alive", component]
    # The file is touched every 10 s and counts as stale after 60 s: a probe must not fire sooner.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60
    none = render((*DEFAULTS, "--set-json", f"{component}.livenessProbe=null"))
    assert "livenessProbe" not in container(find(none, "Deployment", f"marketplace-{component}"))
    probe = {"exec": {"command": ["celery", "--app", "marketplace", "inspect", "ping"]}, "periodSeconds": 60}
    objects = render((*DEFAULTS, "--set-json", f"{component}.livenessProbe={json.dumps(probe)}"))
    given = container(find(objects, "Deployment", f"marketplace-{component}"))["livenessProbe"]
    assert given["exec"] == probe["exec"] and given["periodSeconds"] == 60  # merged over the default


def test_gateway_runs_gateway_only_and_web_does_not() -> None:
    # GATEWAY_ONLY is set by `entrypoint gateway` itself (tests/deploy/test_entrypoints.py), so that the
    # image alone decides what each entry point serves.
    data = find(render(DEFAULTS), "ConfigMap", "marketplace-config")["data"]
    assert "GATEWAY_ONLY" not in data


def test_worker_concurrency_and_gunicorn_workers_are_set_explicitly() -> None:
    objects = render(PRODUCTION)
    assert env(find(objects, "Deployment", "marketplace-worker"))["WORKER_CONCURRENCY"] == "4"
    assert env(find(objects, "Deployment", "marketplace-gateway"))["WEB_CONCURRENCY"] == "4"


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler() -> None:
    objects = render(PRODUCTION)
    for component in ("web", "gateway"):
        assert "replicas" not in find(objects, "Deployment", f"marketplace-{component}")["spec"]
        hpa = find(objects, "HorizontalPodAutoscaler", f"marketplace-{component}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"marketplace-{component}"
    assert find(objects, "Deployment", "marketplace-worker")["spec"]["replicas"] == 2


def test_beat_runs_once_and_is_never_doubled_by_a_rollout() -> None:
    beat = find(render(DEFAULTS), "Deployment", "marketplace-beat")["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_has_a_disruption_budget_selecting_its_pods(component: str) -> None:
    objects = render(DEFAULTS)
    budget = find(objects, "PodDisruptionBudget", f"marketplace-{component}")["spec"]
    pod_labels = find(objects, "Deployment", f"marketplace-{component}")["spec"]["template"]["metadata"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels["labels"].items()
    assert budget["maxUnavailable"] == 1  # one pod may go: a single beat never blocks a node drain


def test_topology_spread_gets_the_components_selector() -> None:
    web = find(render(PRODUCTION), "Deployment", "marketplace-web")["spec"]["template"]["spec"]
    (constraint,) = web["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "web"


def test_only_the_worker_mounts_a_service_account_token() -> None:
    objects = render(DEFAULTS)
    for component in COMPONENTS:
        pod = find(objects, "Deployment", f"marketplace-{component}")["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (component == "worker")
    worker = find(objects, "Deployment", "marketplace-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == "marketplace-worker"


# The migrations Job.


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook_with_the_same_settings() -> None:
    objects = render(DEFAULTS)
    job = find(objects, "Job", "marketplace-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    settings = find(objects, "ConfigMap", "marketplace-config")["data"]
    job_env = env(job)
    assert {name: job_env[name] for name in settings} == settings


def test_the_migrations_hook_brings_its_own_copy_of_inline_secrets_first() -> None:
    objects = render(DEFAULTS)
    job = find(objects, "Job", "marketplace-migrate")
    secret = find(objects, "Secret", "marketplace-migrate")
    # Hooks run before the release's own Secret exists; a lower weight creates this one first.
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert "hook-succeeded" in secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert {source for source, _ in secret_sources(job).values()} == {"marketplace-migrate"}


# Ingress, monitoring, helm test.


def ingress_routes(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    (rule,) = ingress["spec"]["rules"]
    return {path["path"]: path["backend"]["service"]["name"] for path in rule["http"]["paths"]}


def test_ingress_sends_the_invoke_api_to_the_gateway_and_the_rest_to_web() -> None:
    assert ingress_routes(render(PRODUCTION)) == {
        "/v1": "marketplace-gateway",
        "/model": "marketplace-gateway",
        "/": "marketplace-web",
    }


def test_ingress_sends_everything_to_web_without_a_gateway() -> None:
    assert set(ingress_routes(render(NO_GATEWAY)).values()) == {"marketplace-web"}


def test_service_monitors_scrape_metrics_of_web_and_gateway() -> None:
    monitors = [o for o in render(PRODUCTION) if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"marketplace-web", "marketplace-gateway"}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_service_monitors_send_the_metrics_token_from_its_secret() -> None:
    for values, secret, key in (
        (PRODUCTION, "marketplace-secrets", "METRICS_TOKEN"),  # an existing Secret
        (NO_GATEWAY, "marketplace-secrets", "METRICS_TOKEN"),  # the chart's own, from the value
    ):
        for monitor in (o for o in render(values) if o["kind"] == "ServiceMonitor"):
            (endpoint,) = monitor["spec"]["endpoints"]
            assert endpoint["bearerTokenSecret"] == {"name": secret, "key": key}


def test_the_metrics_token_value_is_stored_in_the_charts_secret_only() -> None:
    objects = render(NO_GATEWAY)
    assert "METRICS_TOKEN" in find(objects, "Secret", "marketplace-secrets")["data"]
    assert "METRICS_TOKEN" not in find(objects, "Secret", "marketplace-migrate")["data"]
    assert METRICS_TOKEN not in json.dumps([o for o in objects if o["kind"] != "Secret"])


def test_only_web_and_gateway_read_the_metrics_token_as_a_file() -> None:
    objects = render(PRODUCTION)
    for component in COMPONENTS:
        deployment = find(objects, "Deployment", f"marketplace-{component}")
        sources = secret_sources(deployment)
        if component in ("web", "gateway"):
            assert sources["METRICS_TOKEN"] == ("marketplace-secrets", "METRICS_TOKEN")
            assert env(deployment)["METRICS_TOKEN_FILE"] == "/var/run/secrets/marketplace/METRICS_TOKEN"
        else:
            assert "METRICS_TOKEN" not in sources and "METRICS_TOKEN_FILE" not in env(deployment)


def test_without_a_metrics_token_no_pod_reads_one() -> None:
    for deployment in (o for o in render(DEFAULTS) if o["kind"] == "Deployment"):
        assert "METRICS_TOKEN" not in secret_sources(deployment)
        assert "METRICS_TOKEN_FILE" not in env(deployment)


def test_production_values_set_https_and_check_deploy_is_clean_with_them() -> None:
    data = find(render(PRODUCTION), "ConfigMap", "marketplace-config")["data"]
    assert data["SECURE_SSL_REDIRECT"] == "True" and data["SECURE_PROXY_SSL_HEADER"] == "X-Forwarded-Proto"
    environment = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")}
    environment.update(
        data,
        DATABASE_URL=DATABASE_URL,
        REDIS_URL="redis://redis.internal:6379/0",
        SECRET_KEY="kV9-3qLr_8ZtYw2mXc7NbH4uJ6sD1fGpQe5aT0yRi_UoPlKjMnBvCxZaSdFgH",
        METRICS_TOKEN=METRICS_TOKEN,
        DJANGO_SETTINGS_MODULE="marketplace.settings",
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", "check", "--deploy", "--tag", "security", "--fail-level", "WARNING"],
        env=environment, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_engines_admit_exactly_this_releases_web_and_gateway_pods_and_prometheus() -> None:
    """The serving settings the worker builds each deployment's NetworkPolicy from select the pods of
    web and gateway of this release, and not the worker's or beat's."""
    objects = render(PRODUCTION)
    data = find(objects, "ConfigMap", "marketplace-config")["data"]
    assert data["NETWORK_POLICY_ENABLED"] == "True"
    assert data["GATEWAY_NAMESPACE"] == NAMESPACE
    wanted = dict(pair.split("=") for pair in data["GATEWAY_POD_LABELS"].split(","))
    for component in COMPONENTS:
        pod_labels = find(objects, "Deployment", f"marketplace-{component}")["spec"]["template"]["metadata"][
            "labels"
        ]
        selected = wanted.items() <= pod_labels.items() and pod_labels["app.kubernetes.io/component"] in (
            "web",
            "gateway",
        )
        assert selected == (component in ("web", "gateway")), component
    assert data["PROMETHEUS_NAMESPACE"] == "monitoring"
    assert data["PROMETHEUS_POD_LABELS"] == "app.kubernetes.io/name=prometheus"
    assert data["ENGINE_MEDIA_DOMAINS"] == ""  # no remote media unless listed


def test_media_domains_and_prometheus_labels_are_passed_as_the_settings_read_them() -> None:
    values = (
        *DEFAULTS,
        "--set", "serving.mediaDomains[0]=images.example.com",
        "--set", "serving.mediaDomains[1]=cdn.example.org",
        "--set", "serving.networkPolicy.prometheusPodLabels.team=ml",
    )  # fmt: skip
    data = find(render(values), "ConfigMap", "marketplace-config")["data"]
    assert data["ENGINE_MEDIA_DOMAINS"] == "images.example.com,cdn.example.org"
    assert data["PROMETHEUS_POD_LABELS"] == "app.kubernetes.io/name=prometheus,team=ml"


def test_helm_test_pod_curls_healthz_of_web_and_gateway() -> None:
    pod = find(render(DEFAULTS), "Pod", "marketplace-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (curl,) = pod["spec"]["containers"]
    assert curl["command"] == ["curl"]
    assert "http://marketplace-web:80/healthz" in curl["args"]
    assert "http://marketplace-gateway:80/healthz" in curl["args"]


def test_install_notes_render() -> None:
    result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *DEFAULTS)
    assert result.returncode == 0, result.stderr
    assert f"helm test {RELEASE} --namespace {NAMESPACE}" in result.stdout


# The worker's Role against what the kubernetes backend really does.


@functools.cache
def rbac_requests_of_the_backend() -> dict[tuple[str, str, str], set[str]]:
    """(namespace or "" for a cluster-wide request, API group, resource) → RBAC verbs, from every request
    the backend sends to a fake API server while it applies, scales, switches autoscalers, observes and
    deletes deployments, and reads the nodes for the capacity page."""
    used: dict[tuple[str, str, str], set[str]] = {}

    def exercise(fake: FakeKubernetes, cluster: ClusterSettings) -> None:
        backend = backend_for(fake.url, cluster)
        try:
            backend.apply(make_spec(policy=AutoscalingPolicy.FIXED))
            backend.apply(make_spec(policy=AutoscalingPolicy.QUEUE_DEPTH))  # adds an autoscaler
            backend.scale(make_spec(policy=AutoscalingPolicy.FIXED))  # deletes it by name
            backend.observe()
            backend.delete(7)
            backend.nodes()
            # A tuning job's training run: applied, followed (its Job, its pod, the pod's log), found by
            # the reconciler, deleted.
            objects = build_training_objects(TRAINING_SPEC, cluster)
            backend.apply_training(objects)
            fake.add_pod("trainer-pod", objects[1]["spec"]["template"]["metadata"]["labels"])
            backend.training_state(TRAINING_SPEC.job_id)
            backend.training_job_ids()
            backend.delete_training(TRAINING_SPEC.job_id)
            # NETWORK_POLICY_ENABLED turned off: the deployment's NetworkPolicy is deleted by name.
            without_policies = backend_for(fake.url, replace(cluster, network_policy=False))
            without_policies.apply(make_spec())
            without_policies.api_client.close()
        finally:
            backend.api_client.close()
        for request in fake.requests:
            namespace, group, resource, name = _resource_of(request.path)
            verbs = used.setdefault((namespace, group, resource), set())
            if request.method == "GET":
                verbs.add("get" if name else "list")
            elif request.method == "PATCH":
                # Server-side apply: the API server authorises creating a missing object as `create`.
                verbs.update(("patch", "create") if request.content_type.startswith("application/apply")
                             else ("patch",))  # fmt: skip
            elif request.method == "DELETE":
                verbs.add("delete" if name else "deletecollection")
            else:
                pytest.fail(f"unexpected {request.method} {request.path}")

    for keda in (True, False):
        fake = FakeKubernetes().start()
        try:
            exercise(fake, ClusterSettings(namespace=FAKE_NAMESPACE, keda=keda))
        finally:
            fake.stop()
    # Older API servers answer 405 to deleting Services by collection; the backend then lists and deletes.
    fake = FakeKubernetes(no_delete_collection={"services"}).start()
    try:
        exercise(fake, ClusterSettings(namespace=FAKE_NAMESPACE))
    finally:
        fake.stop()
    return used


def _resource_of(path: str) -> tuple[str, str, str, str]:
    """/api/v1/[namespaces/NS/]PLURAL[/NAME] or /apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME] →
    (NS or "", GROUP, PLURAL, NAME or "")."""
    parts = [part for part in path.split("/") if part]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = ""
    if rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if len(rest) == 3:  # a subresource (pods/NAME/log): RBAC names it `pods/log`
        return namespace, group, f"{rest[0]}/{rest[2]}", rest[1]
    return namespace, group, rest[0], rest[1] if len(rest) > 1 else ""


def namespaced_requests() -> dict[tuple[str, str], set[str]]:
    requests = rbac_requests_of_the_backend()
    return {(group, resource): verbs for (ns, group, resource), verbs in requests.items() if ns}


def cluster_wide_requests() -> dict[tuple[str, str], set[str]]:
    requests = rbac_requests_of_the_backend()
    return {(group, resource): verbs for (ns, group, resource), verbs in requests.items() if not ns}


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def test_worker_role_grants_exactly_the_verbs_the_kubernetes_backend_uses() -> None:
    role = find(render(PRODUCTION), "Role", "marketplace-worker")
    assert granted(role) == namespaced_requests()


def test_worker_cluster_role_grants_exactly_the_cluster_wide_verbs_the_backend_uses() -> None:
    role = find(render(PRODUCTION), "ClusterRole", NODE_READER)
    assert cluster_wide_requests() == {("", "nodes"): {"list"}}
    assert granted(role) == cluster_wide_requests()


def test_worker_cluster_role_is_bound_to_the_worker_and_named_for_its_namespace() -> None:
    objects = render(PRODUCTION)
    role = find(objects, "ClusterRole", NODE_READER)
    binding = find(objects, "ClusterRoleBinding", NODE_READER)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "marketplace-worker", "namespace": NAMESPACE}
    ]
    other = render((*PRODUCTION, "--namespace", "staging"))
    assert find(other, "ClusterRole", "staging-marketplace-worker-nodes")


def test_worker_role_lives_in_the_serving_namespace_and_binds_the_worker() -> None:
    objects = render(PRODUCTION)
    role = find(objects, "Role", "marketplace-worker")
    binding = find(objects, "RoleBinding", "marketplace-worker")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "marketplace-serving"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "marketplace-worker", "namespace": NAMESPACE}
    ]


def test_nothing_is_cluster_wide_but_the_workers_node_reader() -> None:
    for scenario in SCENARIOS.values():
        cluster_wide = [
            o for o in render(scenario) if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Namespace")
        ]
        assert sorted((o["kind"], o["metadata"]["name"]) for o in cluster_wide) == [
            ("ClusterRole", NODE_READER),
            ("ClusterRoleBinding", NODE_READER),
        ]


def test_without_reading_nodes_or_without_rbac_nothing_is_cluster_wide() -> None:
    for setting in ("worker.rbac.readNodes=false", "worker.rbac.create=false"):
        kinds = {o["kind"] for o in render((*DEFAULTS, "--set", setting))}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace"}


# values.schema.json and the templates' own checks refuse bad values, naming them.


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("web.replicas=two", "at '/web/replicas': got string, want integer"),
        ("web.replica=2", "at '/web': additional properties 'replica' not allowed"),
        ("scheduler.replicas=1", "additional properties 'scheduler' not allowed"),
        ("beat.replicas=2", "at '/beat/replicas': maximum: got 2, want 1"),
        ("config.logLevel=VERBOSE", "at '/config/logLevel': value must be one of"),
        ("config.gateway.readTimeout=0", "at '/config/gateway/readTimeout': minimum: got 0, want 1"),
        ("config.csrfTrustedOrigins[0]=marketplace.example.com", "at '/config/csrfTrustedOrigins/0'"),
        ("web.resources.requests.memory=1GB", "at '/web/resources/requests/memory'"),
        ("serving.namespace=Serving_GPUs", "at '/serving/namespace'"),
        ("serving.vllmImage=vllm/vllm-openai", "at '/serving/vllmImage'"),
        ("image.tag=latest", "image.tag: `latest` is refused"),
        ("serving.vllmImage=vllm/vllm-openai:latest", "serving.vllmImage: `latest` is refused"),
        ("secrets.redisUrl.existingSecret=redis", "secrets.redisUrl: give either value or existingSecret"),
        ("web.autoscaling.minReplicas=20", "web.autoscaling: minReplicas (20) is above maxReplicas (10)"),
        ("serviceMonitor.enabled=true", "serviceMonitor.enabled needs secrets.metricsToken"),
        ("secrets.metricsToken.value=short", "secrets.metricsToken.value: at least 24 characters"),
        ("config.https.hstsSeconds=-1", "at '/config/https/hstsSeconds': minimum: got -1, want 0"),
        ("config.https.proxySslHeader=X-Forwarded-Proto: https", "at '/config/https/proxySslHeader'"),
        ("config.signIn.maxFailures=0", "at '/config/signIn/maxFailures': minimum: got 0, want 1"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_them(setting: str, message: str) -> None:
    assert message in refusal(*DEFAULTS, "--set", setting)


def test_a_metrics_token_given_both_ways_is_refused() -> None:
    error = refusal(
        *DEFAULTS,
        "--set",
        f"secrets.metricsToken.value={METRICS_TOKEN}",
        "--set",
        "secrets.metricsToken.existingSecret=m",
    )
    assert "secrets.metricsToken: give either value or existingSecret, not both" in error


def test_a_missing_secret_is_refused_naming_both_ways_to_give_it() -> None:
    error = refusal(*DEFAULTS, "--set", "secrets.databaseUrl.value=")
    assert "at '/secrets/databaseUrl/value': minLength: got 0, want 1" in error
    assert "at '/secrets/databaseUrl/existingSecret': minLength: got 0, want 1" in error
    assert "redisUrl" not in error


def test_the_charts_defaults_alone_are_refused_until_the_three_secrets_are_given() -> None:
    error = refusal()
    for secret in ("secretKey", "databaseUrl", "redisUrl"):
        assert f"at '/secrets/{secret}'" in error


# values.yaml: organised, documented and fully covered by the schema.


# Kubernetes' own shapes (a container's resources, a probe's timings): the key holding one is documented
# in values.yaml, their fields are documented by Kubernetes.
KUBERNETES_SHAPES = {"#/$defs/resources", "#/$defs/probeTiming"}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _keys(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any] | None, yaml.Node]]:
    """(path, schema of the key's value, the key's YAML node) for every key of values.yaml the schema
    describes with `properties`; free-form values (resources, nodeSelector …) are not walked into."""
    document = yaml.compose((CHART / "values.yaml").read_text())

    def walk(node: yaml.Node, described: dict[str, Any], path: str) -> Iterator[Any]:
        if described.get("$ref") in KUBERNETES_SHAPES:
            return
        properties = _resolve(schema, described).get("properties")
        if properties is None or not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            child = properties.get(key.value)
            yield f"{path}{key.value}", child, key
            if child is not None:
                yield from walk(value, child, f"{path}{key.value}.")

    assert document is not None
    yield from walk(document, schema, "")


def test_schema_describes_every_key_of_values_yaml_and_refuses_unknown_ones() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    undescribed = [path for path, child, _ in _keys(schema) if child is None]
    assert undescribed == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(node: dict[str, Any], value: Any, path: str) -> None:
        node = _resolve(schema, node)
        if "properties" not in node:
            return
        assert node.get("additionalProperties") is False, f"{path or 'the top'} accepts unknown keys"
        # `global` is Helm's: a parent chart passes it to its subcharts, so it must be accepted.
        missing = set(node["properties"]) - set(value) - {"global"}
        assert not missing, f"{path}: the schema describes {missing}, which values.yaml lacks"
        for key, child in node["properties"].items():
            if key in value:
                check(child, value[key], f"{path}.{key}" if path else key)

    check(schema, values, "")


def test_every_key_of_values_yaml_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for path, child, key in _keys(schema):
        is_section = (
            child is not None
            and child.get("$ref") not in KUBERNETES_SHAPES
            and "properties" in _resolve(schema, child)
        )
        above = lines[key.start_mark.line - 1].strip() if key.start_mark.line else ""
        if not is_section and not above.startswith("#"):
            undocumented.append(path)
    assert undocumented == []
