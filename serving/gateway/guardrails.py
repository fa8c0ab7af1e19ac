"""The pipeline's guardrail step: an organisation's guardrails (learning.guardrails) applied to a call's
input before the engine sees it and to its output before the caller does.

1. Which (`select`, after admission and the router's decision): every guardrail attached to the call's
   API key, to the router it called and to the deployment that answers, plus the one a Bedrock caller
   named in `guardrailConfig`; read from the directory's per-organisation snapshot (compiled policies,
   refreshed once per GATEWAY_CACHE_SECONDS per process: no database query in steady state). Each
   (guardrail, version) runs once. A call with none costs one dictionary look-up per kind.
2. Input (`check_input`): each text the engine reads as its prompt (message contents, a completion's
   prompt, embeddings' or the Responses API's input, instructions) is checked by every policy in turn,
   each on the text the previous one masked (masks combine); the payload is rewritten with the masked
   texts. Denied topics are checked once on the prompt's text (learning.routing.prompt_text) with its
   embedding: the router's, when the router already embedded that text with the same deployment,
   else one call to the guardrail's embeddings deployment. A block by any policy wins: the call is
   answered with that guardrail's blocked-input message and the engine is never called.
3. Output, unstreamed (`check_answer`): each choice's text, the same way; a block replaces it with the
   blocked-output message and the finish reason says why (OpenAI `content_filter`, Bedrock
   `guardrail_intervened`).
4. Output, streamed (`StreamCheck`): each choice's text goes through a chain of StreamGuards (one per
   policy, the hold-back window of learning.guardrails), so a masked entity never reaches the caller in
   pieces; a block ends the stream with a last event whose finish reason says why, and the engine
   request is closed. Denied topics are checked on the whole answer at its end.
5. Visible: every intervention is kept on the call and, after the answer (the metering task), counted in
   /metrics (guardrail, rule kind, direction, action), put in the usage record and the invocation
   record, and written as GuardrailIntervention rows (only for calls something intervened in).

Tool-call arguments and reasoning text are checked like the rest of a prompt or an answer (a blocked
answer keeps neither); in a stream they are held whole until their choice ends (the Responses API: until
their `.done` event), checked, and sent then. A streamed Responses API answer's text goes through the same
hold-back window, and every event that repeats a whole text carries it as it was sent. Known limit:
prompt-attack detection is pattern-based (learning.guardrails.patterns says what it misses).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from asgiref.sync import sync_to_async
from django.db import close_old_connections

from learning import guardrails, routing
from learning.guardrails.attachments import EMPTY, Attached
from serving.gateway import metrics, upstream

if TYPE_CHECKING:
    from serving.gateway.pipeline import Call

log = logging.getLogger(__name__)

EMBEDDING_TIMEOUT_SECONDS = 2.0
CONTENT_FILTER = "content_filter"  # OpenAI's finish reason for a blocked answer
GUARDRAIL_INTERVENED = "guardrail_intervened"  # Bedrock's stop reason


@dataclass(frozen=True)
class Recorded:
    """One intervention of one guardrail on one call."""

    policy: guardrails.Policy
    direction: str
    hit: guardrails.Intervention

    def as_record(self) -> dict[str, Any]:
        """What the usage and invocation records keep: never the matched text."""
        return {
            "guardrail_id": self.policy.guardrail_id, "guardrail": self.policy.name,
            "version": self.policy.version, "direction": self.direction, "kind": self.hit.kind,
            "name": self.hit.name, "action": self.hit.action,
        }  # fmt: skip


class Unknown(Exception):
    """A guardrail named in a request that is not one of the caller's organisation's published ones."""


# --- 1. Which guardrails ------------------------------------------------------------------------------------


async def named(call: Call, attached: Attached, identifier: str, version: str) -> guardrails.Policy:
    """The published version a Bedrock caller named (guardrailConfig), or Unknown."""
    policy = attached.named(identifier)
    if policy is None:
        raise Unknown(identifier)
    if version in ("", "DRAFT") or not version.isdigit():
        raise Unknown(version)
    number = int(version)
    if number == policy.version:
        return policy
    found = guardrails.cached(policy.guardrail_id, number) or await sync_to_async(_policy_of)(
        policy.guardrail_id, number
    )
    if found is None:
        raise Unknown(version)
    return found


def _policy_of(guardrail_id: int, number: int) -> guardrails.Policy | None:
    try:
        return guardrails.policy_of(guardrail_id, number)
    finally:
        close_old_connections()


def select(call: Call, attached: Attached) -> None:
    """Set `call.guardrails`: the policies attached to the call's key, router and deployment, and the one
    it named, each (guardrail, version) once."""
    if attached is EMPTY and call.requested_guardrail is None:
        return
    found: list[guardrails.Policy] = []
    if call.caller.key_id is not None:
        found.extend(attached.keys.get(call.caller.key_id, ()))
    if call.router is not None:
        found.extend(attached.routers.get(call.router.name, ()))
    found.extend(attached.deployments.get(call.target.deployment_id, ()))
    if call.requested_guardrail is not None:
        found.append(call.requested_guardrail)
    unique = {(policy.guardrail_id, policy.version): policy for policy in found}
    call.guardrails = tuple(unique.values())


# --- Embeddings for denied topics ---------------------------------------------------------------------------


async def _embedding(call: Call, policy: guardrails.Policy, text: str, catalog_targets: Any) -> Any:
    """The text's embedding by the policy's embeddings deployment, or None when it cannot be had (the
    topics are then not checked, which is logged and counted). The router's embedding of the same text by
    the same deployment is reused."""
    router = call.router
    if (
        call.embedding is not None
        and router is not None
        and router.embedder is not None
        and router.embedder.name == policy.embedding_deployment
        and text == call.prompt
    ):
        return call.embedding
    target = catalog_targets.get(policy.embedding_deployment) if catalog_targets else None
    if target is None or not target.endpoints or not text:
        metrics.GUARDRAIL_EMBEDDING_FAILURES.labels(policy.name).inc()
        return None
    try:
        async with asyncio.timeout(EMBEDDING_TIMEOUT_SECONDS):
            exchange = await upstream.call(
                "/v1/embeddings", {"model": target.name, "input": text}, target.endpoints
            )
        vector = np.asarray(json.loads(exchange.body)["data"][0]["embedding"], dtype=np.float32)
        if vector.ndim != 1 or not vector.size:
            raise ValueError("not a vector")
        return vector
    except (TimeoutError, upstream.UpstreamError, ValueError, KeyError, IndexError, TypeError) as error:
        log.warning("guardrail %s: no embedding for its denied topics: %s", policy.name, error)
        metrics.GUARDRAIL_EMBEDDING_FAILURES.labels(policy.name).inc()
        return None


# --- 2. Input -----------------------------------------------------------------------------------------------

Rewrite = Callable[[str], str]


def _rewrite_content(content: Any, rewrite: Rewrite) -> Any:
    if isinstance(content, str):
        return rewrite(content)
    if isinstance(content, list):
        return [_rewrite_part(part, rewrite) for part in content]
    return content


def _rewrite_part(part: Any, rewrite: Rewrite) -> Any:
    if isinstance(part, str):
        return rewrite(part)
    if isinstance(part, dict):
        if isinstance(part.get("text"), str):
            return {**part, "text": rewrite(part["text"])}
        if "content" in part:
            return {**part, "content": _rewrite_content(part["content"], rewrite)}
        # the Responses API's input items: a function call's arguments, and what the function returned
        changed = {
            key: rewrite(part[key])
            for key in ("arguments", "input", "output")
            if isinstance(part.get(key), str)
        }
        if changed:
            return {**part, **changed}
    return part


def _rewrite_tool_calls(calls: Any, rewrite: Rewrite) -> Any:
    """A chat message's tool calls, each function's arguments passed through `rewrite`."""
    if not isinstance(calls, list):
        return calls
    rewritten = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            call = {**call, "function": {**function, "arguments": rewrite(function["arguments"])}}
        rewritten.append(call)
    return rewritten


def _rewrite_message(message: Any, rewrite: Rewrite) -> Any:
    if not isinstance(message, dict):
        return message
    changed = dict(message)
    if "content" in message:
        changed["content"] = _rewrite_content(message["content"], rewrite)
    if "tool_calls" in message:
        changed["tool_calls"] = _rewrite_tool_calls(message["tool_calls"], rewrite)
    return changed


def rewrite_prompt(payload: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    """The payload with every text the engine reads as its prompt passed through `rewrite`."""
    changed = dict(payload)
    if isinstance(payload.get("messages"), list):
        changed["messages"] = [_rewrite_message(message, rewrite) for message in payload["messages"]]
    for name in ("prompt", "input", "instructions", "suffix"):
        if name in payload:
            changed[name] = _rewrite_content(payload[name], rewrite)
    return changed


async def check_input(call: Call, targets: Any = None) -> guardrails.Policy | None:
    """Check (and mask) the call's prompt; the policy that blocked it, or None when it may go on."""
    if not call.guardrails:
        return None
    blocked: guardrails.Policy | None = None
    for policy in call.guardrails:
        hits: list[guardrails.Intervention] = []
        policy_blocked = False

        def rewrite(
            text: str, policy: guardrails.Policy = policy, hits: list[guardrails.Intervention] = hits
        ) -> str:
            nonlocal policy_blocked
            verdict = guardrails.check(policy, text, direction=guardrails.INPUT)
            hits.extend(verdict.interventions)
            if verdict.action == guardrails.BLOCKED:
                policy_blocked = True
                return text
            return verdict.text

        call.payload = rewrite_prompt(call.payload, rewrite)
        if policy.topics:
            text = routing.prompt_text(call.payload)
            embedding = await _embedding(call, policy, text, targets)
            if embedding is not None:
                topic_hits = guardrails.topic_interventions(policy, embedding)
                hits.extend(topic_hits)
                policy_blocked = policy_blocked or bool(topic_hits)
        call.interventions.extend(Recorded(policy, guardrails.INPUT, hit) for hit in hits)
        if policy_blocked and blocked is None:
            blocked = policy
    if blocked is not None:
        call.guardrail_blocked = guardrails.INPUT
    return blocked


