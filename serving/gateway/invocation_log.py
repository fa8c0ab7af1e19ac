"""The pipeline's log step: whether a call is logged, its streamed answer assembled, its record handed on.

1. `decide`, once per admitted call, before anything is proxied: the organisation's policy comes from the
   per-process snapshot learning.capture keeps (one database read per GATEWAY_CACHE_SECONDS per
   organisation and process, none in steady state; never Redis). Logging off, a deployment or key
   outside the narrowing lists, a sample that misses: `call.log` stays None and nothing more is done
   for the call. So a stream is assembled only when its call is logged, and an unlogged call costs one
   dictionary look-up and one comparison.
2. `StreamAssembly` rebuilds, from the events relayed, the answer the engine would have given without
   streaming: the text of each choice, its tool calls (joined by index: id, name and argument pieces),
   its reasoning, its finish reason, and the engine's usage. The caller's events pass through untouched.
3. `capture`, after the answer, in the metering task (serving.gateway.pipeline.finish): the record of
   learning.models is built and queued by learning.capture (bounded Redis queue, overflow counted).
   The response never waits for it, and the ASGI lifespan's drain awaits it at shutdown.

The request kept is the one sent to the engine (after Bedrock's translation, with the usage chunk the
gateway always asks for); the answer is the engine's own, in OpenAI's shape whatever the route, so
datasets read one shape. Embeddings keep their input only. A call through a prompt router is recorded
under the deployment that answered, with the router's name and choice beside it.
"""

from __future__ import annotations

import datetime
import random
from typing import TYPE_CHECKING, Any

from learning import capture as log_capture

if TYPE_CHECKING:
    from serving.gateway.pipeline import Call

# The pipeline's route (metrics' label) → the record's route (learning.models).
ROUTES = {
    "chat.completions": "openai.chat",
    "completions": "openai.completions",
    "embeddings": "openai.embeddings",
    "responses": "openai.responses",
    "bedrock.converse": "bedrock.converse",
    "bedrock.converse-stream": "bedrock.converse-stream",
    "bedrock.invoke": "bedrock.invoke",
    "bedrock.invoke-stream": "bedrock.invoke-stream",
}
PLAYGROUND = "web.playground"
INPUT_ONLY = frozenset({"embeddings"})  # vectors are not worth keeping; what was embedded is


async def decide(call: Call) -> None:
    """Set `call.log` (and, for a stream, `call.assembly`) when the call's organisation logs it."""
    if not call.caller.logged:
        return
    policy = await log_capture.policy_of(call.caller.organization_id)
    draw = random.random()  # noqa: S311 (sampling, not secrecy)
    # A routed call is selected by the deployment that answers it or by the router's name, so narrowing
    # the log to a router keeps all its calls.
    names = [call.target.name] if call.router is None else [call.target.name, call.router.name]
    if not any(policy.selects(name, call.caller.key_prefix, draw) for name in names):
        return
    call.log = policy
    if call.streamed:
        call.assembly = StreamAssembly()


class StreamAssembly:
    """A streamed answer put back together, chunk by chunk (OpenAI's chat or completions events)."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.completion = False  # completions' events carry `text`, chat's a `delta`

    def feed(self, chunk: dict[str, Any]) -> None:
        if not self.head:
            self.head = {name: chunk[name] for name in ("id", "created", "model") if name in chunk}
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._feed_choice(choice)

    def _feed_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        found = self.choices.setdefault(index if isinstance(index, int) else 0, {"parts": {}, "tools": {}})
        if choice.get("finish_reason"):
            found["finish_reason"] = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            if isinstance(choice.get("text"), str):
                self.completion = True
                found["parts"].setdefault("text", []).append(choice["text"])
            return
        if isinstance(delta.get("role"), str):
            found["role"] = delta["role"]
        for name in ("content", "reasoning_content", "reasoning"):
            if isinstance(delta.get(name), str):
                found["parts"].setdefault(name, []).append(delta[name])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                _feed_tool_call(found["tools"], call)

    def answer(self, usage: dict[str, int] | None) -> dict[str, Any]:
        """The answer as the engine gives it unstreamed (`chat.completion` or `text_completion`)."""
        choices = []
        for index, found in sorted(self.choices.items()):
            texts = {name: "".join(pieces) for name, pieces in found["parts"].items()}
            choice: dict[str, Any] = {"index": index, "finish_reason": found.get("finish_reason")}
            if self.completion:
                choice["text"] = texts.get("text", "")
            else:
                choice["message"] = _message(found, texts)
            choices.append(choice)
        kind = "text_completion" if self.completion else "chat.completion"
        return {**self.head, "object": kind, "choices": choices, "usage": usage}


def _message(found: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """A chat choice's message: role, content (null when none came), reasoning and tool calls if any."""
    message: dict[str, Any] = {"role": found.get("role", "assistant"), "content": texts.get("content")}
    message.update((name, texts[name]) for name in ("reasoning_content", "reasoning") if name in texts)
    if found["tools"]:
        message["tool_calls"] = [found["tools"][index] for index in sorted(found["tools"])]
    return message


def _feed_tool_call(tools: dict[int, dict[str, Any]], piece: dict[str, Any]) -> None:
    """Join a tool call's streamed pieces: the first carries its id, type and name, the rest append to
    its arguments."""
    index = piece.get("index", len(tools))
    tool = tools.setdefault(
        index if isinstance(index, int) else len(tools),
        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
    )
    if piece.get("id"):
        tool["id"] = piece["id"]
    if piece.get("type"):
        tool["type"] = piece["type"]
    function = piece.get("function")
    if isinstance(function, dict):
        if isinstance(function.get("name"), str):
            tool["function"]["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            tool["function"]["arguments"] += function["arguments"]


def record(call: Call, finished: float) -> dict[str, Any]:
    """The call's invocation record (fields: learning.models), bodies included; what the organisation
    does not keep is dropped, and personal data masked, further on (learning.capture, learning.writer)."""
    elapsed = finished - call.started
    ttft = None if call.first_token_at is None else call.first_token_at - call.started
    prompt = call.prompt_tokens if call.prompt_tokens is not None else call.estimated_prompt_tokens
    usage = None
    if call.prompt_tokens is not None:
        usage = {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        }
    answer = call.assembly.answer(usage) if call.assembly is not None else call.answer
    arrived = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=elapsed)
    return {
        "id": call.request_id,
        "time": arrived.isoformat(),
        "organization_id": call.caller.organization_id,
        "key_prefix": call.caller.key_prefix,
        "deployment_id": call.target.deployment_id,
        "deployment": call.target.name,
        "route": call.log_route or ROUTES.get(call.route, call.route),
        "request": call.payload,
        "answer": None if call.route in INPUT_ONLY else answer,
        "tokens": {"prompt": prompt, "completion": call.completion_tokens},
        "latency_ms": round(elapsed * 1000),
        "time_to_first_token_ms": None if ttft is None else round(ttft * 1000),
        "status": call.status_code,
        # A routed call's router and its choice (in shadow mode, the deployment it would have chosen).
        "router": call.router.name if call.router is not None else None,
        "router_choice": call.choice.chosen if call.choice is not None else None,
        # What the guardrails did (serving.gateway.guardrails): guardrail, rule, direction, action.
        "guardrails": [recorded.as_record() for recorded in call.interventions],
    }


async def capture(call: Call, finished: float) -> bool:
    """Queue the call's record if `decide` chose it; never raises (learning.capture counts failures)."""
    if call.log is None:
        return False
    return await log_capture.capture_selected(record(call, finished), call.log)
