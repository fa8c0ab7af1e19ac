"""Error answers in each API's own format, so unmodified clients raise their usual exceptions."""

from __future__ import annotations

import json

from django.http import HttpResponse

OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
                502: "server_error", 503: "server_error", 504: "server_error"}  # fmt: skip

# Bedrock's exception names and statuses (bedrock-runtime service model).
BEDROCK_TYPES = {400: "ValidationException", 401: "AccessDeniedException", 403: "AccessDeniedException",
                 404: "ResourceNotFoundException", 405: "ValidationException", 413: "ValidationException",
                 429: "ThrottlingException", 502: "ModelErrorException", 503: "ServiceUnavailableException",
                 504: "ModelTimeoutException"}  # fmt: skip
BEDROCK_STATUS = {"ModelErrorException": 424, "ModelTimeoutException": 408}


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:  # fmt: skip
    body = {"error": {"message": message, "type": OPENAI_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}  # fmt: skip
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def key_refusal(authorization: str, refused: str) -> str:
    """What a caller without a usable key is told: that no key was sent (an empty `Authorization`, or
    `Bearer ` with nothing after it, as a shell sends when $MARKETPLACE_API_KEY is not set), else
    `refused`, the API's own sentence for a key that is wrong, expired or revoked."""
    words = authorization.split()
    if words and words != ["Bearer"] and words != ["bearer"]:
        return refused
    return (
        "No API key was given: send one as the header `Authorization: Bearer mk-…` (create a key on the "
        "API keys page, then `export MARKETPLACE_API_KEY=` it)."
    )


def bedrock_error(status: int, message: str, *, headers: dict[str, str] | None = None) -> HttpResponse:
    kind = BEDROCK_TYPES.get(status, "InternalServerException")
    response = HttpResponse(
        json.dumps({"message": message}),
        status=BEDROCK_STATUS.get(kind, status),
        content_type="application/json",
    )
    response["x-amzn-ErrorType"] = kind
    for name, value in (headers or {}).items():
        response[name] = value
    return response
