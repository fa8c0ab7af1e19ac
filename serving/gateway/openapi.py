"""The invoke API in the platform's OpenAPI schema (/api/schema/, read by /api/docs/).

The invoke routes (serving/gateway/urls.py) are plain async Django views, which drf-spectacular does not
see, so this postprocessing hook adds them. It cannot drift from the routes: the paths are read from the
URLconf itself, each route is documented by its URL name (a test fails for a route without an entry
here), and the accepted request fields come from the gateway's allow-lists
(serving.gateway.request_fields, and serving.gateway.scoring for rerank and score), so a field allowed
there is a field documented here.
"""

from __future__ import annotations

import re
from typing import Any

from django.urls import URLPattern

from serving.gateway import audio_api, request_fields, scoring

OPENAI_TAG, BEDROCK_TAG, METRICS_TAG = "Invoke: OpenAI-compatible", "Invoke: Bedrock-compatible", "Metrics"
SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}]
MODEL_ID = {
    "name": "model_id",
    "in": "path",
    "required": True,
    "description": "The name of one of your organisation's deployments (or of a prompt router).",
    "schema": {"type": "string"},
}
# What every answer says about the call (serving/gateway/routers.py).
ANSWER_HEADERS = {
    "x-request-id": {
        "description": "The gateway's id of this call: its usage record's, which POST /api/feedback/ rates.",
        "schema": {"type": "string"},
    },
    "x-router-deployment": {
        "description": "When `model` names a prompt router: the deployment that answered.",
        "schema": {"type": "string"},
    },
}
SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "description": "An error in OpenAI's format, so the openai client raises its usual exceptions.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "What went wrong and what to do."},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True, "description": "The field at fault."},
                    "code": {"type": "string", "nullable": True},
                },
                "required": ["message", "type"],
            }
        },
        "required": ["error"],
    },
    "BedrockError": {
        "type": "object",
        "description": "An error in Bedrock's format; the exception's name is in `x-amzn-ErrorType`.",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
    },
}
_OPENAI_ERRORS = {
    "400": "The body is not a JSON object, or a field is wrong or not accepted (`param` names it).",
    "401": "No API key was given, or the key is unknown, expired or revoked.",
    "404": "No ready deployment of that name in the key's organisation.",
    "413": "The body is too large.",
    "429": "A rate limit or the monthly token budget is used up; `Retry-After` says when to try again.",
    "502": "The engine could not be reached.",
    "503": "No replica is ready, or the gateway's limits cannot be checked.",
    "504": "The engine did not answer in time.",
}
_BEDROCK_ERRORS = {
    "400": "ValidationException: the body is not a valid request.",
    "403": "AccessDeniedException: no API key was given, or the key is unknown, expired or revoked.",
    "404": "ResourceNotFoundException: no ready deployment of that name in the key's organisation.",
    "413": "ValidationException: the body is too large.",
    "429": "ThrottlingException: a rate limit or the monthly token budget is used up.",
    "503": "ServiceUnavailableException: no replica is ready.",
}


def _errors(kind: str, described: dict[str, str]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{kind}"}
    return {
        status: {"description": text, "content": {"application/json": {"schema": ref}}}
        for status, text in described.items()
    }


def _engine_request(route: str, example: dict[str, Any]) -> dict[str, Any]:
    """A request body of an engine route: exactly the fields the gateway forwards (request_fields, or
    scoring for rerank and score)."""
    reference = "OpenAI's API reference"
    if route in scoring.ROUTES:
        fields, required = scoring.FIELDS[route], list(scoring.REQUIRED[route])
        reference = "vLLM's rerank and score APIs (Jina's and Cohere's rerank shape)"
    else:
        fields, required = request_fields.FIELDS[route], ["model", request_fields.REQUIRED[route]]
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": f"As in {reference}; only these fields are accepted.",
                    "properties": {name: {} for name in sorted(fields)},
                    "required": required,
                    "additionalProperties": False,
                },
                "example": example,
            }
        },
    }


