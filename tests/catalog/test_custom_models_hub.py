"""Registering a custom model from the Hugging Face Hub. There is no network here, so only the HTTP
transport is replaced: huggingface_hub's own client is given a transport that answers as the Hub does
(the response shapes recorded from huggingface.co: `resolve/<commit>/<file>` URLs, 302 to the LFS store
for weights with x-linked-size and x-linked-etag, 206 for Range requests, x-error-code on 404 and 401).
Everything above it (huggingface_hub's metadata calls, our parsing, the card) runs for real."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from huggingface_hub.utils import _http

from marketplace.accounts import crypto
from marketplace.catalog.models import CustomModel
from serving import services
from serving.models import Deployment
from tests.catalog.custom_model_files import TINY_LLAMA_CONFIG, parameter_count, safetensors_bytes

CUSTOM = "/api/custom-models/"
REPO = "acme-research/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_" + "x" * 34
# Large enough (some 1.3 MB of weights) that reading the whole file would show in the bytes served.
TENSORS: dict[str, tuple[str, list[int]]] = {
    "model.embed_tokens.weight": ("BF16", [1000, 64]),
    "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
    "lm_head.weight": ("BF16", [10000, 64]),
}


class FakeHub:
    """The Hub's answers for one repository at one commit; counts the weight bytes it sends."""

    def __init__(self, *, private: bool = False, files: dict[str, bytes] | None = None) -> None:
        self.private = private
        self.files = files if files is not None else {
            "config.json": json.dumps(TINY_LLAMA_CONFIG).encode(),
            "tokenizer_config.json": json.dumps({"chat_template": "{{ messages }}"}).encode(),
            "model.safetensors": safetensors_bytes(TENSORS),
        }  # fmt: skip
        self.weight_bytes_sent = 0
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", request.url.path)
        if request.url.host != "huggingface.co" or match is None:
            return httpx2.Response(404, headers={"x-error-code": "EntryNotFound"})
        repo, revision, filename = match.groups()
        if repo != REPO or (self.private and request.headers.get("authorization") != f"Bearer {TOKEN}"):
            return httpx2.Response(
                401, headers={"x-error-code": "RepoNotFound"}, json={"error": "Repository not found"}
            )
        if revision != COMMIT:
            return httpx2.Response(
                404, headers={"x-error-code": "RevisionNotFound"}, json={"error": "Invalid rev id"}
            )
        body = self.files.get(filename)
        if body is None:
            return httpx2.Response(
                404, headers={"x-error-code": "EntryNotFound"}, json={"error": "Entry not found"}
            )
        headers = {"x-repo-commit": COMMIT, "etag": f'"{hash(body) & 0xFFFFFFFF:x}"'}
        if filename.endswith(".safetensors"):
            return self._weights(request, body, headers)
        return httpx2.Response(200, headers={**headers, "content-type": "application/json"}, content=body)

    def _weights(self, request: httpx2.Request, body: bytes, headers: dict[str, str]) -> httpx2.Response:
        linked = {**headers, "x-linked-size": str(len(body)), "x-linked-etag": f'"{len(body):x}"'}
        if request.method == "HEAD":
            return httpx2.Response(200, headers={**linked, "content-length": str(len(body))})
        ranged = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
        if ranged is None:  # a whole download: what registration must never ask for
            self.weight_bytes_sent += len(body)
            return httpx2.Response(200, headers=linked, content=body)
        start, end = int(ranged[1]), min(int(ranged[2]), len(body) - 1)
        self.weight_bytes_sent += end - start + 1
        return httpx2.Response(
            206,
            headers={**linked, "content-range": f"bytes {start}-{end}/{len(body)}"},
            content=body[start : end + 1],
        )


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    yield from _installed(fake)


def _installed(fake: FakeHub) -> Iterator[FakeHub]:
    previous = _http._GLOBAL_CLIENT_FACTORY
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    try:
        yield fake
    finally:
        _http.set_client_factory(previous)


@pytest.fixture
def private_hub() -> Iterator[FakeHub]:
    yield from _installed(FakeHub(private=True))


def register(client: Any, **body: Any) -> Any:
    defaults = {"name": "tiny", "source": "hub", "huggingface_repo": REPO, "revision": COMMIT}
    return client.post(CUSTOM, {**defaults, **body}, format="json")


def test_the_card_is_filled_from_the_hubs_files(hub, client_for, owner) -> None:
    response = register(client_for(owner))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["huggingface_repo"], body["revision"]) == (REPO, COMMIT)
    assert body["parameters"] == parameter_count(TENSORS)
    assert (body["architecture"], body["context_length"], body["tasks"]) == (
        "LlamaForCausalLM",
        2048,
        ["chat"],
    )


