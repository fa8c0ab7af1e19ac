"""The OpenAI-compatible API with the unmodified `openai` client, through a real gateway (two worker
processes) to real vLLM engines."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from django.utils import timezone

from marketplace.accounts.models import ApiKey
from serving.models import Deployment
from tests.conftest import make_user
from tests.serving.gateway.conftest import EMBED, Tenant, deploy, key_for

pytestmark = pytest.mark.slow


def client(gateway_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=60)


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion(gateway_url: str, tenant: Tenant) -> None:
    answer = client(gateway_url, tenant.key).chat.completions.create(
        model="tiny-chat", messages=QUESTION, max_tokens=20, temperature=0
    )
    assert "Paris" in answer.choices[0].message.content
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_streaming_chat_without_and_with_usage(gateway_url: str, tenant: Tenant) -> None:
    api = client(gateway_url, tenant.key)
    chunks = list(
        api.chat.completions.create(
            model="tiny-chat", messages=QUESTION, max_tokens=20, stream=True, temperature=0
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert all(c.usage is None for c in chunks)  # the engine's usage chunk was not asked for: removed
    with_usage = list(
        api.chat.completions.create(
            model="tiny-chat",
            messages=QUESTION,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0


def test_completions_and_embeddings_and_models(gateway_url: str, tenant: Tenant) -> None:
    api = client(gateway_url, tenant.key)
    completion = api.completions.create(model="tiny-chat", prompt="The capital of France is", max_tokens=5)
    assert completion.choices[0].text
    vectors = api.embeddings.create(model="minilm", input=["hello", "world"])
    assert [len(item.embedding) for item in vectors.data] == [384, 384]
    assert sorted(model.id for model in api.models.list()) == ["minilm", "tiny-chat"]


def test_errors_come_back_as_the_clients_exceptions(gateway_url: str, tenant: Tenant) -> None:
    api = client(gateway_url, tenant.key)
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="no-such-deployment", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client(gateway_url, "mk-not-a-real-key").chat.completions.create(model="tiny-chat", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="tiny-chat", messages=[], max_tokens=5)
    assert bad.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as wrong_type:
        api.chat.completions.create(model="tiny-chat", messages=QUESTION, max_tokens="many")  # type: ignore[arg-type]
    assert wrong_type.value.param == "max_tokens"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "could not parse the JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (
            b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "warp": 9}',
            400,
            "Unrecognized request argument supplied: warp",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model parameter"),
        (
            b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            400,
            "stream",
        ),
    ],
)
def test_malformed_requests_are_4xx_in_openai_format(
    gateway_url: str, tenant: Tenant, body: bytes, status: int, words: str
) -> None:
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused(gateway_url: str, tenant: Tenant) -> None:
    huge = b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "' + b"a" * 5_000_000 + b'"}]}'
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        content=huge,
        headers={"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "limit is" in response.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_refused_in_each_apis_format(
    gateway_url: str, tenant: Tenant
) -> None:
    """No Content-Length (a chunked upload): the size is only known while reading, and still refused."""

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "'
        for _ in range(50):
            yield b"a" * 100_000
        yield b'"}]}'

    headers = {"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"}
    openai = httpx.post(f"{gateway_url}/v1/chat/completions", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in openai.request.headers}
    assert openai.status_code == 413 and "limit is" in openai.json()["error"]["message"]
    bedrock = httpx.post(f"{gateway_url}/model/tiny-chat/invoke", content=chunks(), headers=headers)
    assert bedrock.status_code == 413 and bedrock.headers["x-amzn-ErrorType"] == "ValidationException"


def test_an_outsider_key_gets_the_same_404_as_a_missing_model(
    gateway_url: str, tenant: Tenant, engines: dict[str, str]
) -> None:
    from marketplace.accounts import services as account_services

    other = account_services.create_organization(slug="other", name="Other", owner=make_user("olga"))
    deploy(other, "their-embedder", EMBED, engines[EMBED])
    outsider = client(gateway_url, key_for(other))
    with pytest.raises(openai.NotFoundError) as theirs:
        outsider.embeddings.create(model="minilm", input="hi")  # acme's deployment name
    with pytest.raises(openai.NotFoundError) as nothing:
        outsider.embeddings.create(model="no-such-name", input="hi")
    assert theirs.value.body["message"].replace("minilm", "X") == nothing.value.body["message"].replace(
        "no-such-name", "X"
    )
    assert [m.id for m in outsider.models.list()] == ["their-embedder"]


def test_a_key_limited_to_some_deployments(gateway_url: str, tenant: Tenant) -> None:
    limited = client(gateway_url, key_for(tenant.organization, allowed_deployments=["minilm"]))
    assert limited.embeddings.create(model="minilm", input="hi").data
    with pytest.raises(openai.NotFoundError):
        limited.chat.completions.create(model="tiny-chat", messages=QUESTION, max_tokens=5)


def test_a_revoked_key_stops_working_within_seconds(gateway_url: str, tenant: Tenant) -> None:
    api = client(gateway_url, tenant.key)
    assert api.embeddings.create(model="minilm", input="hi").data
    ApiKey.objects.filter(organization=tenant.organization).update(revoked_at=timezone.now())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            api.embeddings.create(model="minilm", input="hi")
        except openai.AuthenticationError:
            return
        time.sleep(0.2)
    raise AssertionError("a revoked key still worked 10 s later")


def test_a_dead_replica_gives_a_clear_502(gateway_url: str, tenant: Tenant) -> None:
    Deployment.objects.filter(pk=tenant.embed.pk).update(endpoints=["http://127.0.0.1:9"])  # nothing listens
    time.sleep(1.5)  # the gateway's cache (1 s in tests)
    with pytest.raises(openai.APIStatusError) as error:
        client(gateway_url, tenant.key).embeddings.create(model="minilm", input="hi")
    assert error.value.status_code == 502
    assert "could be reached" in error.value.message


def test_metrics_are_exposed(gateway_url: str, tenant: Tenant) -> None:
    client(gateway_url, tenant.key).embeddings.create(model="minilm", input="hi")
    text = httpx.get(f"{gateway_url}/metrics").text
    expected = (
        f'marketplace_gateway_requests_total{{deployment="minilm",deployment_id="{tenant.embed.pk}",'
        'route="embeddings",status="200"}'
    )
    assert expected in text


def test_a_deployment_scaled_to_zero_answers_503_and_counts_the_request(
    gateway_url: str, tenant: Tenant
) -> None:
    """At zero replicas the request must still be counted: it is what wakes the deployment (KEDA)."""
    Deployment.objects.filter(pk=tenant.embed.pk).update(endpoints=[], ready_replicas=0, desired_replicas=0)
    time.sleep(1.5)  # the gateway's cache
    with pytest.raises(openai.APIStatusError) as error:
        client(gateway_url, tenant.key).embeddings.create(model="minilm", input="hi")
    assert error.value.status_code == 503
    assert "no ready replica right now" in error.value.message
    text = httpx.get(f"{gateway_url}/metrics").text
    assert f'deployment_id="{tenant.embed.pk}",route="embeddings",status="503"' in text