def _openai(route: str, summary: str, example: dict[str, Any], streams: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        answer["text/event-stream"] = {
            "schema": {"type": "string"},
            "description": (
                "With `stream: true`: server-sent events, ending with `response.completed`."
                if route == "responses"
                else "With `stream: true`: server-sent events, then `data: [DONE]`."
            ),
        }
    return {
        "post": {
            "tags": [OPENAI_TAG],
            "summary": summary,
            "description": (
                "Call a deployment, or a prompt router, by its name in `model`, with an API key of its "
                "organisation. Counted against the key's and the organisation's limits; a call the engine "
                "refuses is not charged."
            ),
            "security": SECURITY,
            "requestBody": _engine_request(route, example),
            "responses": {
                "200": {
                    "description": "The engine's answer, with `usage`.",
                    "headers": ANSWER_HEADERS,
                    "content": answer,
                },
                **_errors("OpenAIError", _OPENAI_ERRORS),
            },
        }
    }


def _audio(route: str, summary: str) -> dict[str, Any]:
    """An audio route: a multipart form of exactly the fields the gateway forwards (audio_api.FIELDS)."""
    fields: dict[str, Any] = {name: {"type": "string"} for name in sorted(audio_api.FIELDS[route])}
    return {
        "post": {
            "tags": [OPENAI_TAG],
            "summary": summary,
            "description": (
                "As OpenAI's audio API (`client.audio.transcriptions.create`), for a deployment of a speech "
                "recognition card, with an API key of its organisation. The usage record keeps the seconds "
                "of audio the engine read. Not streamed; refused (400) where a guardrail applies."
            ),
            "security": SECURITY,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "description": "Only these fields are accepted; `file` within the body limit.",
                            "properties": {"file": {"type": "string", "format": "binary"}, **fields},
                            "required": ["file", "model"],
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The engine's answer: `{text, usage}`, or the text format asked for.",
                    "headers": ANSWER_HEADERS,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors("OpenAIError", _OPENAI_ERRORS),
            },
        }
    }


def _bedrock(summary: str, body: dict[str, Any], streams: bool) -> dict[str, Any]:
    content_type = "application/vnd.amazon.eventstream" if streams else "application/json"
    return {
        "post": {
            "tags": [BEDROCK_TAG],
            "summary": summary,
            "description": (
                "For boto3's `bedrock-runtime` client with `endpoint_url` set to this platform; the API key "
                "is the bearer token (`AWS_BEARER_TOKEN_BEDROCK`, which boto3 sends over HTTPS only)."
            ),
            "security": SECURITY,
            "parameters": [MODEL_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}, "example": body}},
            },
            "responses": {
                "200": {
                    "description": "The answer"
                    + (", as an AWS event stream." if streams else ".")
                    + " Through a prompt router, Converse's `trace.promptRouter.invokedModelId` (in a"
                    " stream, the metadata event's) names the deployment that answered.",
                    "headers": ANSWER_HEADERS,
                    "content": {content_type: {"schema": {"type": "object" if not streams else "string"}}},
                },
                **_errors("BedrockError", _BEDROCK_ERRORS),
            },
        }
    }


