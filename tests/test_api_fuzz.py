"""A property-based fuzz of the whole REST API, generated from its own OpenAPI schema (/api/schema/).

schemathesis reads the schema the platform serves and, for every operation in it, sends requests
in-process through Django's WSGI handler, against the real test database (each operation in its own
rolled-back transaction). Two properties hold for every answer:

- no server error, whatever the input (`not_a_server_error`), and
- the answer is what the schema promises: a documented status (`status_code_conformance`) whose body
  matches the schema documented for it, error answers included (`response_schema_conformance`), so
  that clients generated from the schema can rely on it.

Two passes share the schema:
1. Coverage, as a platform admin (who may call every operation): each parameter and JSON body field
   at its boundaries and with values of the wrong type, and methods the path does not allow.
   Deterministic; its size is the schema's, not a setting.
2. Random requests, in every media type an operation accepts, from each of the four callers (a platform
   admin, acme's owner, its member, each signed in with a session cookie and a CSRF token, and an API
   key of acme): API_FUZZ_EXAMPLES examples per operation and caller, derandomized so that a run is
   reproducible. Raise API_FUZZ_EXAMPLES to search harder. A test first shows every caller signed in.

Path parameters are narrowed (in the test's copy of the schema only) to objects that exist, so valid
requests reach real deployments, keys, subscriptions, organisations, members and catalog entries;
invalid ones still probe everything else. Those objects are created with fixed keys for that reason.
"""

from __future__ import annotations

import copy
import os
import secrets
import string
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from marketplace.accounts.models import ApiKey, hash_api_key
from marketplace.catalog.models import ModelCard
from marketplace.subscriptions.models import Subscription, SubscriptionStatus
from marketplace.subscriptions.services import subscribe
from tests.web.conftest import make_deployment

EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "3"))  # per operation and caller
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
SignIn = dict[str, dict[str, str]]  # call() arguments: headers, cookies
CALLERS = ["platform_admin", "owner", "member", "api_key"]
MODEL = "llama-3.1-8b-instruct"
KNOWN_ID = 424242  # the primary key of acme's deployment, API key and subscription in these tests
# What each path parameter may name, by the collection its path starts with.
KNOWN_PATH_VALUES: dict[tuple[str, str], list[Any]] = {
    ("models", "slug"): [MODEL, "all-minilm-l6-v2"],
    ("instance-types", "slug"): ["aws-g5-xlarge", "local-cpu"],
    ("providers", "slug"): ["meta"],
    ("organizations", "slug"): ["acme", "globex"],
    ("organizations", "username"): ["olivia", "mario", "oscar"],
    ("deployments", "id"): [KNOWN_ID],
    ("api-keys", "id"): [KNOWN_ID],
    ("subscriptions", "id"): [KNOWN_ID],
    ("invocation-log-settings", "organization_slug"): ["acme", "globex"],
}


def served_schema() -> dict[str, Any]:
    response = Client().get("/api/schema/", {"format": "json"}, HTTP_HOST="localhost")
    assert response.status_code == 200, response.content
    return response.json()


def for_the_fuzz(served: dict[str, Any], *, json_bodies_only: bool) -> dict[str, Any]:
    """The test's copy of the schema: path parameters with known objects become enums of them, so
    valid requests find what they name; `json_bodies_only` keeps one media type per request body."""
    raw = copy.deepcopy(served)
    # The REST API only: the invoke API (/v1/…, /model/…, /metrics) has its own tests (tests/serving/gateway).
    raw["paths"] = {path: item for path, item in raw["paths"].items() if path.startswith("/api/")}
    for path, item in raw["paths"].items():
        collection = path.removeprefix("/api/").split("/")[0]
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                known = KNOWN_PATH_VALUES.get((collection, parameter["name"]))
                if parameter["in"] == "path" and known:
                    parameter["schema"] = {**parameter["schema"], "enum": known}
            content = operation.get("requestBody", {}).get("content", {})
            if json_bodies_only and "application/json" in content:
                operation["requestBody"]["content"] = {"application/json": content["application/json"]}
    return raw


