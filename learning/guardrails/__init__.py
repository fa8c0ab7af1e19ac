"""Guardrails at decision time: a compiled policy, the check of one text, and the check of a stream.

A guardrail is an organisation's policy for the text going into a model (input) and coming out of it
(output). One version of it compiles to a `Policy` once (regular expressions, word sets, the denied
topics' example embeddings as one normalised matrix each), after which checking a text is cheap.

The interface the gateway uses (pure: nothing here touches the database or the network):

    policy = policies_of(organization_id)[guardrail_id]      # latest published version, TTL-cached
    policy = policy_of(guardrail_id, version)                  # one version (immutable, cached for good)
    verdict = check(policy, text, direction=INPUT, embedding=vector_or_None)
    verdict.action        "none" | "masked" | "blocked"
    verdict.text          the text to pass on: masked, or the configured blocked message when blocked
    verdict.interventions (Intervention(kind, name, action, match, score), …) in the order found
    verdict.message       the blocked message ("" unless blocked)

    guard = StreamGuard(policy)            # one per streamed answer (direction is output)
    guard.feed(piece) -> str               # what may be sent to the caller now ("" while holding back)
    guard.blocked                          # a Verdict as soon as a block is known, else None: stop the
                                           # stream and send the final event with guard.blocked.message
    guard.finish(embedding=None) -> str    # the rest, at the end of the stream (denied topics are checked
                                           # here when an embedding of guard.text is given)
    guard.verdict()                        # what happened to the whole stream, for metrics and records

`policies_of` and `policy_of` read the database (sync; call them in a thread from async code).

Algorithm of `check` (a clean text without digits, "@" or listed words costs a few regular-expression
scans, about 0.02 ms for 1 KB):
1. Word filters (custom words and phrases, and the profanity list when chosen): one expression,
   case-insensitive, on word boundaries. A match blocks.
2. Prompt attacks (input only, when chosen): learning.guardrails.patterns, one expression. A match blocks.
3. Denied topics, when the caller passes the text's sentence embedding (the gateway computes one per
   request with the guardrail's embeddings deployment and shares it with the router): the cosine
   similarity to each topic's example phrases; the highest at or above the topic's threshold blocks.
   Without an embedding, topics are not checked and `verdict.topics_checked` is False.
4. Personal data (learning.masking's detectors, one set for log masking and guardrails; or, when the
   guardrail's `detector` is `presidio`, Microsoft Presidio's pattern recognizers for the same types,
   learning.guardrails.presidio, about 2.5 ms for 1 KB), each type with its action: `block` blocks,
   `mask` replaces it by its label (`[EMAIL]`), `report` records it only.
Everything found is reported, even after a block, so a trace shows every rule that matched.

Streams (`StreamGuard`) hold back the last `policy.hold_back` characters (at least 64: longer than any
personal-data shape but an e-mail address, which has no spaces) and never release text inside a run of
the characters an entity without spaces is made of (ASCII letters, digits and `._%+-@:()`) or inside a
detected entity, so every entity is detected whole before any of it is sent (text in scripts without
spaces, Chinese or Japanese, still flows: its characters end such runs; a run longer than LONGEST_RUN,
320 characters, a base64 blob, is cut anyway, so an e-mail address longer than that could leave in two
pieces). Personal data and word matches
that start in released text were decided with their whole context. A match counts once it is decided
(it starts before the cut: the first digits of a card still arriving look like a phone number and are
not counted); a block is reported at the piece that decides it, before any of the match is released.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from learning import masking
from learning.caching import VersionCache
from learning.guardrails import patterns

log = logging.getLogger(__name__)

INPUT, OUTPUT = "input", "output"
# Verdict actions, and the action of one intervention (what the rule did to the text).
NONE, MASKED, BLOCKED, REPORTED = "none", "masked", "blocked", "reported"
# What a guardrail asks for each personal data type.
MASK, BLOCK, REPORT = "mask", "block", "report"
PII_ACTIONS = (MASK, BLOCK, REPORT)
# Kinds of rule, as interventions name them.
PERSONAL_DATA, WORD, PROFANITY, PROMPT_ATTACK, TOPIC = (
    "personal_data",
    "word",
    "profanity",
    "prompt_attack",
    "topic",
)
DEFAULT_BLOCKED_INPUT = "Sorry, this request cannot be answered: it goes against this service's guardrail."
DEFAULT_BLOCKED_OUTPUT = "Sorry, the answer was withheld: it goes against this service's guardrail."
MIN_HOLD_BACK = 64
# A guardrail's personal-data detector: learning.masking's (fast, validated) or Presidio's recognizers.
BUILTIN, PRESIDIO = "builtin", "presidio"
DETECTORS = (BUILTIN, PRESIDIO)
LONGEST_RUN = 320  # characters a stream's hold-back moves back for a run without spaces (e-mail: ≤ 254)
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Intervention:
    kind: str  # personal_data | word | profanity | prompt_attack | topic
    name: str  # the entity type (EMAIL…), the listed word, the attack's name, the topic's name
    action: str  # masked | blocked | reported
    match: str = ""  # the text that matched (empty for topics)
    score: float | None = None  # topics: the highest cosine similarity to the topic's examples


@dataclass(frozen=True)
class Verdict:
    action: str  # none | masked | blocked
    text: str
    interventions: tuple[Intervention, ...] = ()
    message: str = ""
    topics_checked: bool = True

    @property
    def intervened(self) -> bool:
        return self.action != NONE


@dataclass(frozen=True)
class Topic:
    name: str
    definition: str
    examples: tuple[str, ...]
    threshold: float  # cosine similarity 0..1 at or above which a text is about the topic
    vectors: Any = None  # numpy array (examples × dimensions), rows of norm 1; None: not embedded


@dataclass(frozen=True)
class Policy:
    guardrail_id: int
    organization_id: int
    name: str
    version: int  # 0: the draft
    personal_data: Mapping[str, str]  # entity type -> mask | block | report
    words: tuple[str, ...]  # custom words and phrases, lower case
    profanity: bool
    prompt_attacks: bool
    topics: tuple[Topic, ...]
    embedding_deployment: str  # "" when there are no topics
    blocked_input_message: str
    blocked_output_message: str
    kinds: frozenset[str] = field(default=frozenset())
    word_pattern: re.Pattern[str] | None = None
    word_keys: tuple[str, ...] = ()
    hold_back: int = MIN_HOLD_BACK
    detector: str = BUILTIN
    find: Callable[[str, frozenset[str]], list[masking.Finding]] = masking.find

    @property
    def needs_embedding(self) -> bool:
        return bool(self.topics)


# --- Compiling ------------------------------------------------------------------------------------------


def _word_pattern(words: Sequence[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    # Longest first, so "son of a bitch" wins over "bitch"; a phrase's spaces match any run of spaces.
    alternatives = [
        r"\s+".join(map(re.escape, word.split())) for word in sorted(words, key=len, reverse=True)
    ]
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def _word_keys(words: Sequence[str]) -> tuple[str, ...]:
    """A substring every match of each word contains (its longest run of letters and digits): a text
    containing none of them, lower-cased, cannot match, and `in` over 1 KB costs a fraction of a µs."""
    keys = {max(re.findall(r"\w+", word.lower()) or [word.lower()], key=len) for word in words}
    return tuple(sorted(keys))


_ATTACKS = tuple(
    (name, triggers, re.compile(expression)) for name, triggers, expression in patterns.PROMPT_ATTACKS
)


def compile_policy(
    config: Mapping[str, Any],
    *,
    guardrail_id: int = 0,
    organization_id: int = 0,
    name: str = "",
    version: int = 0,
    topic_vectors: Sequence[Sequence[Sequence[float]]] | None = None,
) -> Policy:
    """A Policy from a version's configuration (validated by learning.guardrails.service) and, for its
    denied topics, the embeddings of each topic's examples in order (None: topics are not checked)."""
    import numpy as np

    words = tuple(dict.fromkeys(word.strip().lower() for word in config.get("words", ()) if word.strip()))
    profanity = bool(config.get("profanity", False))
    listed = [*words, *(patterns.PROFANITY if profanity else ())]
    topics = []
    for index, topic in enumerate(config.get("topics", ())):
        vectors = None
        if topic_vectors is not None and index < len(topic_vectors) and len(topic_vectors[index]):
            matrix = np.asarray(topic_vectors[index], dtype=np.float32)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            vectors = matrix / np.where(norms == 0, 1.0, norms)
        topics.append(
            Topic(
                name=topic["name"],
                definition=topic.get("definition", ""),
                examples=tuple(topic.get("examples", ())),
                threshold=float(topic.get("threshold", 0.8)),
                vectors=vectors,
            )
        )
    personal_data = dict(config.get("personal_data", {}))
    detector, find = _detector(str(config.get("detector") or BUILTIN), name)
    return Policy(
        guardrail_id=guardrail_id,
        organization_id=organization_id,
        name=name,
        version=version,
        personal_data=personal_data,
        words=words,
        profanity=profanity,
        prompt_attacks=bool(config.get("prompt_attacks", False)),
        topics=tuple(topics),
        embedding_deployment=str(config.get("embedding_deployment", "") or ""),
        blocked_input_message=config.get("blocked_input_message") or DEFAULT_BLOCKED_INPUT,
        blocked_output_message=config.get("blocked_output_message") or DEFAULT_BLOCKED_OUTPUT,
        kinds=frozenset(personal_data),
        word_pattern=_word_pattern(listed),
        word_keys=_word_keys(listed),
        hold_back=max(MIN_HOLD_BACK, max((len(word) + 2 for word in listed), default=0)),
        detector=detector,
        find=find,
    )


