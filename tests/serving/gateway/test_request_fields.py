"""One allow-list for every route: a field an engine route does not accept, or a value that would have
it do absurd work, is refused with a 400 in the route's own error format naming the field, before
anything is spent or sent; what the list allows reaches the engine unchanged.

The routes are driven through the platform's ASGI application in process, in front of a stand-in engine
that records what it receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser

from marketplace.accounts.models import Organization
from marketplace.accounts.services import create_api_key
from serving.gateway import bedrock, request_fields
from serving.models import Deployment
from tests.serving.gateway.conftest import CHAT, deploy
from tests.serving.gateway.in_process import Answer, browser_headers, key_headers, post

ANSWER = {
    "id": "c", "object": "chat.completion", "model": "chat",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}  # fmt: skip


class RecordingEngine(BaseHTTPRequestHandler):
    """A stand-in engine that notes every request body it receives and answers a one-word chat."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        RecordingEngine.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Engine:
    url: str
    received: list[dict[str, Any]]


@pytest.fixture
def engine(transactional_catalog: None) -> Iterator[Engine]:
    """The stand-in engine, and what it received, in order."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RecordingEngine.received = []
    try:
        yield Engine(f"http://127.0.0.1:{server.server_address[1]}", RecordingEngine.received)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def chat(acme: Organization, engine: Engine) -> Deployment:
    return deploy(acme, "chat", CHAT, engine.url)


@pytest.fixture
def secret(acme: Organization) -> str:
    return create_api_key(organization=acme, name="k", created_by=None, expires_at=None)[1]


MESSAGES = [{"role": "user", "content": "Hi"}]
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
# Each route and a body it accepts; the tests add one field to it.
ROUTES = {
    "/v1/chat/completions": {"model": "chat", "messages": MESSAGES},
    "/v1/completions": {"model": "chat", "prompt": "Hi"},
    "/v1/embeddings": {"model": "chat", "input": "Hi"},
    "/model/chat/invoke": {"messages": MESSAGES},
    "/model/chat/invoke-with-response-stream": {"messages": MESSAGES},
    "/model/chat/converse": CONVERSE,
    "/model/chat/converse-stream": CONVERSE,
}
# Fields vLLM accepts that change what it runs or who pays for it.
ENGINE_ONLY = {"chat_template": "{{ 'pwned' }}", "ignore_eos": True, "priority": -100,
               "logits_processors": ["evil.Processor"], "kv_transfer_params": {}}  # fmt: skip


def with_field(path: str, name: str, value: Any) -> dict[str, Any]:
    """The route's accepted body plus one field: for Converse, where a chat field can only come from,
    `additionalModelRequestFields`."""
    body = ROUTES[path]
    if "converse" in path:
        return {**body, "additionalModelRequestFields": {name: value}}
    return {**body, name: value}


def refusal(path: str, answer: Answer) -> str:
    """The field a 400 names, read as each API's client reads it; else what was answered instead."""
    if answer.status != 400:
        return f"answered {answer.status}"
    if path.startswith("/v1/"):
        error = answer.json()["error"]
        return str(error["param"]) if error["type"] == "invalid_request_error" else f"a 400 of type {error}"
    if answer.headers.get("x-amzn-errortype") != "ValidationException":
        return f"a 400 of type {answer.headers.get('x-amzn-errortype')}"
    return str(answer.json()["message"]).split(":")[0]


def refused(path: str, body: dict[str, Any], secret: str) -> str:
    """What `path` answers `body`, as `refusal` puts it."""
    return refusal(path, post(path, body, key_headers(secret)))


def named(path: str, name: str) -> str:
    """How each API names field `name` of a request to `path` when it refuses it."""
    if "converse" in path:
        return f"additionalModelRequestFields.{name}"
    return f"body.{name}" if path.startswith("/model/") else name


def test_an_engine_only_field_is_refused_on_every_route_naming_it(
    chat: Deployment, secret: str, engine: Engine
) -> None:
    cases = [(path, name) for path in ROUTES for name in ENGINE_ONLY]
    answers = {
        (path, name): refused(path, with_field(path, name, ENGINE_ONLY[name]), secret) for path, name in cases
    }
    assert answers == {(path, name): named(path, name) for path, name in cases}
    assert engine.received == []


CHOICES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/model/chat/invoke",
    "/model/chat/invoke-with-response-stream",
]


