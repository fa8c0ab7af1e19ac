"""Stand-in engines for prompt-router tests: each answers with its own words, so a test knows who
answered, over real HTTP as vLLM does (OpenAI chat and completions, plain and streamed with the usage
chunk; embeddings; a Prometheus /metrics with `vllm:num_requests_waiting`). And the routers over them.

Their known "quality", which the router tests' predictor is trained on: the small engine answers sums
right and essays wrong, the large one both right. Embeddings put sums and essays on two axes, so a
nearest-neighbour predictor tells them apart. The predictor is stored and activated as the learning
side stores versions, so a gateway loads it the way it loads any trained router.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from learning import predictors, router_service
from learning.models import Router, RouterVersion
from learning.storage import get_store
from marketplace.accounts.models import Organization
from marketplace.catalog.loader import Catalog, read_catalog, write_catalog
from tests.serving.gateway.conftest import CHAT, EMBED

COSTS = {"small": 0.1, "large": 1.0}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
SUMS = ["What is 2 plus 3?", "Add 40 and 2.", "How much is 7 plus 8?", "Compute 12 plus 30."]
ESSAYS = ["Write an essay about the sea.", "Compose a long essay on castles.", "Explain jazz in an essay."]


def is_sum(text: str) -> bool:
    return any(word in text.lower() for word in ("plus", "add", "compute", "how much"))


def answer_of(engine: str) -> str:
    return f"{engine} says hi"


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class RouterEngine(BaseHTTPRequestHandler):
    """One engine; `engine()` makes a class of its own per engine (its name, its notes)."""

    engine_name = ""
    waiting = 0.0  # what /metrics reports as vllm:num_requests_waiting
    delay = 0.0  # seconds before each answer to a chat or completion
    completion_tokens = 3  # what an unstreamed answer reports generating (at most the max_tokens asked)
    received: list[tuple[str, dict[str, Any]]]
    lock: threading.Lock

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            text = (
                "# HELP vllm:num_requests_running Requests running.\n# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{engine="0",model_name="{self.engine_name}"}} 1.0\n'
                "# HELP vllm:num_requests_waiting Requests waiting.\n# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{engine="0",model_name="{self.engine_name}"}} {self.waiting}\n'
            )
            self._send(200, "text/plain; version=0.0.4", text.encode())
        else:
            self._send(200, "application/json", b"{}")

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            self.received.append((self.path, payload))
        words = [f"{self.engine_name}", " says", " hi"]
        if self.path == "/v1/embeddings":
            vector = [1.0, 0.0] if is_sum(str(payload.get("input"))) else [0.0, 1.0]
            body = {"object": "list", "data": [{"index": 0, "object": "embedding", "embedding": vector}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3}}  # fmt: skip
            self._send(200, "application/json", json.dumps(body).encode())
            return
        chat = self.path == "/v1/chat/completions"
        time.sleep(self.delay)
        if payload.get("stream"):
            head = {"id": "s", "created": 1, "model": payload.get("model")}
            events = []
            for word in words:
                choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
                events.append(_event({**head, "choices": [choice]}))
            finish = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {
                "index": 0, "text": "", "finish_reason": "stop"}  # fmt: skip
            events.append(_event({**head, "choices": [finish]}))
            events.append(_event({**head, "choices": [], "usage": USAGE}))
            self._send(200, "text/event-stream", b"".join([*events, b"data: [DONE]\n\n"]))
            return
        text = "".join(words)
        if chat:
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"
            }  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
        completion = min(self.completion_tokens, payload.get("max_tokens") or self.completion_tokens)
        usage = {
            **USAGE,
            "completion_tokens": completion,
            "total_tokens": USAGE["prompt_tokens"] + completion,
        }
        body = {"id": "r", "object": "chat.completion" if chat else "text_completion",
                "model": payload.get("model"), "choices": [choice], "usage": usage}  # fmt: skip
        self._send(200, "application/json", json.dumps(body).encode())

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def engine(name: str) -> Iterator[tuple[str, type[RouterEngine]]]:
    """(URL, the engine's class, whose `received` and `waiting` the test reads and sets) while it serves."""
    handler = type(
        f"RouterEngine_{name}",
        (RouterEngine,),
        {
            "engine_name": name,
            "received": [],
            "lock": threading.Lock(),
            "waiting": 0.0,
            "delay": 0.0,
            "completion_tokens": 3,
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@functools.cache
def _two_cards() -> Catalog:
    """The catalog cut to the two cards these tests deploy (loading all of it per test costs seconds)."""
    catalog = read_catalog()
    providers = []
    for provider in catalog.providers:
        cards = [card for card in provider.models if card.slug in (CHAT, EMBED)]
        if cards:
            providers.append(provider.model_copy(update={"models": cards}))
    return Catalog(licenses=catalog.licenses, instance_types=catalog.instance_types, providers=providers)


def write_two_cards() -> None:
    write_catalog(_two_cards())


def make_router(organization: Organization, name: str = "auto", **fields: Any) -> Router:
    values: dict[str, Any] = {
        "candidates": [{"deployment": n, "cost_per_1k_tokens": cost} for n, cost in COSTS.items()],
        "fallback": "large", "quality_difference": 0.5, "mode": "active",
    }  # fmt: skip
    return router_service.create_router(
        organization=organization, user=None, name=name, **{**values, **fields}
    )


def quality(text: str) -> list[float]:
    """The stand-ins' known quality on a prompt: [small, large]."""
    return [1.0 if is_sum(text) else 0.0, 1.0]


def train(router: Router, kind: str = "ngram") -> Router:
    """Fit a predictor of `kind` on the stand-ins' known quality, store it as the router's next version,
    and make it the one in use."""
    return router_service.activate(router, trained_version(router, kind))


def trained_version(router: Router, kind: str = "ngram", dimensions: int = 2) -> RouterVersion:
    """A predictor of `kind` fitted on the stand-ins' known quality, stored as the router's next version
    (not yet in use)."""
    texts = SUMS + ESSAYS
    targets = np.array([quality(text) for text in texts])
    predictor: predictors.AnyPredictor
    if kind == "ngram":
        predictor = predictors.NgramPredictor.fit(["small", "large"], texts, targets)
    else:
        vectors = np.array([[1.0, 0.0] if is_sum(text) else [0.0, 1.0] for text in texts])
        vectors = np.pad(vectors, ((0, 0), (0, dimensions - 2)))  # beyond 2: not the embedder's size
        predictor = predictors.SemanticPredictor.fit(["small", "large"], vectors, targets)
    data = predictors.dump(predictor)
    number = RouterVersion.objects.filter(router=router).count() + 1
    key = f"routers/org-{router.organization_id}/router-{router.pk}/v{number}-{kind}.npz"
    get_store().put(key, data)
    return RouterVersion.objects.create(
        router=router, version=number, kind=kind, candidates=["small", "large"], key=key, bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
