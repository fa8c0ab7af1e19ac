"""The Bedrock-runtime-compatible API with the unmodified `boto3` client (bearer-token auth), through a
real gateway to a real vLLM engine."""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.serving.gateway.conftest import Tenant

pytestmark = pytest.mark.slow


def runtime(gateway_url: str, key: str, monkeypatch: Any) -> Any:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=gateway_url,
        config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )


QUESTION = [{"role": "user", "content": [{"text": "What is the capital of France?"}]}]


def test_converse(gateway_url: str, tenant: Tenant, monkeypatch: Any) -> None:
    answer = runtime(gateway_url, tenant.key, monkeypatch).converse(
        modelId="tiny-chat",
        messages=QUESTION,
        inferenceConfig={"maxTokens": 20, "temperature": 0},
    )
    assert "Paris" in answer["output"]["message"]["content"][0]["text"]
    assert answer["stopReason"] in ("end_turn", "max_tokens")
    assert answer["usage"]["inputTokens"] > 0 and answer["usage"]["outputTokens"] > 0


def test_converse_stream(gateway_url: str, tenant: Tenant, monkeypatch: Any) -> None:
    stream = runtime(gateway_url, tenant.key, monkeypatch).converse_stream(
        modelId="tiny-chat", messages=QUESTION, inferenceConfig={"maxTokens": 20, "temperature": 0}
    )["stream"]
    events = list(stream)
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart" and "messageStop" in kinds and kinds[-1] == "metadata"
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert "Paris" in text
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0


def test_invoke_model_and_its_stream(gateway_url: str, tenant: Tenant, monkeypatch: Any) -> None:
    client = runtime(gateway_url, tenant.key, monkeypatch)
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 20,
            "temperature": 0,
        }
    )
    answer = json.loads(client.invoke_model(modelId="tiny-chat", body=body)["body"].read())
    assert "Paris" in answer["choices"][0]["message"]["content"]
    streamed = client.invoke_model_with_response_stream(modelId="tiny-chat", body=body)["body"]
    chunks = [json.loads(event["chunk"]["bytes"]) for event in streamed]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert "Paris" in text


def test_errors_are_bedrock_exceptions(gateway_url: str, tenant: Tenant, monkeypatch: Any) -> None:
    client = runtime(gateway_url, tenant.key, monkeypatch)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.converse(modelId="no-such-model", messages=QUESTION)
    with pytest.raises(client.exceptions.ValidationException):
        client.converse(
            modelId="tiny-chat",
            messages=[
                {"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}}]}
            ],
        )
    with pytest.raises(client.exceptions.ValidationException):
        client.invoke_model(modelId="tiny-chat", body=b"not json")
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        runtime(gateway_url, "mk-not-a-key", monkeypatch).converse(modelId="tiny-chat", messages=QUESTION)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


def test_over_the_limit_is_a_throttling_exception(gateway_url: str, tenant: Tenant, monkeypatch: Any) -> None:
    from tests.serving.gateway.conftest import key_for

    client = runtime(gateway_url, key_for(tenant.organization, requests_per_minute=1), monkeypatch)
    client.converse(modelId="tiny-chat", messages=QUESTION, inferenceConfig={"maxTokens": 4})
    with pytest.raises(client.exceptions.ThrottlingException) as throttled:
        client.converse(modelId="tiny-chat", messages=QUESTION, inferenceConfig={"maxTokens": 4})
    assert "requests per minute of this API key" in throttled.value.response["Error"]["Message"]
    assert int(throttled.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) >= 1