def _detector(chosen: str, name: str) -> tuple[str, Callable[[str, frozenset[str]], list[masking.Finding]]]:
    """The personal-data detector a policy uses. Presidio's recognizers are built here, when the version
    compiles, not at its first call. A version that asks for Presidio where it is not installed (it was
    published elsewhere) uses the built-in detectors, which find the same types: never no detection."""
    if chosen != PRESIDIO:
        return BUILTIN, masking.find
    from learning.guardrails import presidio

    if not presidio.available():
        log.warning("guardrail %r asks for Presidio, which is not installed: built-in detectors used", name)
        return BUILTIN, masking.find
    presidio.load()
    return PRESIDIO, presidio.find


# --- Checking one text --------------------------------------------------------------------------------------


def _word_hits(policy: Policy, text: str, lowered: str) -> list[Intervention]:
    if policy.word_pattern is None or not any(key in lowered for key in policy.word_keys):
        return []
    hits = []
    for match in policy.word_pattern.finditer(text):
        found = " ".join(match.group().lower().split())
        kind = WORD if found in policy.words else PROFANITY
        hits.append(Intervention(kind, found, BLOCKED, match.group()))
    return hits


def _attack_hits(lowered: str) -> list[Intervention]:
    hits: list[Intervention] = []
    for name, triggers, expression in _ATTACKS:
        if any(trigger in lowered for trigger in triggers):
            hits.extend(
                Intervention(PROMPT_ATTACK, name, BLOCKED, m.group()) for m in expression.finditer(lowered)
            )
    return hits


