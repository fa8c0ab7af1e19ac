"""Guardrails: the rules of a configuration, editing the draft, publishing versions, the embeddings of
denied topics, trying a draft, scoring topic examples, and what gateway processes read (`latest_policies`).

A configuration (a draft, or a published version's frozen copy) is a JSON object:
    personal_data           {entity type: "mask" | "block" | "report"}; types: learning.masking.ALL_KINDS
    detector                "builtin" (default: validated regular expressions, ~0.06 ms for 1 KB) or
                            "presidio" (Presidio's pattern recognizers for the same types, ~2.5 ms; needs
                            the `presidio` extra; learning.guardrails.presidio)
    words                   custom words and phrases, blocked (case-insensitive, whole words)
    profanity               bool: also block the profanity list (learning.guardrails.patterns)
    prompt_attacks          bool: block instruction-override and jailbreak phrasings in input
    topics                  [{name, definition, examples: [phrases], threshold: 0..1}]
    embedding_deployment    the organisation's embeddings deployment that embeds topics (needed with topics)
    blocked_input_message, blocked_output_message   what the caller gets instead of a blocked text

Every refusal is a `Refused(field, sentence)` naming the field and saying what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Max

from learning import guardrails, masking
from learning.evaluations import Refused
from learning.models import Guardrail, GuardrailVersion
from marketplace.accounts.models import Organization
from serving.choices import DeploymentStatus
from serving.models import Deployment

FIELDS = (
    "personal_data", "detector", "words", "profanity", "prompt_attacks", "topics", "embedding_deployment",
    "blocked_input_message", "blocked_output_message",
)  # fmt: skip
MAX_WORDS, MAX_WORD_CHARACTERS = 500, 100
MAX_TOPICS, MAX_EXAMPLES, MAX_EXAMPLE_CHARACTERS = 30, 20, 1000
MAX_MESSAGE_CHARACTERS = 1000
DEFAULT_THRESHOLD = 0.75
# Asked for by name, answered with what to do instead: no maintained name detector is installed here.
NOT_INSTALLED = {
    "NAME": "Person names need a named-entity model (spaCy's, for Presidio), which is not installed on this "
    "platform and cannot be: the official spaCy model wheels are not on the package registries it installs "
    "from. Presidio's pattern recognizers (detector: presidio) find no names; block known names by word.",
}

Embed = Callable[[list[str]], list[list[float]]]


# --- Checking a configuration -------------------------------------------------------------------------------


def _bool(raw: Any, field: str) -> bool:
    if not isinstance(raw, bool):
        raise Refused(field, "true or false.")
    return raw


def _text(raw: Any, field: str, limit: int, *, blank: bool = True) -> str:
    if not isinstance(raw, str) or len(raw) > limit or (not blank and not raw.strip()):
        raise Refused(field, f"A text of {'1' if not blank else '0'} to {limit} characters.")
    return raw.strip()


def check_personal_data(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise Refused("personal_data", 'An object of entity types and actions, e.g. {"EMAIL": "mask"}.')
    checked = {}
    for kind, action in raw.items():
        if kind in NOT_INSTALLED:
            raise Refused(f"personal_data.{kind}", NOT_INSTALLED[kind])
        if kind not in masking.ALL_KINDS:
            raise Refused(
                f"personal_data.{kind}",
                f"Unknown entity type '{kind}'; choose among {', '.join(masking.ALL_KINDS)}.",
            )
        if action not in guardrails.PII_ACTIONS:
            raise Refused(f"personal_data.{kind}", "The action is one of mask, block or report.")
        checked[kind] = action
    return checked


def check_detector(raw: Any) -> str:
    from learning.guardrails import presidio

    if raw not in guardrails.DETECTORS:
        raise Refused(
            "detector",
            "builtin (validated regular expressions, about 0.06 ms for a 1 KB prompt) or presidio "
            "(Microsoft Presidio's pattern recognizers, about 2.5 ms).",
        )
    if raw == guardrails.PRESIDIO and not presidio.available():
        raise Refused(
            "detector",
            "Presidio is not installed on this platform; ask its administrators to install the `presidio` "
            "extra, or use builtin.",
        )
    return str(raw)


def check_words(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        raise Refused("words", "A list of words and phrases.")
    if len(raw) > MAX_WORDS:
        raise Refused("words", f"At most {MAX_WORDS} words and phrases; keep the ones that matter.")
    words: list[str] = []
    for index, word in enumerate(raw):
        if not isinstance(word, str) or not word.strip() or len(word) > MAX_WORD_CHARACTERS:
            raise Refused(f"words[{index}]", f"A word or phrase of 1 to {MAX_WORD_CHARACTERS} characters.")
        if not any(char.isalnum() for char in word):
            raise Refused(
                f"words[{index}]",
                f"'{word}' has no letter or digit: words match whole words, so list words, not symbols.",
            )
        words.append(" ".join(word.split()))
    return list(dict.fromkeys(words))


def check_topics(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise Refused("topics", "A list of topics: {name, definition, examples, threshold}.")
    if len(raw) > MAX_TOPICS:
        raise Refused("topics", f"At most {MAX_TOPICS} denied topics.")
    topics: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, topic in enumerate(raw):
        where = f"topics[{index}]"
        if not isinstance(topic, dict):
            raise Refused(where, "A topic is {name, definition, examples, threshold}.")
        unknown = sorted(set(topic) - {"name", "definition", "examples", "threshold"})
        if unknown:
            raise Refused(f"{where}.{unknown[0]}", f"A topic takes no '{unknown[0]}'.")
        name = _text(topic.get("name"), f"{where}.name", 100, blank=False)
        if name.lower() in names:
            raise Refused(f"{where}.name", f"Two topics are named '{name}'; give each its own name.")
        names.add(name.lower())
        definition = _text(topic.get("definition", ""), f"{where}.definition", 1000)
        examples = topic.get("examples")
        if not isinstance(examples, list) or not 1 <= len(examples) <= MAX_EXAMPLES:
            raise Refused(
                f"{where}.examples", f"1 to {MAX_EXAMPLES} example phrases of what is about the topic."
            )
        for number, example in enumerate(examples):
            _text(example, f"{where}.examples[{number}]", MAX_EXAMPLE_CHARACTERS, blank=False)
        threshold = topic.get("threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise Refused(
                f"{where}.threshold",
                "A cosine similarity from 0 to 1; score the examples to choose one (0.75 is a start).",
            )
        topics.append(
            {"name": name, "definition": definition, "examples": [e.strip() for e in examples],
             "threshold": float(threshold)}
        )  # fmt: skip
    return topics


def check_embedding_deployment(organization: Organization, name: str) -> str:
    if not name:
        raise Refused(
            "embedding_deployment", "Denied topics need an embeddings deployment of yours to compare texts."
        )
    deployment = (
        Deployment.objects.filter(organization=organization, name=name)
        .exclude(status=DeploymentStatus.DELETED)
        .select_related("model_card")
        .first()
    )
    if deployment is None:
        raise Refused(
            "embedding_deployment",
            f"No deployment '{name}' in {organization.slug}; deploy an embeddings model.",
        )
    if not deployment.model_card.is_embedding:
        raise Refused(
            "embedding_deployment", f"'{name}' serves {deployment.model_card.slug}, not an embeddings model."
        )
    return name


def check_config(organization: Organization, raw: Any) -> dict[str, Any]:
    """A configuration with every field checked and filled with its default."""
    if not isinstance(raw, dict):
        raise Refused("config", "An object with " + ", ".join(FIELDS) + ".")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise Refused(unknown[0], f"A guardrail has no '{unknown[0]}'; its fields are {', '.join(FIELDS)}.")
    config: dict[str, Any] = {
        "personal_data": check_personal_data(raw.get("personal_data", {})),
        "detector": check_detector(raw.get("detector", guardrails.BUILTIN)),
        "words": check_words(raw.get("words", [])),
        "profanity": _bool(raw.get("profanity", False), "profanity"),
        "prompt_attacks": _bool(raw.get("prompt_attacks", False), "prompt_attacks"),
        "topics": check_topics(raw.get("topics", [])),
        "embedding_deployment": _text(raw.get("embedding_deployment", ""), "embedding_deployment", 40),
        "blocked_input_message": _text(
            raw.get("blocked_input_message", ""), "blocked_input_message", MAX_MESSAGE_CHARACTERS
        ),
        "blocked_output_message": _text(
            raw.get("blocked_output_message", ""), "blocked_output_message", MAX_MESSAGE_CHARACTERS
        ),
    }
    if config["topics"] or config["embedding_deployment"]:
        check_embedding_deployment(organization, config["embedding_deployment"])
    return config


# --- Editing and publishing ---------------------------------------------------------------------------------


def person(user: Any) -> Any:
    """The user to record as author: a signed-in person, not an API key's principal."""
    from django.contrib.auth.models import AbstractBaseUser

    return user if isinstance(user, AbstractBaseUser) else None


