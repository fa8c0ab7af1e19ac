"""Images, video and audio in a chat or Responses request, checked against the deployment before anything is
spent: a model that reads only text is never sent an image (vLLM would answer with its own error, or
drop it), an inline image holds what it says and stays under the size limit, a request holds no more
media than the engine was started to take (`--limit-mm-per-prompt`, serving.spec.MEDIA_PER_PROMPT), and
a remote URL is refused unless the engine may fetch from its host.

Why remote URLs are refused here as well as by the engine: engines start with `--allowed-media-domains`
(serving.spec.media_domain_args; a reserved host that matches nothing by default), so they never fetch an
arbitrary address. The engine's refusal reads like an internal error, though; the gateway says what to
send instead (the image inline, as a base64 `data:` URL) and which setting allows a domain.

The parts read (OpenAI's and vLLM's shapes):
- chat: `messages[i].content[j]` of type `image_url` (`{"image_url": {"url": …}}`), `video_url`,
  `input_audio` (`{"input_audio": {"data": base64, "format": …}}`) and `audio_url`;
- Responses: `input[i].content[j]` of type `input_image` (`{"image_url": "…"}`) and `input_audio`.

Pure: plain values in, (param, message) or None out, in the words of OpenAI's errors.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from serving.spec import MEDIA_PER_PROMPT

# A part's type → (the modality it carries, where its URL or data is inside the part).
PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image_url": ("image", ("image_url", "url")),
    "input_image": ("image", ("image_url",)),
    "video_url": ("video", ("video_url", "url")),
    "audio_url": ("audio", ("audio_url", "url")),
    "input_audio": ("audio", ("input_audio", "data")),
}
NOUNS = {"image": ("an image", "images"), "video": ("a video", "videos"), "audio": ("audio", "audio inputs")}
CONTAINERS = {"chat.completions": "messages", "responses": "input"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # the largest inline medium, decoded
    domains: frozenset[str]  # hosts engines may fetch media from (settings.ENGINE_MEDIA_DOMAINS)


@dataclass(frozen=True)
class Part:
    param: str  # where it is, as a client names it: `messages[0].content[1]`
    modality: str
    source: Any  # the URL (or, for `input_audio`, the base64 data)
    raw_base64: bool  # `input_audio`: the data is base64 without a `data:` prefix


def parts(route: str, payload: Mapping[str, Any]) -> Iterator[Part]:
    """The media parts of a request, in order (none for routes without any)."""
    container = CONTAINERS.get(route)
    items = payload.get(container) if container else None
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PARTS:
                continue
            modality, path = PARTS[kind]
            source: Any = part
            for key in path:
                source = source.get(key) if isinstance(source, dict) else None
            yield Part(f"{container}[{i}].content[{j}]", modality, source, kind == "input_audio")


def check(
    route: str,
    payload: Mapping[str, Any],
    *,
    deployment: str,
    modalities_in: Sequence[str],
    limits: Limits,
) -> tuple[str, str] | None:
    """(param, message) for the first media part the deployment must not be sent, or None."""
    counts: dict[str, int] = {}
    for part in parts(route, payload):
        if part.modality not in modalities_in:
            one, many = NOUNS[part.modality]
            return part.param, (
                f"The deployment `{deployment}` does not read {many}: its model takes "
                f"{', '.join(modalities_in) or 'text'} only. Send the request without {one}, or call a "
                f"deployment of a model that reads {many} (the catalog's modality filter lists them)."
            )
        counts[part.modality] = counts.get(part.modality, 0) + 1
        most = MEDIA_PER_PROMPT.get(part.modality)
        if most is not None and counts[part.modality] > most:
            return part.param, (
                f"At most {most} {NOUNS[part.modality][1] if most > 1 else NOUNS[part.modality][0]} "
                f"in one request (the engine's limit per prompt); split the request."
            )
        problem = _source_problem(part, limits)
        if problem:
            return part.param, f"'{part.param}' {problem}"
    return None


def _source_problem(part: Part, limits: Limits) -> str | None:
    source = part.source
    if not isinstance(source, str) or not source:
        return "must hold the medium: a base64 `data:` URL (or an allowed https URL)."
    if part.raw_base64:
        return _size_problem(source, limits, part.modality)
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme == "data":
        header, comma, data = source[5:].partition(",")
        mime = header.split(";", 1)[0].lower()
        if not comma or not header.endswith(";base64"):
            return f"is not a base64 data URL: write `data:{part.modality}/<format>;base64,<data>`."
        if not mime.startswith(f"{part.modality}/"):
            return f"holds `{mime or 'no media type'}`, not {NOUNS[part.modality][0]}."
        return _size_problem(data, limits, part.modality)
    if scheme in ("http", "https"):
        host = (urlsplit(source).hostname or "").lower()
        if host in limits.domains:
            return None
        allowed = ", ".join(sorted(limits.domains)) or "none"
        return (
            f"asks the engine to fetch from `{host}`, which this platform does not allow (the domains a "
            f"platform admin allows, ENGINE_MEDIA_DOMAINS: {allowed}). Send the {part.modality} inline as a "
            f"base64 data URL: `data:{part.modality}/<format>;base64,<data>`."
        )
    return f"must be a base64 `data:` URL (or an allowed https URL), not a `{scheme or source[:16]}` URL."


def _size_problem(data: str, limits: Limits, modality: str) -> str | None:
    """Too large, or not base64: the size from the text's length, the alphabet on its first 4 KiB (a wrong
    encoding shows at once; decoding a large medium whole is the engine's work, once)."""
    size = len(data) * 3 // 4 - data[-2:].count("=")
    if size > limits.max_bytes:
        return (
            f"is {_amount(size)} of {modality}; the limit is {_amount(limits.max_bytes)} "
            f"(GATEWAY_MAX_MEDIA_BYTES): send a smaller or more compressed {modality}."
        )
    try:
        if len(data) % 4:
            raise binascii.Error("length")
        binascii.a2b_base64(data[:4096].encode("ascii"), strict_mode=True)  # the head: what a mistake shows
    except (binascii.Error, UnicodeEncodeError):
        return "is not valid base64 (A–Z, a–z, 0–9, + and /, padded with = to a multiple of 4 characters)."
    return None


def _amount(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size / 1024:.0f} KiB"
