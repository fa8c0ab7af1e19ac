"""Multimodal chat through the real gateway (gunicorn): the unmodified openai client sends an image as a
base64 data URL to a deployment of a vision-language card; a stand-in engine (no vision-language model
runs on this CPU) receives the part intact, reads the PNG's header and answers with its size, as a
vision model's answer would depend on the image. Refused before anything is spent, with the part named:
an image for a text-only deployment (OpenAI chat and Responses, Bedrock InvokeModel through boto3), a
remote URL, an image over the size limit; and another organisation's key."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from tests.serving.gateway.conftest import CHAT, organization_served_by
from tests.serving.gateway.in_process import key_headers, post
from tests.serving.gateway.test_audio import metered
from tests.standin_http import JsonHandler, serving

pytestmark = pytest.mark.usefixtures("transactional_catalog")

VISION = "llava-1-5-7b-hf"


def png(width: int, height: int) -> bytes:
    """A valid PNG of one grey colour (signature, IHDR, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


class VisionEngine(JsonHandler):
    """Answers a chat with the size of each PNG it was sent, read from the image itself."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        VisionEngine.received.append(request)
        sizes = []
        for message in request["messages"]:
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part["type"] == "image_url":
                    image = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    width, height = struct.unpack(">II", image[16:24])
                    sizes.append(f"{width}x{height}")
        text = f"I see {len(sizes)} PNG image(s): {', '.join(sizes)}."
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        self.send_json({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [choice], "usage": {"prompt_tokens": 600, "completion_tokens": 9, "total_tokens": 609},
        })  # fmt: skip


@pytest.fixture
def engine() -> Iterator[str]:
    VisionEngine.received = []
    with serving(VisionEngine) as url:
        yield url


@pytest.fixture
def viewer(engine: str) -> tuple[Organization, str]:
    return organization_served_by(engine, "Eyes", eyes=VISION, words=CHAT)


def asking(*urls: str) -> list[dict[str, Any]]:
    images = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, *images]}]


def test_the_openai_client_sends_an_inline_image_to_a_vision_deployment_and_the_engine_reads_it(
    gateway_url: str, viewer: tuple[Organization, str]
) -> None:
    organization, secret = viewer
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0, timeout=60)
    image = png(3, 2)
    answer = client.chat.completions.create(model="eyes", messages=asking(data_url(image)))  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "I see 1 PNG image(s): 3x2."
    [sent] = VisionEngine.received
    assert sent["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": data_url(image)}}
    [record] = metered(organization, 1)
    assert (record.model, record.prompt_tokens, record.status_code) == ("eyes", 600, 200)


def test_the_openai_client_is_told_a_text_only_deployment_reads_no_images(
    gateway_url: str, viewer: tuple[Organization, str]
) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=viewer[1], max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="words", messages=asking(data_url(png(1, 1))))  # type: ignore[arg-type]
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "messages[0].content[1]"
    assert error["message"].startswith(
        "The deployment `words` does not read images: its model takes text only."
    )
    with pytest.raises(openai.BadRequestError) as refused:
        part = {"type": "input_image", "image_url": data_url(png(1, 1)), "detail": "auto"}
        client.responses.create(model="words", input=[{"role": "user", "content": [part]}])  # type: ignore[list-item]
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "input[0].content[0]"
    assert VisionEngine.received == []


def test_boto3_invoke_model_with_an_image_for_a_text_only_deployment_is_a_validation_error(
    gateway_url: str, viewer: tuple[Organization, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", viewer[1])
    runtime = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=gateway_url,
        config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )  # fmt: skip
    body = json.dumps({"messages": asking(data_url(png(1, 1))), "max_tokens": 5})
    with pytest.raises(ClientError) as refused:
        runtime.invoke_model(modelId="words", body=body)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "does not read images" in refused.value.response["Error"]["Message"]
    assert VisionEngine.received == []


def test_a_remote_image_url_and_an_image_over_the_limit_are_refused_before_the_engine(
    viewer: tuple[Organization, str], settings: Any
) -> None:
    settings.GATEWAY_MAX_MEDIA_BYTES = 2048
    headers = key_headers(viewer[1])
    chat = "/v1/chat/completions"
    remote = post(chat, {"model": "eyes", "messages": asking("http://10.0.0.1/a.png")}, headers)
    assert (remote.status, remote.json()["error"]["param"]) == (400, "messages[0].content[1]")
    assert "fetch from `10.0.0.1`" in remote.json()["error"]["message"]
    large = data_url(png(64, 64) + bytes(4096))
    too_big = post(chat, {"model": "eyes", "messages": asking(large)}, headers)
    assert too_big.status == 400 and "the limit is 2 KiB" in too_big.json()["error"]["message"]
    fine = post(chat, {"model": "eyes", "messages": asking(data_url(png(5, 4)))}, headers)
    assert fine.status == 200 and fine.json()["choices"][0]["message"]["content"].endswith("5x4.")
    assert len(VisionEngine.received) == 1


def test_an_outsiders_key_cannot_send_images_to_another_organisations_vision_deployment(
    viewer: tuple[Organization, str],
) -> None:
    outsider = account_services.create_organization(slug="outsider", name="Outsider", owner=None)
    _, secret = account_services.create_api_key(
        organization=outsider, name="k", created_by=None, expires_at=None
    )
    body = {"model": "eyes", "messages": asking(data_url(png(1, 1)))}
    answer = post("/v1/chat/completions", body, key_headers(secret))
    assert (answer.status, answer.json()["error"]["code"]) == (404, "model_not_found")
    assert VisionEngine.received == []