def create_guardrail(
    *, organization: Organization, user: Any, name: str, description: str = "", config: Any = None
) -> Guardrail:
    if Guardrail.objects.filter(organization=organization, name=name).exists():
        raise Refused("name", f"{organization.slug} already has a guardrail '{name}'; choose another name.")
    draft = check_config(organization, config if config is not None else {})
    return Guardrail.objects.create(
        organization=organization, name=name, description=description, draft=draft,
        created_by=person(user),
    )  # fmt: skip


def update_guardrail(guardrail: Guardrail, **fields: Any) -> Guardrail:
    """Change the name, description or draft; published versions stay as they are."""
    name = fields.get("name")
    if name is not None and name != guardrail.name:
        taken = Guardrail.objects.filter(organization=guardrail.organization, name=name).exclude(
            pk=guardrail.pk
        )
        if taken.exists():
            raise Refused("name", f"{guardrail.organization.slug} already has a guardrail '{name}'.")
        guardrail.name = name
    if "description" in fields:
        guardrail.description = fields["description"]
    if "config" in fields:
        guardrail.draft = check_config(guardrail.organization, fields["config"])
    guardrail.save()
    return guardrail


def gateway_embed(organization_id: int, deployment: str) -> Embed:
    """Embeds texts through the gateway's own path as the organisation (metered like any call)."""
    from learning import router_training

    embed = router_training.gateway_embedder(organization_id, deployment)

    def run(texts: list[str]) -> list[list[float]]:
        try:
            vectors: list[list[float]] = []
            for start in range(0, len(texts), router_training.EMBED_BATCH):
                vectors.extend(
                    router_training.run_async(embed(texts[start : start + router_training.EMBED_BATCH]))
                )
            return vectors
        except router_training.TrainingFailed as error:
            raise Refused("embedding_deployment", str(error)) from None

    return run