def blocked_answer(route: str, model: str, message: str, reason: str = CONTENT_FILTER) -> dict[str, Any]:
    """An unstreamed answer, in the route's OpenAI shape, that says `message` and stops for `reason`."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    created = int(time.time())
    if route == "completions":
        return {"id": "cmpl-guardrail", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": message, "finish_reason": reason, "logprobs": None}],
                "usage": usage}  # fmt: skip
    if route == "responses":
        text = {"type": "output_text", "text": message, "annotations": []}
        return {"id": "resp-guardrail", "object": "response", "created_at": created, "model": model,
                "status": "incomplete", "incomplete_details": {"reason": reason},
                "output": [{"type": "message", "id": "msg-guardrail", "role": "assistant",
                            "status": "incomplete", "content": [text]}],
                "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}  # fmt: skip
    choice = {"index": 0, "message": {"role": "assistant", "content": message}, "finish_reason": reason}
    return {"id": "chatcmpl-guardrail", "object": "chat.completion", "created": created, "model": model,
            "choices": [choice], "usage": usage}  # fmt: skip


def blocked_chunks(
    route: str, model: str, message: str, reason: str = CONTENT_FILTER
) -> list[dict[str, Any]]:
    """A streamed answer's chunks (OpenAI's shape) that say `message` and stop for `reason`."""
    head = {"id": "chatcmpl-guardrail", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}  # fmt: skip
    if route == "completions":
        head["object"] = "text_completion"
        return [{**head, "choices": [{"index": 0, "text": message, "finish_reason": reason}]}]
    return [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": message}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]},
    ]


# --- 3. Output, unstreamed ----------------------------------------------------------------------------------


def _choice_texts(answer: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(the dict holding a text, its key) for every generated text of an answer: what it says, its
    reasoning and the arguments of the tools it calls."""
    found: list[tuple[dict[str, Any], str]] = []

    def add(holder: Any, *keys: str) -> None:
        if isinstance(holder, dict):
            found.extend((holder, key) for key in keys if isinstance(holder.get(key), str))

    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            add(message, "content", "reasoning_content", "reasoning")
            for call in message.get("tool_calls") or ():
                add(call.get("function") if isinstance(call, dict) else None, "arguments")
        else:
            add(choice, "text")
    for item in answer.get("output") or ():  # the Responses API
        if isinstance(item, dict):
            add(item, "arguments", "input", "code")  # a function, custom tool, MCP or code interpreter call
            for part in [*(item.get("content") or ()), *(item.get("summary") or ())]:
                add(part, "text")
    return found


