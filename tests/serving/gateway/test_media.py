"""The media check (serving/gateway/media.py) on its own: which image, video and audio parts of a chat or
Responses request a deployment may be sent, and the refusal's field and words for each that it may not."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from serving.gateway import media

LIMITS = media.Limits(max_bytes=1024, domains=frozenset({"images.example.org"}))
VISION = ("text", "image")
SMALL = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + bytes(100)).decode()


def chat(*parts: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "text", "text": "What is in it?"}, *parts]
    system = {"role": "system", "content": "Be brief."}
    return {"model": "eyes", "messages": [system, {"role": "user", "content": content}]}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def check(
    payload: dict[str, Any], modalities: tuple[str, ...] = VISION, route: str = "chat.completions"
) -> Any:
    return media.check(route, payload, deployment="eyes", modalities_in=modalities, limits=LIMITS)


def test_text_only_requests_pass_whatever_the_model_reads() -> None:
    assert check(chat(), ("text",)) is None
    assert check({"model": "eyes", "messages": [{"role": "user", "content": "hi"}]}, ("text",)) is None
    assert check({"model": "eyes", "prompt": "hi"}, ("text",), "completions") is None


def test_an_inline_image_within_the_limit_passes_to_a_model_that_reads_images() -> None:
    assert check(chat(image(SMALL))) is None


def test_an_image_for_a_model_that_reads_only_text_is_refused_naming_the_part() -> None:
    param, message = check(chat(image(SMALL)), ("text",))
    assert param == "messages[1].content[1]"
    assert message.startswith("The deployment `eyes` does not read images: its model takes text only.")


def test_video_and_audio_parts_need_a_model_that_reads_them() -> None:
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    assert check(chat(video))[1].startswith("The deployment `eyes` does not read videos")
    assert check(chat(audio))[1].startswith("The deployment `eyes` does not read audio inputs")
    assert check(chat(video, audio), ("text", "video", "audio")) is None


def test_an_image_over_the_size_limit_is_refused_with_its_size_and_the_setting() -> None:
    big = "data:image/png;base64," + base64.b64encode(bytes(2048)).decode()
    param, message = check(chat(image(big)))
    assert param == "messages[1].content[1]"
    assert "is 2 KiB of image; the limit is 1 KiB (GATEWAY_MAX_MEDIA_BYTES)" in message
    exactly = "data:image/png;base64," + base64.b64encode(bytes(1024)).decode()
    assert check(chat(image(exactly))) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png,notbase64", "is not a base64 data URL"),
        ("data:text/plain;base64,aGk=", "holds `text/plain`, not an image"),
        ("data:image/png;base64,@@@@", "is not valid base64"),
        ("data:image/png;base64,abc", "is not valid base64"),
        ("file:///etc/passwd", "not a `file` URL"),
        ("", "must hold the medium"),
    ],
    ids=["not-base64-url", "wrong-type", "bad-alphabet", "bad-length", "file-scheme", "empty"],
)
def test_a_malformed_image_is_refused_saying_what_is_wrong(url: str, words: str) -> None:
    param, message = check(chat(image(url)))
    assert param == "messages[1].content[1]"
    assert message.startswith("'messages[1].content[1]' ") and words in message


def test_a_remote_url_is_refused_unless_the_engine_may_fetch_from_its_host() -> None:
    param, message = check(chat(image("https://169.254.169.254/latest/meta-data/x.png")))
    assert param == "messages[1].content[1]"
    assert "fetch from `169.254.169.254`" in message and "ENGINE_MEDIA_DOMAINS: images.example.org" in message
    assert "data:image/<format>;base64,<data>" in message
    assert check(chat(image("https://images.example.org/cat.png"))) is None


def test_more_images_than_the_engine_takes_per_prompt_are_refused() -> None:
    param, message = check(chat(*[image(SMALL)] * 5))
    assert param == "messages[1].content[5]"
    assert message.startswith("At most 4 images in one request")
    assert check(chat(*[image(SMALL)] * 4)) is None


def test_responses_input_images_are_checked_the_same_way() -> None:
    parts = [{"type": "input_text", "text": "What?"}, {"type": "input_image", "image_url": SMALL}]
    payload = {"model": "eyes", "input": [{"role": "user", "content": parts}]}
    assert check(payload, VISION, "responses") is None
    param, message = check(payload, ("text",), "responses")
    assert param == "input[0].content[1]" and "does not read images" in message
    assert check({"model": "eyes", "input": "Just text."}, ("text",), "responses") is None