def embed_topics(
    organization_id: int, config: dict[str, Any], embed: Embed | None = None
) -> list[list[list[float]]]:
    """The embeddings of each topic's examples, in order ([] without topics): one call for them all."""
    topics = config.get("topics") or []
    if not topics:
        return []
    embed = embed or gateway_embed(organization_id, config["embedding_deployment"])
    texts = [example for topic in topics for example in topic["examples"]]
    vectors = embed(texts)
    if len(vectors) != len(texts):
        raise Refused("embedding_deployment", "The embeddings deployment answered fewer vectors than asked.")
    grouped, position = [], 0
    for topic in topics:
        grouped.append(vectors[position : position + len(topic["examples"])])
        position += len(topic["examples"])
    return grouped


def publish(guardrail: Guardrail, user: Any, embed: Embed | None = None) -> GuardrailVersion:
    """Freeze the draft as the next version (1, 2, …). The draft is checked again (a deployment it names
    may be gone) and its topics embedded first, outside the transaction."""
    config = check_config(guardrail.organization, guardrail.draft)
    vectors = embed_topics(guardrail.organization_id, config, embed)
    with transaction.atomic():
        Guardrail.objects.select_for_update().filter(pk=guardrail.pk).first()
        latest = guardrail.versions.aggregate(latest=Max("version"))["latest"] or 0
        return GuardrailVersion.objects.create(
            guardrail=guardrail, version=latest + 1, config=config, topic_vectors=vectors,
            created_by=person(user),
        )  # fmt: skip


def draft_policy(guardrail: Guardrail, embed: Embed | None = None) -> guardrails.Policy:
    config = check_config(guardrail.organization, guardrail.draft)
    return guardrails.compile_policy(
        config, guardrail_id=guardrail.pk, organization_id=guardrail.organization_id, name=guardrail.name,
        version=0, topic_vectors=embed_topics(guardrail.organization_id, config, embed),
    )  # fmt: skip


def try_draft(
    guardrail: Guardrail, text: str, direction: str, embed: Embed | None = None
) -> guardrails.Verdict:
    """Apply the draft to a text as the gateway would (topics embedded with the text, when any)."""
    policy = draft_policy(guardrail, embed)
    embedding = None
    if policy.topics:
        embed = embed or gateway_embed(guardrail.organization_id, policy.embedding_deployment)
        embedding = embed([text])[0]
    return guardrails.check(policy, text, direction=direction, embedding=embedding)