def _withhold(answer: dict[str, Any], message: str, reason: str) -> None:
    """Replace, in place, everything an answer generated by `message`, stopped for `reason`: no tool call
    or reasoning of a blocked answer reaches the caller."""
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        choice["finish_reason"] = reason
        if isinstance(choice.get("message"), dict):
            choice["message"] = {"role": "assistant", "content": message}
        else:
            choice["text"] = message
    if answer.get("object") == "response":
        blocked = blocked_answer("responses", str(answer.get("model", "")), message, reason)
        answer["output"], answer["status"] = blocked["output"], "incomplete"
        answer["incomplete_details"] = {"reason": reason}


async def check_answer(call: Call, answer: dict[str, Any], reason: str, targets: Any = None) -> bool:
    """Check (and mask, in place) an unstreamed answer's texts; True when it was blocked (its texts are
    then the blocked-output message and its finish reasons `reason`)."""
    if not call.guardrails:
        return False
    places = _choice_texts(answer)
    blocked: guardrails.Policy | None = None
    for policy in call.guardrails:
        policy_blocked = False
        for holder, key in places:
            verdict = guardrails.check(policy, holder[key], direction=guardrails.OUTPUT)
            call.interventions.extend(Recorded(policy, guardrails.OUTPUT, h) for h in verdict.interventions)
            if verdict.action == guardrails.BLOCKED:
                policy_blocked = True
            elif verdict.action == guardrails.MASKED:
                holder[key] = verdict.text
        if policy.topics and places and not policy_blocked:
            text = "\n".join(holder[key] for holder, key in places)
            embedding = await _embedding(call, policy, text, targets)
            if embedding is not None:
                topic_hits = guardrails.topic_interventions(policy, embedding)
                call.interventions.extend(Recorded(policy, guardrails.OUTPUT, h) for h in topic_hits)
                policy_blocked = bool(topic_hits)
        if policy_blocked and blocked is None:
            blocked = policy
    if blocked is None:
        return False
    call.guardrail_blocked = guardrails.OUTPUT
    call.guardrail_message = blocked.blocked_output_message
    _withhold(answer, blocked.blocked_output_message, reason)
    return True