def topic_scores(policy: Policy, embedding: Any) -> list[tuple[Topic, float]]:
    """Each embedded topic with the highest cosine similarity of `embedding` to its examples."""
    import numpy as np

    vector = np.asarray(embedding, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(vector))
    scores = []
    for topic in policy.topics:
        if topic.vectors is None or topic.vectors.shape[1] != vector.shape[0] or norm == 0:
            continue
        scores.append((topic, float(np.max(topic.vectors @ vector)) / norm))
    return scores


def topic_interventions(policy: Policy, embedding: Any) -> list[Intervention]:
    """The denied topics `embedding` is about (at or above their thresholds)."""
    return [
        Intervention(TOPIC, topic.name, BLOCKED, "", round(score, 4))
        for topic, score in topic_scores(policy, embedding)
        if score >= topic.threshold - 1e-9
    ]


def _personal_data(policy: Policy, text: str) -> tuple[list[masking.Finding], list[Intervention]]:
    """(findings to mask, an intervention per finding)."""
    if not policy.kinds:
        return [], []
    to_mask, hits = [], []
    for finding in policy.find(text, policy.kinds):
        wanted = policy.personal_data[finding.kind]
        action = MASKED if wanted == MASK else BLOCKED if wanted == BLOCK else REPORTED
        if action == MASKED:
            to_mask.append(finding)
        hits.append(Intervention(PERSONAL_DATA, finding.kind, action, text[finding.start : finding.end]))
    return to_mask, hits


def blocked_message(policy: Policy, direction: str) -> str:
    return policy.blocked_input_message if direction == INPUT else policy.blocked_output_message


