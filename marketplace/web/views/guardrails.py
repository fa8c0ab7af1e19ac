"""Guardrails of the current organisation: list and create one, open it (its draft as a form, its
published versions), edit and publish the draft, try the draft on a text and see what intervened, and
score a denied topic's examples to choose its threshold.

Validation, refusals and who may do what are the REST API's and the services' (learning.api.guardrails,
learning.guardrails.service): every member reads guardrails and tries the draft; owners and admins create,
edit, publish and score topic examples (which calls the embeddings deployment)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from learning import guardrails, masking
from learning.api.guardrails import DNS_LABEL, MAX_TRY_CHARACTERS, verdict_data
from learning.evaluations import Refused
from learning.guardrails import attachments, patterns, presidio, service
from learning.models import Guardrail
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.web import current, guardrail_chart
from marketplace.web.forms import NON_FIELD
from serving.choices import DeploymentStatus
from serving.models import Deployment

TOPIC_FORMS_EMPTY = 1  # blank topic forms offered below the draft's topics
ENTITY_LABELS = {
    masking.EMAIL: "E-mail address", masking.PHONE: "Phone number", masking.CARD: "Card number (Luhn)",
    masking.IBAN: "IBAN (mod 97)", masking.IP: "IP address (v4, v6)",
    masking.US_SSN: "US Social Security number", masking.UK_NINO: "UK National Insurance number",
    masking.NL_BSN: "Dutch BSN (11-test)", masking.IN_AADHAAR: "Indian Aadhaar (Verhoeff)",
}  # fmt: skip
# The personal-data detectors a guardrail chooses between, with what each costs a call (p50 of checking a
# clean 1 KB prompt for every type, on a 2-core CPU: bench/guardrails.py), and whether it can run here.
DETECTOR_CHOICES = (
    (
        guardrails.BUILTIN,
        "Built-in: validated regular expressions (checksums, Luhn, mod 97), about 0.06 ms a call",
    ),
    (guardrails.PRESIDIO, "Microsoft Presidio's pattern recognizers: the same types, about 2.5 ms a call"),
)
PROMPT_ATTACK_LIMITS = (
    "It catches the well-known English phrasings of instruction override, role-play jailbreaks and "
    "system-prompt extraction. It misses paraphrases, other languages, encoded text and attacks hidden in "
    "documents, and it also blocks a text that quotes an attack to discuss it."
)


def _refusal(organization: Organization, what: str) -> dict[str, list[str]]:
    return {NON_FIELD: [f"Only an owner or admin of {organization.name} {what}; ask one of them."]}


def _refused(error: Refused) -> dict[str, list[str]]:
    """A refusal shown beside its form field: `words[2]` beside the words, `topics[1].threshold` beside
    the second topic, `personal_data.EMAIL` beside the personal data."""
    field = error.field
    if field.startswith("topics["):
        return {f"topic-{field[len('topics[') :].split(']')[0]}": [str(error)]}
    return {field.split("[")[0].split(".")[0]: [str(error)]}


def _embedding_deployments(organization: Organization) -> list[str]:
    return list(
        Deployment.objects.filter(organization=organization, model_card__tasks__contains=["embedding"])
        .exclude(status=DeploymentStatus.DELETED)
        .order_by("name")
        .values_list("name", flat=True)
    )


def _lines(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines() if line.strip()]


def _config_from(post: QueryDict) -> dict[str, Any]:
    """The draft form as a configuration (checked by the service, which names any field it refuses)."""
    personal_data = {
        kind: post[f"pii-{kind}"] for kind in masking.ALL_KINDS if post.get(f"pii-{kind}", "off") != "off"
    }
    topics = []
    for index in range(
        int(post.get("topic-count", "0") or 0) if post.get("topic-count", "").isdigit() else 0
    ):
        name = str(post.get(f"topic-{index}-name", "")).strip()
        if not name:
            continue  # a blank topic form, or a topic removed by clearing its name
        raw = str(post.get(f"topic-{index}-threshold", "")).strip()
        try:
            threshold: Any = float(raw) if raw else service.DEFAULT_THRESHOLD
        except ValueError:
            threshold = raw
        topics.append(
            {"name": name, "definition": str(post.get(f"topic-{index}-definition", "")).strip(),
             "examples": _lines(str(post.get(f"topic-{index}-examples", ""))), "threshold": threshold}
        )  # fmt: skip
    return {
        "personal_data": personal_data,
        "detector": str(post.get("detector", guardrails.BUILTIN)),
        "words": _lines(str(post.get("words", ""))),
        "profanity": post.get("profanity") == "on",
        "prompt_attacks": post.get("prompt_attacks") == "on",
        "topics": topics,
        "embedding_deployment": str(post.get("embedding_deployment", "")).strip(),
        "blocked_input_message": str(post.get("blocked_input_message", "")).strip(),
        "blocked_output_message": str(post.get("blocked_output_message", "")).strip(),
    }


@login_required
@require_http_methods(["GET", "POST"])
def guardrail_list(request: HttpRequest) -> HttpResponse:
    organization = current.organization(request)
    context: dict[str, Any] = {"organization": organization, "errors": {}, "values": {}}
    if organization is None:
        return render(request, "web/guardrails.html", context)
    can_manage = tenancy.can_manage(request, organization)
    listed = Guardrail.objects.filter(organization=organization).annotate(latest=Max("versions__version"))
    context.update(can_manage=can_manage, guardrails=listed.order_by("name", "id"))
    if request.method == "GET":
        return render(request, "web/guardrails.html", context)
    if not can_manage:
        context["errors"] = _refusal(organization, "creates guardrails")
        return render(request, "web/guardrails.html", context, status=403)
    name = str(request.POST.get("name", "")).strip()
    description = str(request.POST.get("description", "")).strip()
    context["values"] = {"name": name, "description": description}
    if not re.match(DNS_LABEL, name) or len(name) > 40:
        context["errors"] = {
            "name": ["A name of lowercase letters, digits and hyphens, at most 40 characters."]
        }
        return render(request, "web/guardrails.html", context, status=400)
    if len(description) > 500:
        context["errors"] = {"description": ["At most 500 characters."]}
        return render(request, "web/guardrails.html", context, status=400)
    try:
        guardrail = service.create_guardrail(
            organization=organization, user=request.user, name=name, description=description,
            config={"personal_data": {kind: guardrails.MASK for kind in masking.LOG_KINDS}},
        )  # fmt: skip
    except Refused as error:
        context["errors"] = _refused(error)
        return render(request, "web/guardrails.html", context, status=400)
    return redirect("web:guardrail", pk=guardrail.pk)


def _guardrail_of(request: HttpRequest, pk: int) -> Guardrail:
    return get_object_or_404(
        Guardrail.objects.filter(organization__in=tenancy.visible_organizations(request)).select_related(
            "organization"
        ),
        pk=pk, organization=current.organization(request),
    )  # fmt: skip


def _page(
    request: HttpRequest, guardrail: Guardrail, *, status: int = 200, draft: dict[str, Any] | None = None,
    **extra: Any,
) -> HttpResponse:  # fmt: skip
    draft = draft if draft is not None else guardrail.draft
    topics = list(draft.get("topics", []))
    blank = {"name": "", "definition": "", "examples": [], "threshold": service.DEFAULT_THRESHOLD}
    topic_forms = [
        {
            "index": index, "key": f"topic-{index}", "name": topic.get("name", ""),
            "definition": topic.get("definition", ""), "examples": "\n".join(topic.get("examples", [])),
            "threshold": topic.get("threshold", service.DEFAULT_THRESHOLD),
        }
        for index, topic in enumerate([*topics, *([blank] * TOPIC_FORMS_EMPTY)])
    ]  # fmt: skip
    personal_data = draft.get("personal_data", {})
    context = {
        "guardrail": guardrail,
        "organization": guardrail.organization,
        "can_manage": tenancy.can_manage(request, guardrail.organization),
        "versions": list(guardrail.versions.all()),
        "draft": draft,
        "entities": [
            {"kind": kind, "label": ENTITY_LABELS[kind], "action": personal_data.get(kind, "off")}
            for kind in masking.ALL_KINDS
        ],
        "words": "\n".join(draft.get("words", [])),
        "topic_forms": topic_forms,
        "topic_count": len(topic_forms),
        "embedding_deployments": _embedding_deployments(guardrail.organization),
        "prompt_attack_limits": PROMPT_ATTACK_LIMITS,
        "profanity_count": len(patterns.PROFANITY),
        "default_blocked_input": guardrails.DEFAULT_BLOCKED_INPUT,
        "default_blocked_output": guardrails.DEFAULT_BLOCKED_OUTPUT,
        "pii_actions": ("off", *guardrails.PII_ACTIONS),
        "detectors": [
            {
                "value": value,
                "label": label,
                "installed": value != guardrails.PRESIDIO or presidio.available(),
            }
            for value, label in DETECTOR_CHOICES
        ],
        "detector": draft.get("detector", guardrails.BUILTIN),
        "errors": {},
        "try_text": "",
        "try_direction": guardrails.INPUT,
        # What it did at the gateway, and where it applies (marketplace.web.guardrail_chart).
        "intervention_charts": [guardrail_chart.intervention_chart(guardrail)],
        "intervention_totals": guardrail_chart.intervention_totals(guardrail),
        "attachments": [
            attachments.describe(found)
            for found in guardrail.attachments.select_related("deployment", "router", "api_key")
        ],
        **extra,
    }
    return render(request, "web/guardrail.html", context, status=status)


def _unless_manager(request: HttpRequest, guardrail: Guardrail, what: str) -> HttpResponse | None:
    """The guardrail's page refusing with 403 when the person is no owner or admin of its organisation
    (`what` they tried, as in "edits guardrails"); None when they are."""
    if tenancy.can_manage(request, guardrail.organization):
        return None
    return _page(request, guardrail, status=403, errors=_refusal(guardrail.organization, what))


@login_required
@require_http_methods(["GET"])
def guardrail_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _page(request, _guardrail_of(request, pk))


@login_required
@require_POST
def guardrail_draft(request: HttpRequest, pk: int) -> HttpResponse:
    guardrail = _guardrail_of(request, pk)
    if refusal := _unless_manager(request, guardrail, "edits guardrails"):
        return refusal
    config = _config_from(request.POST)
    try:
        service.update_guardrail(guardrail, config=config)
    except Refused as error:
        guardrail.refresh_from_db()
        return _page(request, guardrail, status=400, draft=config, errors=_refused(error))
    return redirect("web:guardrail", pk=guardrail.pk)


@login_required
@require_POST
def guardrail_publish(request: HttpRequest, pk: int) -> HttpResponse:
    guardrail = _guardrail_of(request, pk)
    if refusal := _unless_manager(request, guardrail, "publishes guardrails"):
        return refusal
    try:
        service.publish(guardrail, request.user)
    except Refused as error:
        return _page(request, guardrail, status=400, errors={NON_FIELD: [f"{error.field}: {error}"]})
    return redirect("web:guardrail", pk=guardrail.pk)


@login_required
@require_POST
def guardrail_try(request: HttpRequest, pk: int) -> HttpResponse:
    guardrail = _guardrail_of(request, pk)
    text = str(request.POST.get("text", ""))
    direction = str(request.POST.get("direction", guardrails.INPUT))
    extra: dict[str, Any] = {"try_text": text, "try_direction": direction}
    if direction not in (guardrails.INPUT, guardrails.OUTPUT):
        return _page(request, guardrail, status=400, errors={"direction": ["Input or output."]}, **extra)
    if not text.strip() or len(text) > MAX_TRY_CHARACTERS:
        message = f"Type a text of 1 to {MAX_TRY_CHARACTERS:,} characters to try the draft on."
        return _page(request, guardrail, status=400, errors={"text": [message]}, **extra)
    try:
        verdict = service.try_draft(guardrail, text, direction)
    except Refused as error:
        return _page(request, guardrail, status=400, errors={"text": [f"{error.field}: {error}"]}, **extra)
    return _page(request, guardrail, verdict=verdict_data(verdict), **extra)


@login_required
@require_POST
def guardrail_score(request: HttpRequest, pk: int) -> HttpResponse:
    guardrail = _guardrail_of(request, pk)
    if refusal := _unless_manager(request, guardrail, "scores topic examples"):
        return refusal
    topic = str(request.POST.get("topic", "")).strip()
    texts = _lines(str(request.POST.get("texts", "")))[:50]
    try:
        scores = service.score_examples(guardrail, topic, texts)
    except Refused as error:
        return _page(
            request, guardrail, status=400, errors={"score": [str(error)]}, score_texts="\n".join(texts)
        )
    return _page(request, guardrail, scores=scores, score_texts="\n".join(texts))