# --- 4. Output, streamed ------------------------------------------------------------------------------------


def _tool_call_delta(position: int, tool: dict[str, Any]) -> dict[str, Any]:
    """A whole tool call as one streamed delta (OpenAI's shape: index, id, type, function)."""
    function = {"name": tool["name"]} if "name" in tool else {}
    ids: dict[str, Any] = {key: tool[key] for key in ("id", "type") if key in tool}
    return {"index": position, **ids, "function": {**function, "arguments": tool["arguments"]}}


# The Responses API's streamed texts held whole until their .done event: by the .done event's type, the
# field that holds the whole text; their deltas; and, by an output item's type, its .done event and field.
HELD_RESPONSE_TEXTS = {
    "response.reasoning_text.done": "text",
    "response.function_call_arguments.done": "arguments",
    "response.custom_tool_call_input.done": "input",
    "response.mcp_call_arguments.done": "arguments",
    "response.code_interpreter_call_code.done": "code",
}
HELD_RESPONSE_DELTAS = frozenset(kind.replace(".done", ".delta") for kind in HELD_RESPONSE_TEXTS)
HELD_ITEM_FIELDS = {
    "function_call": ("response.function_call_arguments.done", "arguments"),
    "custom_tool_call": ("response.custom_tool_call_input.done", "input"),
    "mcp_call": ("response.mcp_call_arguments.done", "arguments"),
    "code_interpreter_call": ("response.code_interpreter_call_code.done", "code"),
}