def test_no_weights_are_downloaded(hub, client_for, owner) -> None:
    assert register(client_for(owner)).status_code == 201
    weights_size = len(hub.files["model.safetensors"])
    assert hub.weight_bytes_sent <= 100_001 < weights_size  # one Range request for the header
    assert all(
        "range" in r.headers for r in hub.requests if r.method == "GET" and r.url.path.endswith("safetensors")
    )


def test_a_private_repository_is_read_with_its_token_kept_encrypted(private_hub, client_for, owner) -> None:
    response = register(client_for(owner), hf_token=TOKEN)
    assert response.status_code == 201, response.content
    assert "hf_token" not in response.json() and response.json()["private_repository"] is True
    stored = CustomModel.objects.get().hf_token_encrypted
    assert TOKEN not in stored and crypto.decrypt(stored) == TOKEN


def test_a_private_repository_without_its_token_is_refused(private_hub, client_for, owner) -> None:
    response = register(client_for(owner))
    assert response.status_code == 400
    assert "private or gated" in response.json()["huggingface_repo"][0]
    assert not CustomModel.objects.exists()


def test_a_commit_the_repository_lacks_is_refused(hub, client_for, owner) -> None:
    response = register(client_for(owner), revision="f" * 40)
    assert response.status_code == 400
    assert response.json()["huggingface_repo"][0].startswith(f"{REPO}@{'f' * 40} has no config.json")


def test_a_repository_without_safetensors_is_refused(client_for, owner) -> None:
    fake = FakeHub(files={"config.json": json.dumps(TINY_LLAMA_CONFIG).encode(), "pytorch_model.bin": b"x"})
    for _ in _installed(fake):
        response = register(client_for(owner))
    assert response.status_code == 400
    assert (
        "neither model.safetensors nor model.safetensors.index.json" in response.json()["huggingface_repo"][0]
    )


def test_an_architecture_the_engine_lacks_is_refused(client_for, owner) -> None:
    config = {**TINY_LLAMA_CONFIG, "architectures": ["DiffusionTransformerModel"]}
    fake = FakeHub(
        files={"config.json": json.dumps(config).encode(), "model.safetensors": safetensors_bytes(TENSORS)}
    )
    for _ in _installed(fake):
        response = register(client_for(owner))
    assert response.status_code == 400
    assert (
        "architecture DiffusionTransformerModel is not one the pinned engine"
        in response.json()["huggingface_repo"][0]
    )


def test_an_unreachable_hub_is_refused_with_a_retry(client_for, owner) -> None:
    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("no route to host", request=request)

    previous = _http._GLOBAL_CLIENT_FACTORY
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(unreachable)))
    try:
        response = register(client_for(owner))
    finally:
        _http.set_client_factory(previous)
    assert response.status_code == 400
    assert "could not be reached" in response.json()["huggingface_repo"][0]


# Deployed on a cluster, whose engines read the repository at its commit themselves.


def test_the_organisation_may_deploy_it_without_accepting_a_license(hub, client_for, owner, member, settings):
    registered = register(client_for(owner)).json()
    settings.SERVING_BACKEND = "kubernetes"
    body = {"name": "mine", "model": registered["slug"], "instance_type": "aws-g5-xlarge"}
    response = client_for(member).post("/api/deployments/", body, format="json")
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="mine").model_card.slug == registered["slug"]


def test_delete_is_refused_while_a_deployment_runs_it(hub, client_for, owner, settings) -> None:
    client = client_for(owner)
    registered = register(client).json()
    settings.SERVING_BACKEND = "kubernetes"
    body = {"name": "mine", "model": registered["slug"], "instance_type": "aws-g5-xlarge"}
    assert client.post("/api/deployments/", body, format="json").status_code == 201
    response = client.delete(f"{CUSTOM}{registered['id']}/")
    assert response.status_code == 409
    assert response.json()["name"] == ["tiny still runs in deployment mine: delete it first."]
    assert CustomModel.objects.filter(pk=registered["id"]).exists()


def test_a_private_repositorys_engines_download_it_with_the_organisations_own_token(
    private_hub, client_for, owner, member, outsider, settings
) -> None:
    client = client_for(owner)
    registered = register(client, hf_token=TOKEN).json()
    settings.SERVING_BACKEND = "kubernetes"
    body = {"name": "mine", "model": registered["slug"], "instance_type": "aws-g5-xlarge"}
    created = client.post("/api/deployments/", body, format="json")
    assert created.status_code == 201, created.content
    spec = services.spec_for(Deployment.objects.get(name="mine"))
    assert spec.model.hub_token == TOKEN and TOKEN not in repr(spec)
    # What members may read of it names the token's Secret, never its value.
    shown = client_for(member).get(f"/api/deployments/{created.json()['id']}/manifests/").content.decode()
    assert "HF_TOKEN: <a credential, applied to the cluster and never shown>" in shown and TOKEN not in shown
    assert client_for(outsider).get(f"/api/deployments/{created.json()['id']}/manifests/").status_code == 404