def score_examples(
    guardrail: Guardrail, topic_name: str, texts: Sequence[str] = (), embed: Embed | None = None
) -> dict[str, Any]:
    """Help choose a topic's threshold: each example's similarity to the topic's other examples (how
    high a text about the topic scores), and each given text's (e.g. ones that must pass), with a
    suggestion halfway between the lowest example and the highest other text."""
    import numpy as np

    config = check_config(guardrail.organization, guardrail.draft)
    topic = next((t for t in config["topics"] if t["name"].lower() == topic_name.lower()), None)
    if topic is None:
        names = ", ".join(t["name"] for t in config["topics"]) or "none yet"
        raise Refused("topic", f"The draft has no topic '{topic_name}'; its topics: {names}.")
    embed = embed or gateway_embed(guardrail.organization_id, config["embedding_deployment"])
    examples = topic["examples"]
    vectors = np.asarray(embed([*examples, *texts]), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    own, others = vectors[: len(examples)], vectors[len(examples) :]
    similarity = own @ own.T
    np.fill_diagonal(similarity, -np.inf)
    example_scores = [
        float(row.max()) if len(examples) > 1 else None for row in similarity
    ]  # one example has no other to be compared with
    text_scores = [float((own @ vector).max()) for vector in others]
    known = [score for score in example_scores if score is not None]
    suggestion = None
    if known:
        low = min(known)
        high = max(text_scores) if text_scores else None
        suggestion = round((low + high) / 2, 3) if high is not None and high < low else round(low - 0.02, 3)
        suggestion = min(1.0, max(0.0, suggestion))
    return {
        "topic": topic["name"],
        "threshold": topic["threshold"],
        "examples": [
            {"text": example, "score": None if score is None else round(score, 4),
             "blocked": score is not None and score >= topic["threshold"]}
            for example, score in zip(examples, example_scores, strict=True)
        ],
        "texts": [
            {"text": text, "score": round(score, 4), "blocked": score >= topic["threshold"]}
            for text, score in zip(texts, text_scores, strict=True)
        ],
        "suggested_threshold": suggestion,
    }  # fmt: skip


# --- What gateway processes read ----------------------------------------------------------------------------


def _compiled(version: GuardrailVersion) -> guardrails.Policy:
    return guardrails.compile_policy(
        version.config, guardrail_id=version.guardrail_id, organization_id=version.guardrail.organization_id,
        name=version.guardrail.name, version=version.version, topic_vectors=version.topic_vectors,
    )  # fmt: skip


def version_policy(guardrail_id: int, number: int) -> guardrails.Policy | None:
    """One published version, compiled once per process (no query once it is): versions never change.
    A deleted guardrail's cached versions are forgotten when its organisation's policies are next read."""

    def load() -> guardrails.Policy:
        return _compiled(
            GuardrailVersion.objects.select_related("guardrail").get(
                guardrail_id=guardrail_id, version=number
            )
        )

    cached = guardrails.cached(guardrail_id, number)
    if cached is not None:
        return cached
    if not GuardrailVersion.objects.filter(guardrail_id=guardrail_id, version=number).exists():
        return None
    return guardrails.cached_version(guardrail_id, number, load)


def latest_policies(organization_id: int) -> dict[int, guardrails.Policy]:
    """Each published guardrail of the organisation by id, at its latest version: one small query for
    the numbers (and names, which may have changed since a version was compiled), and one read per
    version not compiled in this process yet."""
    latest = (
        GuardrailVersion.objects.filter(guardrail__organization_id=organization_id)
        .values("guardrail_id", "guardrail__name")
        .annotate(latest=Max("version"))
    )
    policies = {}
    for row in latest:
        guardrail_id, number = row["guardrail_id"], row["latest"]

        def load(guardrail_id: int = guardrail_id, number: int = number) -> guardrails.Policy:
            return _compiled(
                GuardrailVersion.objects.select_related("guardrail").get(
                    guardrail_id=guardrail_id, version=number
                )
            )

        policy = guardrails.cached_version(guardrail_id, number, load)
        if policy.name != row["guardrail__name"]:
            policy = dataclasses.replace(policy, name=row["guardrail__name"])
        policies[guardrail_id] = policy
    return policies
