"""The audio routes (serving/gateway/audio_api.py): the unmodified openai client's transcriptions and
translations through the real gateway (gunicorn) to a stand-in speech-to-text engine, which notes the form
it was sent and answers in the engine's shape (no Whisper model can be had on this machine); the seconds
of audio metered; and, in process, every refusal: a malformed form, a field the engine route does not
take, a deployment that cannot transcribe, another organisation's key."""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis
from django.conf import settings

from marketplace.accounts import services as account_services
from marketplace.accounts.models import Organization
from serving.gateway.metering import QUEUE_KEY, flush_usage
from serving.models import UsageRecord
from tests.serving.gateway.conftest import CHAT, GATEWAY_REDIS_DB, organization_served_by
from tests.serving.gateway.in_process import key_headers, post
from tests.standin_http import JsonHandler, serving

pytestmark = pytest.mark.usefixtures("transactional_catalog")

SPEECH = "whisper-large-v3"
AUDIO = b"RIFF" + bytes(range(256)) * 40  # what the engine must receive, byte for byte


class SpeechEngine(JsonHandler):
    received: list[tuple[str, str, bytes]] = []  # (path, content type, body)
    usage: dict[str, Any] | None = {"type": "duration", "seconds": 3}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        SpeechEngine.received.append((self.path, self.headers["content-type"], body))
        usage = {"usage": SpeechEngine.usage} if SpeechEngine.usage else {}
        self.send_json({"text": "Hallo Welt", **usage})


@pytest.fixture
def engine() -> Iterator[str]:
    SpeechEngine.received, SpeechEngine.usage = [], {"type": "duration", "seconds": 3}
    with serving(SpeechEngine) as url:
        yield url


@pytest.fixture
def speaker(engine: str) -> tuple[Organization, str]:
    return organization_served_by(engine, "Speech", whisper=SPEECH, chat=CHAT)


def form(**fields: str) -> tuple[bytes, bytes]:
    """A multipart body with `fields` and the audio as `file`; (body, its content type)."""
    boundary = "audio-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="hi.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + AUDIO
        + b"\r\n"
    )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}".encode()


def metered(organization: Organization, count: int) -> list[UsageRecord]:
    connection = redis.Redis.from_url(settings.REDIS_URL.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}")
    deadline = time.monotonic() + 10
    while connection.llen(QUEUE_KEY) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    flush_usage(connection)
    return list(UsageRecord.objects.filter(organization=organization))


def test_the_openai_client_transcribes_through_the_gateway_and_the_audio_seconds_are_metered(
    gateway_url: str, speaker: tuple[Organization, str]
) -> None:
    organization, secret = speaker
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0, timeout=60)
    answer = client.audio.transcriptions.create(
        model="whisper", file=("hi.wav", AUDIO, "audio/wav"), language="de"
    )
    assert answer.text == "Hallo Welt"
    [(path, content_type, body)] = SpeechEngine.received
    assert path == "/v1/audio/transcriptions" and content_type.startswith("multipart/form-data")
    assert AUDIO in body and b'name="language"\r\n\r\nde' in body and b'name="model"\r\n\r\nwhisper' in body
    [record] = metered(organization, 1)
    assert (record.route, record.audio_seconds, record.status_code) == ("audio.transcriptions", 3, 200)


def test_the_openai_client_translates_through_the_gateway_and_a_wav_files_length_is_metered(
    gateway_url: str, speaker: tuple[Organization, str]
) -> None:
    organization, secret = speaker
    SpeechEngine.usage = None  # the engine's translations carry no usage
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0, timeout=60)
    wav = io.BytesIO()
    with wave.open(wav, "wb") as sound:  # 2.5 s of silence, 16 kHz mono
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(16000)
        sound.writeframes(bytes(2 * 40000))
    answer = client.audio.translations.create(model="whisper", file=("hi.wav", wav.getvalue(), "audio/wav"))
    assert answer.text == "Hallo Welt"
    assert [path for path, _, _ in SpeechEngine.received] == ["/v1/audio/translations"]
    [record] = metered(organization, 1)
    assert (record.route, record.audio_seconds) == ("audio.translations", 3)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"language": "de"}, "model"),
        ({"model": "whisper", "stream": "true"}, "stream"),
        ({"model": "whisper", "voice": "alloy"}, "voice"),
        ({"model": "whisper", "response_format": "mp3"}, "response_format"),
        ({"model": "whisper", "temperature": "hot"}, "temperature"),
    ],
    ids=["model-missing", "stream", "unknown-field", "response-format", "temperature"],
)
def test_a_malformed_form_is_a_400_naming_the_field(
    speaker: tuple[Organization, str], fields: dict[str, str], param: str
) -> None:
    body, content_type = form(**fields)
    answer = post("/v1/audio/transcriptions", body, key_headers(speaker[1]), content_type=content_type)
    assert (answer.status, answer.json()["error"]["param"]) == (400, param)
    assert SpeechEngine.received == []


def test_a_form_without_audio_or_a_json_body_is_a_400_naming_file(speaker: tuple[Organization, str]) -> None:
    boundary = b"b"
    no_file = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--b--\r\n'
    answer = post(
        "/v1/audio/transcriptions",
        no_file,
        key_headers(speaker[1]),
        content_type=b"multipart/form-data; boundary=" + boundary,
    )
    assert (answer.status, answer.json()["error"]["param"]) == (400, "file")
    answer = post("/v1/audio/transcriptions", {"model": "whisper"}, key_headers(speaker[1]))
    assert (answer.status, answer.json()["error"]["param"]) == (400, "file")
    assert SpeechEngine.received == []


def test_a_chat_deployment_cannot_transcribe_and_says_what_it_serves(
    speaker: tuple[Organization, str],
) -> None:
    body, content_type = form(model="chat")
    answer = post("/v1/audio/transcriptions", body, key_headers(speaker[1]), content_type=content_type)
    assert answer.status == 400 and "/v1/chat/completions" in answer.json()["error"]["message"]
    assert SpeechEngine.received == []


def test_an_outsiders_key_cannot_transcribe_with_another_organisations_deployment(
    speaker: tuple[Organization, str],
) -> None:
    outsider = account_services.create_organization(slug="outsider", name="Outsider", owner=None)
    _, secret = account_services.create_api_key(
        organization=outsider, name="k", created_by=None, expires_at=None
    )
    body, content_type = form(model="whisper")
    answer = post("/v1/audio/transcriptions", body, key_headers(secret), content_type=content_type)
    assert (answer.status, answer.json()["error"]["code"]) == (404, "model_not_found")
    assert post("/v1/audio/transcriptions", body, [], content_type=content_type).status == 401
    assert SpeechEngine.received == []


def test_a_deployment_that_transcribes_lists_its_audio_routes(speaker: tuple[Organization, str]) -> None:
    from django.test import Client

    listed = Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {speaker[1]}").json()["data"]
    routes = {model["id"]: model.get("routes") for model in listed}
    assert routes["whisper"] == ["audio.transcriptions", "audio.translations"]


def test_what_the_engine_answers_is_passed_through(speaker: tuple[Organization, str]) -> None:
    body, content_type = form(model="whisper", response_format="json", temperature="0.2", prompt="Hallo")
    answer = post("/v1/audio/transcriptions", body, key_headers(speaker[1]), content_type=content_type)
    assert (answer.status, answer.json()["text"]) == (200, "Hallo Welt")
    [(_, _, sent)] = SpeechEngine.received
    assert b'name="temperature"\r\n\r\n0.2' in sent and AUDIO in sent