REASONING_KEYS = ("reasoning_content", "reasoning")
HELD_KEYS = (*REASONING_KEYS, "tool_calls")


class StreamCheck:
    """The output checks of one streamed chat or completion answer (OpenAI chunks in, OpenAI chunks out).
    Not thread-safe: one per stream."""

    def __init__(self, call: Call, reason: str, targets: Any = None) -> None:
        self.call = call
        self.reason = reason
        self.targets = targets
        self._chains: dict[Any, list[guardrails.StreamGuard]] = {}  # by choice (Responses: output, part)
        self._finished: set[int] = set()
        self.blocked: guardrails.Policy | None = None
        self._last_head: dict[str, Any] = {}
        self._noted: set[int] = set()  # the guards whose interventions are recorded on the call
        # Per choice, what is held whole until the choice ends and checked then, as an unstreamed answer's
        # is: its reasoning, and its tool calls (by their index: id, type, name, arguments so far). Their
        # pieces are not worth showing one by one (a client acts on a tool call once it is whole), and a
        # masked entity must not leave in pieces.
        self._reasoning: dict[int, dict[str, str]] = {}
        self._tools: dict[int, dict[int, dict[str, Any]]] = {}
        # The Responses API's stream: what was sent of each (output, content part)'s text, the whole
        # texts checked at their .done events, and the response's id, creation time and model.
        self._sent: dict[tuple[Any, Any], str] = {}
        self._whole: dict[tuple[Any, ...], str] = {}
        self._response_head: dict[str, Any] = {}
        self._sequence = 0

    def _chain(self, index: Any) -> list[guardrails.StreamGuard]:
        chain = self._chains.get(index)
        if chain is None:
            chain = self._chains[index] = [guardrails.StreamGuard(policy) for policy in self.call.guardrails]
        return chain

    def _feed(self, chain: list[guardrails.StreamGuard], piece: str) -> str:
        for guard in chain:
            piece = guard.feed(piece)
            if guard.blocked is not None:
                self._block(guard)
                return ""
            if not piece:
                return ""
        return piece

    async def _finish(self, chain: list[guardrails.StreamGuard]) -> str:
        """Flush the chain at the end of a choice: each guard's rest goes through the guards after it."""
        released = ""
        for position, guard in enumerate(chain):
            embedding = None
            if guard.policy.topics:
                embedding = await _embedding(self.call, guard.policy, guard.text, self.targets)
            rest = guard.finish(embedding)
            if guard.blocked is not None:
                self._block(guard)
                return ""
            for later in chain[position + 1 :]:
                rest = later.feed(rest)
                if later.blocked is not None:
                    self._block(later)
                    return ""
            released += rest
        return released

    def _block(self, guard: guardrails.StreamGuard) -> None:
        self._block_by(guard.policy)

    def _block_by(self, policy: guardrails.Policy) -> None:
        if self.blocked is None:
            self.blocked = policy
            self.call.guardrail_blocked = guardrails.OUTPUT
            self.call.guardrail_message = policy.blocked_output_message

    def _hold(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        """Keep a delta's reasoning and tool-call pieces for the end of its choice; the rest of it."""
        for key in REASONING_KEYS:
            if isinstance(delta.get(key), str):
                held = self._reasoning.setdefault(index, {})
                held[key] = held.get(key, "") + delta[key]
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            tools = self._tools.setdefault(index, {})
            for piece in calls:
                if not isinstance(piece, dict):
                    continue
                tool = tools.setdefault(int(piece.get("index", 0) or 0), {"arguments": ""})
                for key in ("id", "type"):
                    if piece.get(key):
                        tool[key] = piece[key]
                function = piece.get("function")
                if not isinstance(function, dict):
                    function = {}
                if function.get("name"):
                    tool["name"] = function["name"]
                if isinstance(function.get("arguments"), str):
                    tool["arguments"] += function["arguments"]
        return {key: value for key, value in delta.items() if key not in HELD_KEYS}

    def _release(self, index: int) -> dict[str, Any]:
        """The choice's held reasoning and tool calls, checked whole (masked in place, or the stream
        blocked), as delta fields."""
        reasoning = self._reasoning.pop(index, {})
        tools = self._tools.pop(index, {})
        texts: list[tuple[dict[str, Any], str]] = [(reasoning, key) for key in reasoning]
        texts += [(tool, "arguments") for tool in tools.values()]
        for policy in self.call.guardrails:
            for holder, key in texts:
                verdict = guardrails.check(policy, holder[key], direction=guardrails.OUTPUT)
                self.call.interventions.extend(
                    Recorded(policy, guardrails.OUTPUT, h) for h in verdict.interventions
                )
                if verdict.action == guardrails.BLOCKED:
                    self._block_by(policy)
                elif verdict.action == guardrails.MASKED:
                    holder[key] = verdict.text
        if self.blocked is not None:
            return {}
        fields: dict[str, Any] = dict(reasoning)
        if tools:
            fields["tool_calls"] = [
                _tool_call_delta(position, tool) for position, tool in sorted(tools.items())
            ]
        return fields

    async def rewrite(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one chunk of the engine's (none while holding back; after a block, the
        last one, whose finish reason says why, and nothing more)."""
        if self.blocked is not None:
            return []
        choices = chunk.get("choices")
        if not choices:
            return [chunk]
        self._last_head = {key: chunk[key] for key in ("id", "object", "created", "model") if key in chunk}
        kept = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = int(choice.get("index", 0) or 0)
            delta = choice.get("delta")
            if isinstance(delta, dict) and any(key in delta for key in HELD_KEYS):
                delta = self._hold(index, delta)
                choice = {**choice, "delta": delta}
            holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
            chain = self._chain(index)
            piece = holder.get(key) if isinstance(holder.get(key), str) else None
            released = self._feed(chain, piece) if piece else ""
            if self.blocked is not None:
                return [self._blocked_chunk(index, delta is not None)]
            held: dict[str, Any] = {}
            if choice.get("finish_reason") and index not in self._finished:
                self._finished.add(index)
                released += await self._finish(chain)
                if self.blocked is None:
                    held = self._release(index)
                if self.blocked is not None:
                    return [self._blocked_chunk(index, delta is not None)]
            changed = dict(choice)
            if delta is not None:
                changed["delta"] = {**delta, "content": released} if piece is not None or released else delta
                if held:
                    changed["delta"] = {**changed["delta"], **held}
                if not released and piece and len(changed["delta"]) == 1 and not choice.get("finish_reason"):
                    continue  # held back: nothing of this choice to send now
                if all(value is None for value in changed["delta"].values()) and not choice.get(
                    "finish_reason"
                ):
                    continue  # only held reasoning or tool-call pieces
            else:
                changed["text"] = released
                if not released and piece and not choice.get("finish_reason"):
                    continue
            kept.append(changed)
        if not kept and not chunk.get("usage"):
            return []
        return [{**chunk, "choices": kept}]

    async def end(self) -> list[dict[str, Any]]:
        """At the end of the engine's stream: what any choice still holds back (a stream that ended
        without a finish reason)."""
        out = []
        for index, chain in self._chains.items():
            if index in self._finished or self.blocked is not None:
                continue
            self._finished.add(index)
            released = await self._finish(chain)
            held = self._release(index) if self.blocked is None else {}
            if self.blocked is not None:
                return [self._blocked_chunk(index, True)]
            if released or held:
                delta = {**({"content": released} if released else {}), **held}
                out.append({**self._last_head, "choices": [{"index": index, "delta": delta}]})
        return out

    def _blocked_chunk(self, index: int, chat: bool) -> dict[str, Any]:
        assert self.blocked is not None
        message = self.blocked.blocked_output_message
        for chain in self._chains.values():
            for guard in chain:
                self._note(guard)
        body = {"delta": {"content": message}} if chat else {"text": message}
        return {**self._last_head, "choices": [{"index": index, **body, "finish_reason": self.reason}]}

    def _note(self, guard: guardrails.StreamGuard) -> None:
        """Record the guard's interventions (once)."""
        if id(guard) in self._noted:
            return
        self._noted.add(id(guard))
        verdict = guard.verdict()
        self.call.interventions.extend(
            Recorded(guard.policy, guardrails.OUTPUT, hit) for hit in verdict.interventions
        )

    def note_all(self) -> None:
        """Record every guard's interventions (at the end of the stream, however it ended)."""
        for chain in self._chains.values():
            for guard in chain:
                self._note(guard)

    # The Responses API's stream: typed events, not chunks. A text's deltas go through the hold-back
    # chain of their (output, content part), as a choice's do; reasoning and function-call argument
    # deltas are held and their whole text checked at their `.done` event; every event that repeats a
    # whole text (`.done`, the finished item, the final response) carries the text as it was sent.

    async def rewrite_event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to send for one event of a streamed Responses API answer (after a block: a last
        `response.incomplete` whose reason says why, and nothing more), numbered in the order they are
        sent (what is held leaves no gap, what is added no repeat)."""
        events = await self._rewrite_event(event)
        for sent in events:
            sent["sequence_number"] = self._sequence
            self._sequence += 1
        return events

    async def _rewrite_event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if self.blocked is not None:
            return []
        kind = event.get("type")
        key = (event.get("output_index", 0), event.get("content_index", 0))
        if kind == "response.created" and isinstance(event.get("response"), dict):
            self._response_head = {
                k: event["response"][k] for k in ("id", "created_at", "model") if k in event["response"]
            }
        if kind == "response.output_text.delta":
            released = self._feed(self._chain(key), str(event.get("delta") or ""))
            if self.blocked is not None:
                return [self._incomplete(event)]
            self._sent[key] = self._sent.get(key, "") + released
            return [{**event, "delta": released}] if released else []
        if kind == "response.output_text.done":
            released = await self._finish(self._chain(key))
            if self.blocked is not None:
                return [self._incomplete(event)]
            self._sent[key] = self._sent.get(key, "") + released
            whole = {**event, "text": self._sent[key]}
            if not released:
                return [whole]
            rest = {k: v for k, v in event.items() if k != "text"}
            return [{**rest, "type": "response.output_text.delta", "delta": released}, whole]
        if kind in HELD_RESPONSE_DELTAS:
            return []  # held: checked whole at its .done event
        if kind in HELD_RESPONSE_TEXTS:
            field = HELD_RESPONSE_TEXTS[kind]
            checked = self._checked_whole(str(event.get(field) or ""))
            if self.blocked is not None:
                return [self._incomplete(event)]
            self._whole[(kind, *key)] = checked
            delta = {**event, "type": kind.replace(".done", ".delta"), "delta": checked}
            delta.pop(field, None)
            return [delta, {**event, field: checked}]
        if kind == "response.content_part.done" and isinstance(event.get("part"), dict):
            return [{**event, "part": self._part_as_sent(event["part"], key)}]
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            item = self._item_as_sent(event["item"], event.get("output_index", 0))
            return [self._incomplete(event)] if self.blocked is not None else [{**event, "item": item}]
        if kind in ("response.completed", "response.incomplete") and isinstance(event.get("response"), dict):
            response = event["response"]
            items = [
                self._item_as_sent(item, position)
                for position, item in enumerate(response.get("output") or ())
            ]
            if self.blocked is not None:
                return [self._incomplete(event)]
            return [{**event, "response": {**response, "output": items}}]
        return [event]

    def _checked_whole(self, text: str) -> str:
        """A held text checked as an unstreamed answer's is: masked, or the stream blocked."""
        for policy in self.call.guardrails:
            verdict = guardrails.check(policy, text, direction=guardrails.OUTPUT)
            self.call.interventions.extend(
                Recorded(policy, guardrails.OUTPUT, h) for h in verdict.interventions
            )
            if verdict.action == guardrails.BLOCKED:
                self._block_by(policy)
                return ""
            if verdict.action == guardrails.MASKED:
                text = verdict.text
        return text

    def _part_as_sent(self, part: dict[str, Any], key: tuple[Any, Any]) -> dict[str, Any]:
        if part.get("type") == "output_text" and key in self._sent:
            return {**part, "text": self._sent[key]}
        whole = self._whole.get(("response.reasoning_text.done", *key))
        if part.get("type") == "reasoning_text" and whole is not None:
            return {**part, "text": whole}
        return part

    def _item_as_sent(self, item: dict[str, Any], output_index: Any) -> dict[str, Any]:
        changed = dict(item)
        if isinstance(item.get("content"), list):
            changed["content"] = [
                self._part_as_sent(part, (output_index, position)) if isinstance(part, dict) else part
                for position, part in enumerate(item["content"])
            ]
        held = HELD_ITEM_FIELDS.get(str(item.get("type")))
        if held is not None and isinstance(item.get(held[1]), str):
            done, field = held
            if (done, output_index, 0) not in self._whole:  # a text the stream never sent on its own
                self._whole[(done, output_index, 0)] = self._checked_whole(item[field])
            changed[field] = self._whole[(done, output_index, 0)]
        return changed

    def _incomplete(self, event: dict[str, Any]) -> dict[str, Any]:
        """The last event of a blocked Responses stream: the response, incomplete for the block's reason,
        saying the guardrail's blocked-output message."""
        assert self.blocked is not None
        for chain in self._chains.values():
            for guard in chain:
                self._note(guard)
        model = str(self._response_head.get("model") or self.call.model)
        response = {**blocked_answer("responses", model, self.blocked.blocked_output_message, self.reason),
                    **self._response_head}  # fmt: skip
        return {
            "type": "response.incomplete",
            "sequence_number": event.get("sequence_number"),
            "response": response,
        }


