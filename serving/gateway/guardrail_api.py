"""Bedrock-runtime-compatible ApplyGuardrail: `POST /guardrail/{id}/version/{v}/apply` checks text against
a published version of one of the caller's organisation's guardrails, without a model.

The guardrail is named by its id or its name; the version by its number. Authenticated with the API keys
of the invoke routes (`Authorization: Bearer mk-…`, what boto3 sends with AWS_BEARER_TOKEN_BEDROCK). The
request and answer have the cloud's shapes: `source` INPUT | OUTPUT, `content: [{text: {text}}]`; the
answer's `action` (GUARDRAIL_INTERVENED | NONE), `outputs` (the masked texts, or the blocked message) and
one assessment with the policies that found something, named as the cloud names them
(sensitiveInformationPolicy, topicPolicy, wordPolicy, contentPolicy for prompt attacks).

Each text block is checked on its own; denied topics are checked once on the blocks' joined text, with
its embedding from the guardrail's embeddings deployment through the gateway's own path (metered to the
organisation like any call).
"""

from __future__ import annotations

import math
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from learning import guardrails
from serving.gateway import directory, pipeline
from serving.gateway.errors import bedrock_error, key_refusal
from serving.gateway.openai_api import read_json

SOURCES = {"INPUT": guardrails.INPUT, "OUTPUT": guardrails.OUTPUT}
MAX_BLOCKS, MAX_CHARACTERS = 100, 200_000
UNIT_CHARACTERS = 1000  # the cloud counts text units of 1,000 characters
# Our entity types in the cloud's names, where the cloud has one.
CLOUD_TYPES = {
    "EMAIL": "EMAIL", "PHONE": "PHONE", "CARD": "CREDIT_DEBIT_CARD_NUMBER",
    "IBAN": "INTERNATIONAL_BANK_ACCOUNT_NUMBER", "IP": "IP_ADDRESS", "US_SSN": "US_SOCIAL_SECURITY_NUMBER",
    "UK_NINO": "UK_NATIONAL_INSURANCE_NUMBER",
}  # fmt: skip
CLOUD_PII_ACTIONS = {
    guardrails.MASKED: "ANONYMIZED",
    guardrails.BLOCKED: "BLOCKED",
    guardrails.REPORTED: "NONE",
}


class Malformed(Exception):
    pass


def _texts(payload: dict[str, Any]) -> tuple[str, list[str]]:
    """(direction, the text blocks) of a request, or Malformed naming the field."""
    unknown = sorted(set(payload) - {"source", "content", "outputScope"})
    if unknown:
        raise Malformed(f"Unknown field '{unknown[0]}': send source, content and optionally outputScope.")
    source = payload.get("source")
    if source not in SOURCES:
        raise Malformed("source must be INPUT or OUTPUT.")
    if payload.get("outputScope", "INTERVENTIONS") not in ("INTERVENTIONS", "FULL"):
        raise Malformed("outputScope must be INTERVENTIONS or FULL.")
    content = payload.get("content")
    if not isinstance(content, list) or not 1 <= len(content) <= MAX_BLOCKS:
        raise Malformed(f'content must be a list of 1 to {MAX_BLOCKS} blocks like {{"text": {{"text": …}}}}.')
    texts = []
    for index, block in enumerate(content):
        if isinstance(block, dict) and "image" in block:
            raise Malformed(f"content[{index}].image: this platform's guardrails check text only.")
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(text, dict) or not isinstance(text.get("text"), str):
            raise Malformed(f"content[{index}].text.text must be a string.")
        texts.append(text["text"])
    if sum(map(len, texts)) > MAX_CHARACTERS:
        raise Malformed(f"content holds more than {MAX_CHARACTERS} characters: split it into several calls.")
    return SOURCES[source], texts


def _find_policy(organization_id: int, identifier: str, version: str) -> guardrails.Policy | None:
    """The version asked for, if its guardrail (by id or name) is one of the organisation's. The
    organisation's published guardrails are read at most every few seconds (so a deleted one stops
    answering within them) and each version is compiled once per process; a guardrail not among them
    (published a moment ago) is looked up."""
    from learning.models import Guardrail

    if not version.isdigit():
        return None
    published = guardrails.policies_of(organization_id)
    if identifier.isdigit():
        guardrail_id = int(identifier) if int(identifier) in published else None
    else:
        guardrail_id = next((key for key, policy in published.items() if policy.name == identifier), None)
    if guardrail_id is None:
        found = Guardrail.objects.filter(organization_id=organization_id)
        found = found.filter(pk=int(identifier)) if identifier.isdigit() else found.filter(name=identifier)
        guardrail_id = found.values_list("pk", flat=True).first()
        if guardrail_id is None:
            return None
    return guardrails.cached(guardrail_id, int(version)) or guardrails.policy_of(guardrail_id, int(version))


async def _embedding(policy: guardrails.Policy, text: str) -> list[float]:
    from learning.evaluations import gateway_invoker

    status, answer = await gateway_invoker(policy.organization_id)(
        "embeddings", {"model": policy.embedding_deployment, "input": [text or " "]}
    )
    try:
        if status != 200:
            raise KeyError(status)
        return list(answer["data"][0]["embedding"])
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(
            f"The guardrail's embeddings deployment {policy.embedding_deployment} answered {status}; check "
            "that it is ready, or remove the denied topics."
        ) from None


