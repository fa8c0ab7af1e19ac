"""The one allow-list of engine requests: which fields each engine route accepts, and which values.

Every way in ends in one of four engine routes, and every request an engine receives is checked here
first, before anything is spent:

- `chat.completions`: `/v1/chat/completions`, the web playground (a subset, `PLAYGROUND_FIELDS`), Bedrock's
  InvokeModel and InvokeModelWithResponseStream (whose body is a chat request), and Bedrock's Converse and
  ConverseStream (once translated into one);
- `completions`: `/v1/completions`;
- `embeddings`: `/v1/embeddings`;
- `responses`: `/v1/responses` (OpenAI's Responses API, which the engine serves).

Why an allow-list rather than a deny-list: vLLM accepts many fields beyond OpenAI's, and some change what
the engine runs or who pays for it (`chat_template`, `ignore_eos`, `priority`, `logits_processors`,
`kv_transfer_params` …). A field is forwarded only once someone has decided it is safe, and every new
engine release adds fields nobody has.

Values are checked for their type and, where a value multiplies the engine's work (`n`, `best_of`,
`top_logprobs`, `logprobs`), for a bound. The bounds are OpenAI's documented ones (vLLM's default
`max_logprobs` for the log-probability counts), so a request valid against OpenAI is valid here. `None`
is accepted for any optional field, as OpenAI clients send it for "not set"; what is fine within these
rules but wrong for the model (a `max_tokens` over its context) is left to the engine, which refuses it.

Pure: plain values in, a `Problem` or None out; each API words the problem in its own error format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_CHOICES = 128  # `n`: OpenAI's bound
MAX_BEST_OF = 20  # `best_of`: OpenAI's bound
MAX_LOGPROBS = 20  # `logprobs` / `top_logprobs`: OpenAI's bound for chat, vLLM's default `max_logprobs`
UNKNOWN = "unsupported field"

# A rule returns None when a value is acceptable, else what the value must be ("must be …").
Rule = Callable[[Any], str | None]


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a request: the field (a dotted path inside an object) and what it must
    be, or `UNKNOWN` for a field the route does not accept."""

    field: str
    rule: str

    @property
    def unknown(self) -> bool:
        return self.rule == UNKNOWN


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def whole(low: int | None = None, high: int | None = None) -> Rule:
    if low is not None and high is not None:
        wanted = f"must be a whole number from {low} to {high}"
    elif low is not None:
        wanted = f"must be a whole number of at least {low}"
    else:
        wanted = "must be a whole number"

    def rule(value: Any) -> str | None:
        fits = _is_integer(value) and (low is None or value >= low) and (high is None or value <= high)
        return None if fits else wanted

    return rule


def number(low: float, high: float | None = None) -> Rule:
    wanted = (
        f"must be a number of at least {low}" if high is None else f"must be a number from {low} to {high}"
    )

    def rule(value: Any) -> str | None:
        fits = _is_number(value) and value >= low and (high is None or value <= high)
        return None if fits else wanted

    return rule


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be an object"


def _texts(value: Any) -> str | None:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        return None
    return "must be a string or an array of strings"


def _objects(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return None
    return "must be an array of objects"


def _text_or_object(value: Any) -> str | None:
    return None if isinstance(value, str | dict) else "must be a string or an object"


def _truncation(value: Any) -> str | None:
    return None if value in ("auto", "disabled") else "must be 'auto' or 'disabled'"


def _encoding(value: Any) -> str | None:
    return None if value in ("float", "base64") else "must be 'float' or 'base64'"


# Each route's fields and their rules. `model` and the route's required input (rule None) are checked
# first by `check`, with their own wording; they are listed so that they are allowed.
_SAMPLING: dict[str, Rule | None] = {
    "model": None, "stream": _boolean, "stream_options": _object, "user": _text,
    "n": whole(1, MAX_CHOICES), "seed": whole(), "max_tokens": whole(1), "temperature": number(0, 2),
    "top_p": number(0, 1), "stop": _texts, "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2), "logit_bias": _object, "top_k": whole(-1), "min_p": number(0, 1),
    "repetition_penalty": number(0),
}  # fmt: skip
FIELDS: dict[str, dict[str, Rule | None]] = {
    "chat.completions": {
        **_SAMPLING, "messages": None, "max_completion_tokens": whole(1), "logprobs": _boolean,
        "top_logprobs": whole(0, MAX_LOGPROBS), "tools": _objects, "tool_choice": _text_or_object,
        "parallel_tool_calls": _boolean, "response_format": _object, "metadata": _object, "store": _boolean,
    },
    "completions": {
        **_SAMPLING, "prompt": None, "logprobs": whole(0, MAX_LOGPROBS), "echo": _boolean,
        "best_of": whole(1, MAX_BEST_OF), "suffix": _text,
    },
    "embeddings": {"model": None, "input": None, "encoding_format": _encoding, "dimensions": whole(1),
                   "user": _text},
    # Not `store`, `previous_response_id`, `background`: the engine keeps those answers in its own
    # memory, unbounded and shared by every key of the deployment.
    "responses": {
        "model": None, "input": None, "instructions": _text, "stream": _boolean, "user": _text,
        "max_output_tokens": whole(1), "temperature": number(0, 2), "top_p": number(0, 1),
        "top_logprobs": whole(0, MAX_LOGPROBS), "tools": _objects, "tool_choice": _text_or_object,
        "parallel_tool_calls": _boolean, "text": _object, "reasoning": _object, "metadata": _object,
        "truncation": _truncation,
    },
}  # fmt: skip
REQUIRED = {
    "chat.completions": "messages", "completions": "prompt", "embeddings": "input", "responses": "input",
}  # fmt: skip

# `stream_options` is an object of its own; these are the members vLLM reads.
STREAM_OPTIONS: dict[str, Rule | None] = {"include_usage": _boolean, "continuous_usage_stats": _boolean}

# What the web playground's page sends; everything else of the chat route stays with API keys.
PLAYGROUND_FIELDS = frozenset({"messages", "max_tokens", "temperature"})


def check(route: str, payload: Mapping[str, Any]) -> Problem | None:
    """The first problem of an engine request for `route`, or None when it may be sent as it is.

    In order: a field the route does not accept; `model`; the route's required input; then each field's
    value, in the request's order.
    """
    fields = FIELDS[route]
    for name in payload:
        if name not in fields:
            return Problem(name, UNKNOWN)
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return Problem("model", "must be the name of one of your deployments")
    required = REQUIRED[route]
    problem = _required(route, payload.get(required))
    if problem:
        return Problem(required, problem)
    for name, value in payload.items():
        rule = fields[name]
        if rule is not None and value is not None and (problem := rule(value)):
            return Problem(name, problem)
    options = payload.get("stream_options")
    if isinstance(options, dict):
        return _members("stream_options", options, STREAM_OPTIONS)
    return None


def _required(route: str, value: Any) -> str | None:
    if route == "chat.completions":
        if not isinstance(value, list) or not value:
            return "must be a non-empty array of messages"
        if not all(isinstance(message, dict) and "role" in message for message in value):
            return "must hold objects that each have a 'role'"
        return None
    if not isinstance(value, str | list) or value in ("", []):
        return "must be a non-empty string or array"
    return None


def _members(path: str, value: dict[str, Any], rules: dict[str, Rule | None]) -> Problem | None:
    for name, member in value.items():
        if name not in rules:
            return Problem(f"{path}.{name}", UNKNOWN)
        rule = rules[name]
        if rule is not None and member is not None and (problem := rule(member)):
            return Problem(f"{path}.{name}", problem)
    return None