def load_schema(raw: dict[str, Any], *, phase: str) -> Any:
    phases = {name: {"enabled": name == phase} for name in ("examples", "coverage", "fuzzing", "stateful")}
    loaded = schemathesis.openapi.from_dict(raw, config=schemathesis.Config.from_dict({"phases": phases}))
    loaded.app = WSGIHandler()  # in-process: schemathesis calls the WSGI application, not a server
    return loaded


SERVED = served_schema()
# Boundaries in JSON bodies only (form and multipart bodies go through the same serializers, and would
# triple the pass); the random pass sends all three.
coverage = load_schema(for_the_fuzz(SERVED, json_bodies_only=True), phase="coverage")
fuzzing = load_schema(for_the_fuzz(SERVED, json_bodies_only=False), phase="fuzzing")


@pytest.fixture(scope="module", autouse=True)
def _keep_the_test_transaction() -> Iterator[None]:
    """Django's WSGI handler closes the database connection after each request; here, as in Django's
    own test client, it must not, so requests see and roll back with each test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def known_objects(settings: Any, acme: Any, globex: Any, owner: Any) -> None:
    """acme's deployment, API key and subscription under KNOWN_ID, and a deployment of globex's."""
    settings.SERVING_BACKEND = "kubernetes"  # admission needs no engine prepared on this machine
    card = ModelCard.objects.get(slug=MODEL)
    # A lapsed subscription under the fixed key, taken up again by the service as a person would.
    Subscription.objects.create(
        id=KNOWN_ID, organization=acme, model_card=card, status=SubscriptionStatus.CANCELLED,
        license_sha256="", accepted_at=timezone.now(),
    )  # fmt: skip
    subscribe(organization=acme, card=card, license_sha256=None, user=owner)
    make_deployment(acme, id=KNOWN_ID)
    make_deployment(globex, name="theirs")
    ApiKey.objects.create(
        id=KNOWN_ID, organization=acme, name="known", prefix="mk-known", hashed_key=hash_api_key("mk-known")
    )


@pytest.fixture
def credentials(request: Any, known_objects: None, api_key_client: Any, acme: Any) -> Callable[[str], SignIn]:
    """How a request signs in as a caller: a session cookie (and a CSRF token), or an API key of acme.
    All are made before the first request (which may delete acme)."""

    def sign_in(caller: str) -> SignIn:
        if caller == "api_key":
            _, secret = api_key_client(acme)
            return {"headers": {"Authorization": f"Bearer {secret}"}}
        browser = Client()
        browser.force_login(request.getfixturevalue(caller))
        csrf = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        return {
            "headers": {"X-CSRFToken": csrf},
            "cookies": {"sessionid": browser.cookies["sessionid"].value, "csrftoken": csrf},
        }

    return {caller: sign_in(caller) for caller in CALLERS}.__getitem__


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("caller", CALLERS)
def test_every_caller_is_signed_in(caller: str, credentials: Callable[[str], SignIn]) -> None:
    """The fuzz means something only if its callers get past authentication."""
    response = fuzzing["/api/organizations/"]["GET"].Case().call(**credentials(caller))
    assert response.status_code == 200, response.text
    assert "acme" in response.text


@coverage.parametrize()
@FUZZ_SETTINGS
def test_every_operation_at_its_boundaries_as_a_platform_admin(case: Any, credentials: Any) -> None:
    case.call_and_validate(checks=CHECKS, **credentials("platform_admin"))


@fuzzing.parametrize()
@fuzzing.given(caller=st.sampled_from(CALLERS))
@settings(FUZZ_SETTINGS, max_examples=EXAMPLES * len(CALLERS))
def test_random_requests_from_every_caller(case: Any, caller: str, credentials: Any) -> None:
    case.call_and_validate(checks=CHECKS, **credentials(caller))