def assessment(interventions: list[guardrails.Intervention]) -> dict[str, Any]:
    """One assessment in the cloud's shape, with the policies that found something."""
    pii = [
        {"match": hit.match, "type": CLOUD_TYPES.get(hit.name, hit.name),
         "action": CLOUD_PII_ACTIONS[hit.action], "detected": True}
        for hit in interventions if hit.kind == guardrails.PERSONAL_DATA
    ]  # fmt: skip
    words = [
        {"match": hit.match, "action": "BLOCKED", "detected": True}
        for hit in interventions
        if hit.kind == guardrails.WORD
    ]
    managed = [
        {"match": hit.match, "type": "PROFANITY", "action": "BLOCKED", "detected": True}
        for hit in interventions
        if hit.kind == guardrails.PROFANITY
    ]
    topics = [
        {"name": hit.name, "type": "DENY", "action": "BLOCKED", "detected": True}
        for hit in interventions
        if hit.kind == guardrails.TOPIC
    ]
    attacks = [
        {
            "type": "PROMPT_ATTACK",
            "confidence": "HIGH",
            "filterStrength": "HIGH",
            "action": "BLOCKED",
            "detected": True,
        }
        for hit in interventions
        if hit.kind == guardrails.PROMPT_ATTACK
    ]
    found: dict[str, Any] = {}
    if pii:
        found["sensitiveInformationPolicy"] = {"piiEntities": pii, "regexes": []}
    if words or managed:
        found["wordPolicy"] = {"customWords": words, "managedWordLists": managed}
    if topics:
        found["topicPolicy"] = {"topics": topics}
    if attacks:
        found["contentPolicy"] = {"filters": attacks[:1]}
    return found


def usage(policy: guardrails.Policy, characters: int, direction: str) -> dict[str, int]:
    units = math.ceil(characters / UNIT_CHARACTERS) if characters else 0
    return {
        "topicPolicyUnits": units if policy.topics else 0,
        "contentPolicyUnits": units if policy.prompt_attacks and direction == guardrails.INPUT else 0,
        "wordPolicyUnits": units if policy.word_pattern is not None else 0,
        "sensitiveInformationPolicyUnits": units if policy.kinds else 0,
        "sensitiveInformationPolicyFreeUnits": 0,
        "contextualGroundingPolicyUnits": 0,
    }


def apply_policy(
    policy: guardrails.Policy, direction: str, texts: list[str], embedding: Any = None
) -> dict[str, Any]:
    """The ApplyGuardrail answer for these texts (pure)."""
    started = time.perf_counter()
    verdicts = [guardrails.check(policy, text, direction=direction) for text in texts]
    interventions = [hit for verdict in verdicts for hit in verdict.interventions]
    topic_hits = list(guardrails.topic_interventions(policy, embedding)) if embedding is not None else []
    interventions += topic_hits
    blocked = bool(topic_hits) or any(verdict.action == guardrails.BLOCKED for verdict in verdicts)
    masked = any(verdict.action == guardrails.MASKED for verdict in verdicts)
    if blocked:
        action, outputs = "GUARDRAIL_INTERVENED", [{"text": guardrails.blocked_message(policy, direction)}]
    elif masked:
        action, outputs = "GUARDRAIL_INTERVENED", [{"text": verdict.text} for verdict in verdicts]
    else:
        action, outputs = "NONE", []
    characters = sum(map(len, texts))
    units = usage(policy, characters, direction)
    answer: dict[str, Any] = {
        "usage": units,
        "action": action,
        "outputs": outputs,
        "assessments": [
            {
                **assessment(interventions),
                "invocationMetrics": {
                    "guardrailProcessingLatency": round((time.perf_counter() - started) * 1000),
                    "usage": units,
                    "guardrailCoverage": {"textCharacters": {"guarded": characters, "total": characters}},
                },
            }
        ],
        "guardrailCoverage": {"textCharacters": {"guarded": characters, "total": characters}},
    }
    if action != "NONE":
        answer["actionReason"] = "Guardrail blocked." if blocked else "Guardrail masked."
    return answer


@csrf_exempt
async def apply(request: HttpRequest, guardrail_id: str, version: str) -> HttpResponse:
    if request.method != "POST":
        return bedrock_error(405, "Use POST.")
    authorization = request.headers.get("authorization", "")
    try:
        caller = await pipeline.services().directory.caller(authorization)
    except directory.AuthenticationThrottled as refusal:
        return bedrock_error(429, str(refusal), headers={"Retry-After": str(refusal.retry_after_seconds)})
    except directory.AuthenticationUnavailable:
        return bedrock_error(503, "The gateway cannot check API keys right now; retry shortly.")
    if caller is None:
        return bedrock_error(403, key_refusal(authorization, "The API key is unknown, expired or revoked."))
    payload = read_json(request)
    if isinstance(payload, str):
        return bedrock_error(400, payload)
    try:
        direction, texts = _texts(payload)
    except Malformed as error:
        return bedrock_error(400, str(error))
    policy = await sync_to_async(_find_policy)(caller.organization_id, guardrail_id, version)
    if policy is None:
        return bedrock_error(
            404,
            f"The guardrail {guardrail_id} version {version} does not exist or you do not have access to it; "
            "apply a published version number of one of your organisation's guardrails.",
        )
    embedding = None
    if policy.topics:
        try:
            embedding = await _embedding(policy, "\n".join(texts))
        except RuntimeError as error:
            return bedrock_error(503, str(error))
    return JsonResponse(apply_policy(policy, direction, texts, embedding))