HELLO = [{"role": "user", "content": "Hello"}]
CONVERSE = {
    "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
    "inferenceConfig": {"maxTokens": 100},
}
# Each invoke route's documentation, by its URL name in serving/gateway/urls.py.
OPERATIONS: dict[str, dict[str, Any]] = {
    "openai-chat-completions": _openai(
        "chat.completions",
        "Chat completion",
        {"model": "my-chat", "messages": HELLO, "max_tokens": 100},
        True,
    ),
    "openai-completions": _openai(
        "completions", "Text completion", {"model": "my-chat", "prompt": "Hello", "max_tokens": 100}, True
    ),
    "openai-responses": _openai(
        "responses",
        "Response (OpenAI's Responses API)",
        {"model": "my-chat", "input": "Hello", "max_output_tokens": 100},
        True,
    ),
    "openai-embeddings": _openai(
        "embeddings", "Embeddings", {"model": "my-embedder", "input": ["Hello"]}, False
    ),
    "openai-rerank": _openai(
        "rerank",
        "Rerank documents by relevance to a query (Jina's and Cohere's rerank shape)",
        {
            "model": "my-reranker",
            "query": "What is the capital of France?",
            "documents": ["Paris is the capital of France.", "Berlin is in Germany."],
            "top_n": 1,
        },
        False,
    ),
    "openai-score": _openai(
        "score",
        "Score pairs of texts: `queries` with `documents` (or `text_1` with `text_2`), 1:1, 1:N or N:N",
        {
            "model": "my-reranker",
            "queries": "What is the capital of France?",
            "documents": ["Paris is the capital of France.", "Berlin is in Germany."],
        },
        False,
    ),
    "openai-audio-transcriptions": _audio("audio.transcriptions", "Transcribe speech (OpenAI's audio API)"),
    "openai-audio-translations": _audio("audio.translations", "Translate speech into English text"),
    "openai-models": {
        "get": {
            "tags": [OPENAI_TAG],
            "summary": "The organisation's ready deployments, as OpenAI lists models",
            "security": SECURITY,
            "responses": {
                "200": {
                    "description": "`{object: list, data: [{id, object: model, routes, …}]}`: `routes` "
                    "names what each can answer (`chat.completions`, `responses`, `completions`, "
                    "`embeddings`, `rerank`, `score`, `audio.transcriptions`, `audio.translations`); "
                    "another route answers 400 saying which it serves.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors("OpenAIError", {"401": _OPENAI_ERRORS["401"]}),
            },
        }
    },
    "bedrock-converse": _bedrock("Converse", CONVERSE, False),
    "bedrock-converse-stream": _bedrock("ConverseStream", CONVERSE, True),
    "bedrock-invoke": _bedrock(
        "InvokeModel (an OpenAI chat body)", {"messages": HELLO, "max_tokens": 100}, False
    ),
    "bedrock-invoke-stream": _bedrock(
        "InvokeModelWithResponseStream (an OpenAI chat body)", {"messages": HELLO, "max_tokens": 100}, True
    ),
    "bedrock-apply-guardrail": {
        "post": {
            "tags": [BEDROCK_TAG],
            "summary": "ApplyGuardrail: check a text against a published guardrail version, without a model",
            "description": (
                "For boto3's `bedrock-runtime` `apply_guardrail`, as the other Bedrock routes. `source` is "
                "INPUT or OUTPUT; the answer's `action` is GUARDRAIL_INTERVENED or NONE, with `outputs` (the "
                "masked text or the guardrail's blocked message) and `assessments` per policy."
            ),
            "security": SECURITY,
            "parameters": [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": text,
                }
                for name, text in (
                    ("guardrail_id", "The guardrail's id (or name) in your organisation."),
                    ("version", "A published version number."),
                )
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object"},
                        "example": {
                            "source": "INPUT",
                            "content": [{"text": {"text": "Mail me at a@b.example"}}],
                        },
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "What the guardrail did.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors("BedrockError", _BEDROCK_ERRORS),
            },
        }
    },
    "metrics": {
        "get": {
            "tags": [METRICS_TAG],
            "summary": "Prometheus metrics of the gateway (for Prometheus only)",
            "description": "With METRICS_TOKEN set, send it as `Authorization: Bearer …`; without it, only "
            "callers on this machine are answered.",
            "responses": {
                "200": {
                    "description": "Prometheus' text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": {"description": "METRICS_TOKEN is set and was not sent."},
                "403": {"description": "No METRICS_TOKEN is set and the caller is not on this machine."},
            },
        }
    },
}


UNDESCRIBED = {
    "post": {"summary": "Not described yet", "responses": {"200": {"description": "See the README."}}}
}


def openapi_path(route: str) -> str:
    """A Django route as an OpenAPI path: `model/<str:model_id>/converse` → `/model/{model_id}/converse`."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def invoke_routes() -> dict[str, str]:
    """Each invoke route's URL name and OpenAPI path, from the URLconf that serves them."""
    from serving.gateway import urls

    return {
        pattern.name or "": openapi_path(str(pattern.pattern))
        for pattern in urls.urlpatterns
        if isinstance(pattern, URLPattern)
    }


def add_invoke_api(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the invoke API's operations, error formats and tags.

    Runs after the REST API's own hooks, so their DRF-style error answers are not added to these
    operations, which answer in OpenAI's or Bedrock's format."""
    for name, path in invoke_routes().items():
        # A route nobody has described yet is still listed (its test says to describe it).
        item = OPERATIONS.get(name, UNDESCRIBED)
        result.setdefault("paths", {})[path] = {
            method: {"operationId": f"{name.replace('-', '_')}_{method}", **operation}
            for method, operation in item.items()
        }
    result.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    tags = result.setdefault("tags", [])
    tags += [
        {"name": OPENAI_TAG, "description": "The OpenAI API's routes, for the openai client and curl."},
        {"name": BEDROCK_TAG, "description": "Amazon Bedrock Runtime's routes, for boto3."},
        {"name": METRICS_TAG, "description": "What Prometheus scrapes."},
    ]
    return result