def check(policy: Policy, text: str, *, direction: str, embedding: Any = None) -> Verdict:
    """The verdict on one text (see the module's docstring). Pure; never raises on any text."""
    lowered = text.lower()
    hits = _word_hits(policy, text, lowered)
    if direction == INPUT and policy.prompt_attacks:
        hits += _attack_hits(lowered)
    topics_checked = not policy.topics or embedding is not None
    if policy.topics and embedding is not None:
        hits += topic_interventions(policy, embedding)
    to_mask, found = _personal_data(policy, text)
    hits += found
    if not hits:
        return Verdict(NONE, text, (), "", topics_checked)
    if any(hit.action == BLOCKED for hit in hits):
        message = blocked_message(policy, direction)
        return Verdict(BLOCKED, message, tuple(hits), message, topics_checked)
    if to_mask:
        return Verdict(MASKED, masking.redact(text, to_mask), tuple(hits), "", topics_checked)
    return Verdict(NONE, text, tuple(hits), "", topics_checked)  # reported only


# --- Checking a stream --------------------------------------------------------------------------------------

_ENTITY_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-@:()")


def _in_entity(char: str) -> bool:
    """Whether `char` can be part of a personal-data entity written without spaces."""
    return char in _ENTITY_CHARACTERS


# Characters of released text kept as context: what the detectors' look-behinds see before a new match.
_CONTEXT = 16


class StreamGuard:
    """Output checks on a stream, piece by piece (see the module's docstring). Not thread-safe: one per
    stream. After a block, `feed` and `finish` release nothing more."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._parts: list[str] = []  # everything fed so far, as the engine wrote it (`text` joins it)
        self._length = 0
        # The text from position _base on: what is not released yet and a little context before it. Only
        # this is scanned and indexed (positions below are in the whole text), so a long answer costs
        # each piece no more than a short one.
        self._tail = ""
        self._base = 0
        self._released = 0  # characters already passed on
        self._hits: dict[tuple[str, str, int], Intervention] = {}  # by (kind, name, position in text)
        self._masked = False
        self.blocked: Verdict | None = None

    def _scan(self, start: int) -> tuple[list[masking.Finding], list[tuple[masking.Finding, Intervention]]]:
        """Personal data to mask, and every match with its intervention (positions in the whole text),
        from position `start` on."""
        window = self._tail[start - self._base :]
        to_mask, found = [], []
        if self.policy.word_pattern is not None and any(
            key in window.lower() for key in self.policy.word_keys
        ):
            for match in self.policy.word_pattern.finditer(window):
                text = " ".join(match.group().lower().split())
                kind = WORD if text in self.policy.words else PROFANITY
                span = masking.Finding(kind, start + match.start(), start + match.end())
                found.append((span, Intervention(kind, text, BLOCKED, match.group())))
        if self.policy.kinds:
            for finding in self.policy.find(window, self.policy.kinds):
                wanted = self.policy.personal_data[finding.kind]
                action = MASKED if wanted == MASK else BLOCKED if wanted == BLOCK else REPORTED
                span = masking.Finding(finding.kind, start + finding.start, start + finding.end)
                if action == MASKED:
                    to_mask.append(span)
                matched = window[finding.start : finding.end]
                found.append((span, Intervention(PERSONAL_DATA, finding.kind, action, matched)))
        return to_mask, found

    def _cut(self, findings: list[masking.Finding], final: bool) -> int:
        """How far text may be released: all of it at the end, else up to the hold-back window, moved back
        out of a run of entity characters (at most LONGEST_RUN back: no address is longer, and a longer
        run, a base64 blob, must not be held whole nor rescanned at every piece) and out of any finding
        (repeatedly, as one move may land in the other)."""
        tail, base = self._tail, self._base
        if final:
            return self._length
        cut = self._length - self.policy.hold_back
        floor = max(self._released, cut - LONGEST_RUN)
        while cut > self._released:
            moved = cut
            while moved > floor and _in_entity(tail[moved - 1 - base]) and _in_entity(tail[moved - base]):
                moved -= 1
            for finding in findings:
                if finding.start < moved < finding.end:
                    moved = finding.start
            if moved == cut:
                break
            cut = moved
        return max(cut, self._released)

    def _release(self, final: bool) -> str:
        """Release what is decided. A match is decided once it starts before the cut: the hold-back is
        longer than any match, so one starting there is whole in the text held, and a match at the end
        of what has arrived (the first digits of a card, which look like a phone number) is not counted
        until it is."""
        if self.blocked is not None:
            return ""
        to_mask, found = self._scan(max(0, self._released - _CONTEXT))
        cut = self._cut([span for span, _ in found], final)
        fresh = False
        for span, hit in found:
            if span.start >= self._released and (final or span.start < cut):
                key = (hit.kind, hit.name, span.start)
                if key not in self._hits:
                    self._hits[key] = hit
                    fresh = fresh or hit.action == BLOCKED
        if fresh:
            message = self.policy.blocked_output_message
            self.blocked = Verdict(BLOCKED, message, tuple(self._hits.values()), message)
            return ""
        if cut <= self._released:
            return ""
        inside = [
            masking.Finding(f.kind, f.start - self._released, f.end - self._released)
            for f in to_mask
            if f.start >= self._released and f.end <= cut
        ]
        released = masking.redact(self._tail[self._released - self._base : cut - self._base], inside)
        self._masked = self._masked or bool(inside)
        self._released = cut
        base = max(0, cut - _CONTEXT)
        self._tail, self._base = self._tail[base - self._base :], base
        return released

    def feed(self, piece: str) -> str:
        """Take the next piece of the answer; return what may be passed on now (maybe "")."""
        if self.blocked is not None or not piece:
            return ""
        self._parts.append(piece)
        self._tail += piece
        self._length += len(piece)
        if self._length - self._released <= self.policy.hold_back:
            return ""  # nothing could be released yet: skip the scan
        return self._release(final=False)

    def finish(self, embedding: Any = None) -> str:
        """The end of the stream: the rest of the text (masked), or "" if blocked. With the embedding of
        `self.text`, the denied topics are checked first and may still block."""
        if self.blocked is not None:
            return ""
        if self.policy.topics and embedding is not None:
            hits = topic_interventions(self.policy, embedding)
            if hits:
                for hit in hits:
                    self._hits[(hit.kind, hit.name, -1)] = hit
                message = self.policy.blocked_output_message
                self.blocked = Verdict(BLOCKED, message, tuple(self._hits.values()), message)
                return ""
        return self._release(final=True)

    @property
    def text(self) -> str:
        """Everything fed so far, as the engine wrote it (to embed the answer for denied topics)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def verdict(self) -> Verdict:
        """What the guard did to the stream so far (text: the original answer when not blocked)."""
        if self.blocked is not None:
            return self.blocked
        action = MASKED if self._masked else NONE
        return Verdict(action, self.text, tuple(self._hits.values()))