def test_a_number_of_choices_out_of_range_is_refused(chat: Deployment, secret: str, engine: Engine) -> None:
    cases = [(path, n) for path in CHOICES for n in (-1, 0, 1.5, "2", 10_000)]
    answers = {case: post(case[0], {**ROUTES[case[0]], "n": case[1]}, key_headers(secret)) for case in cases}
    assert {case: refusal(case[0], answer) for case, answer in answers.items()} == {
        (path, n): named(path, "n") for path, n in cases
    }
    assert all("from 1 to 128" in answer.body.decode() for answer in answers.values())
    assert engine.received == []


VALUES = [
    ("/v1/completions", "best_of", 1000),
    ("/v1/completions", "logprobs", 1000),
    ("/v1/chat/completions", "top_logprobs", 1000),
    ("/v1/chat/completions", "temperature", "hot"),
    ("/v1/chat/completions", "stream_options", {"include_usage": True, "warp": 9}),
    ("/v1/embeddings", "encoding_format", "utf-7"),
    ("/model/chat/invoke", "max_tokens", 0),
    ("/model/chat/converse", "top_k", "many"),
    ("/model/chat/converse-stream", "seed", 1.5),
]


def test_a_value_the_route_cannot_take_is_refused_naming_its_field(
    chat: Deployment, secret: str, engine: Engine
) -> None:
    answers = {
        (path, name): refused(path, with_field(path, name, value), secret) for path, name, value in VALUES
    }
    wanted = {(path, name): named(path, name) for path, name, _ in VALUES}
    wanted["/v1/chat/completions", "stream_options"] = "stream_options.warp"
    assert answers == wanted
    assert engine.received == []


def test_what_the_list_allows_reaches_the_engine_unchanged(
    chat: Deployment, secret: str, engine: Engine
) -> None:
    knobs = {
        "max_tokens": 5, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "n": 2, "stop": ["\n"],
        "logprobs": True, "top_logprobs": 2, "min_p": 0.05, "repetition_penalty": 1.1,
    }  # fmt: skip
    answer = post("/model/chat/invoke", {"messages": MESSAGES, **knobs}, key_headers(secret))
    assert answer.status == 200, answer.body
    assert engine.received == [{"model": "chat", "messages": MESSAGES, "stream": False, **knobs}]


def test_the_playground_is_held_to_the_same_rules(
    acme: Organization, member: AbstractUser, chat: Deployment, engine: Engine
) -> None:
    body = {"messages": MESSAGES, "temperature": 40}
    answer = post(f"/deployments/{chat.pk}/playground/chat/", body, browser_headers(member))
    assert refusal("/v1/", answer) == "temperature"
    assert engine.received == []


def test_an_outsider_learns_nothing_from_a_refused_field(
    chat: Deployment, globex: Organization, engine: Engine
) -> None:
    """The body is checked before the model is looked up: the same 400 whoever owns the name."""
    _, theirs = create_api_key(organization=globex, name="k", created_by=None, expires_at=None)
    answers = {path: refused(path, with_field(path, "ignore_eos", True), theirs) for path in ROUTES}
    assert answers == {path: named(path, "ignore_eos") for path in ROUTES}
    assert engine.received == []


# --- the table itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_body_nested_too_deeply_to_parse_is_a_400_on_every_route(
    path: str, chat: Deployment, secret: str, engine: Engine
) -> None:
    """JSON nested past the parser's limit (it was a 500, the parser's RecursionError)."""
    deep = b'{"model": "chat", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = post(path, deep, key_headers(secret))
    assert answer.status == 400 and b"nested too deeply" in answer.body
    assert engine.received == []


def test_every_route_accepts_a_minimal_request() -> None:
    for route, body in {"chat.completions": ROUTES["/v1/chat/completions"],
                        "completions": ROUTES["/v1/completions"],
                        "embeddings": ROUTES["/v1/embeddings"]}.items():  # fmt: skip
        assert request_fields.check(route, body) is None


def test_converse_and_the_playground_pass_only_fields_the_chat_route_accepts() -> None:
    chat = request_fields.FIELDS["chat.completions"].keys()
    assert chat >= bedrock.EXTRA_PARAMS and chat >= request_fields.PLAYGROUND_FIELDS


def test_null_means_not_set() -> None:
    body = {**ROUTES["/v1/chat/completions"], "n": None, "max_tokens": None, "stop": None}
    assert request_fields.check("chat.completions", body) is None