# --- 5. Visible ---------------------------------------------------------------------------------------------


def trace(call: Call) -> dict[str, Any]:
    """Bedrock's `trace.guardrail` of a call: the assessments of each guardrail that intervened, by
    direction (inputAssessment by guardrail id, outputAssessments by guardrail id)."""
    from serving.gateway.guardrail_api import assessment

    found: dict[str, Any] = {}
    by: dict[tuple[str, int], list[guardrails.Intervention]] = {}
    for recorded in call.interventions:
        by.setdefault((recorded.direction, recorded.policy.guardrail_id), []).append(recorded.hit)
    for (direction, guardrail_id), hits in by.items():
        if direction == guardrails.INPUT:
            found.setdefault("inputAssessment", {})[str(guardrail_id)] = assessment(hits)
        else:
            found.setdefault("outputAssessments", {})[str(guardrail_id)] = [assessment(hits)]
    if call.guardrail_blocked:
        found["actionReason"] = "Guardrail blocked."
    return found


def records(call: Call) -> list[dict[str, Any]]:
    return [recorded.as_record() for recorded in call.interventions]


def count(call: Call) -> None:
    for recorded in call.interventions:
        metrics.GUARDRAIL_INTERVENTIONS.labels(
            recorded.policy.name, recorded.hit.kind, recorded.direction, recorded.hit.action
        ).inc()


async def write(call: Call, created_at: str) -> None:
    """The call's GuardrailIntervention rows (after the answer; never raises)."""
    if not call.interventions:
        return
    try:
        await sync_to_async(_write_rows)(call.request_id, call.target.name, created_at, call.interventions)
    except Exception:  # the answer is given; a lost row is logged, never the caller's problem
        log.exception("guardrail interventions of request %s not written", call.request_id)


def _write_rows(request_id: str, deployment: str, created_at: str, found: list[Recorded]) -> None:
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    from learning.models import Guardrail, GuardrailIntervention

    try:
        moment = parse_datetime(created_at) or timezone.now()
        existing = set(
            Guardrail.objects.filter(pk__in={r.policy.guardrail_id for r in found}).values_list(
                "pk", flat=True
            )
        )
        GuardrailIntervention.objects.bulk_create(
            GuardrailIntervention(
                guardrail_id=r.policy.guardrail_id, version=r.policy.version, request_id=request_id,
                deployment_name=deployment[:40], direction=r.direction, kind=r.hit.kind,
                name=r.hit.name[:100], action=r.hit.action, created_at=moment,
            )
            for r in found
            if r.policy.guardrail_id in existing
        )  # fmt: skip
    finally:
        close_old_connections()