# --- Loading policies (sync: reads the database) --------------------------------------------------------

MAX_CACHED_VERSIONS = 1024
_versions: VersionCache[Policy] = VersionCache(MAX_CACHED_VERSIONS)
_organizations: dict[int, tuple[float, dict[int, Policy]]] = {}
_lock = threading.Lock()


def cached(guardrail_id: int, version: int) -> Policy | None:
    """The compiled version if this process has it (no query)."""
    return _versions.get((guardrail_id, version))


def cached_version(guardrail_id: int, version: int, load: Callable[[], Policy]) -> Policy:
    """A published version compiled once per process: versions never change."""
    return _versions.get_or_load((guardrail_id, version), load)


def policies_of(organization_id: int, max_age: float = CACHE_SECONDS) -> dict[int, Policy]:
    """Every guardrail of the organisation with a published version, by id: its latest version. Read
    from the database at most every `max_age` seconds per process; compiled versions are reused."""
    now = time.monotonic()
    cached = _organizations.get(organization_id)
    if cached is not None and now - cached[0] < max_age:
        return cached[1]
    from learning.guardrails.service import latest_policies

    policies = latest_policies(organization_id)
    with _lock:
        if cached is not None:  # versions of guardrails deleted since are forgotten
            for gone in set(cached[1]) - set(policies):
                _versions.forget(gone)
        _organizations[organization_id] = (now, policies)
    return policies


def policy_of(guardrail_id: int, version: int) -> Policy | None:
    """One published version of a guardrail (None: no such version)."""
    from learning.guardrails.service import version_policy

    return version_policy(guardrail_id, version)


def forget_cached() -> None:
    """Drop every cached policy (tests; a process that must see a deletion at once)."""
    with _lock:
        _versions.clear()
        _organizations.clear()


__all__ = [
    "BLOCKED", "INPUT", "MASKED", "NONE", "OUTPUT", "REPORTED", "Intervention", "Policy", "StreamGuard",
    "Topic", "Verdict", "check", "compile_policy", "policies_of", "policy_of",
]  # fmt: skip
