"""Attaching guardrails to what callers call, and what the gateway reads of it.

A guardrail of an organisation is attached to one of the same organisation's deployments, routers or
API keys, at a pinned published version or at "the latest published" (version null). A call is then
checked by every guardrail attached to its key, to the router it calls and to the deployment that
answers: all of them run, a block by any one wins, and masks combine (each guardrail checks the text
the previous one masked). Refusals name the field, in the voice of learning.guardrails.service.

`attached_policies(organization_id)` is what a gateway process reads, once per its cache's TTL per
organisation (serving.gateway.directory, in the same worker thread as the deployments): every
attachment resolved to a compiled Policy (learning.guardrails: each version compiled once per process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from learning import guardrails
from learning.evaluations import Refused
from learning.models import Guardrail, GuardrailAttachment, Router
from marketplace.accounts.models import ApiKey
from serving.choices import DeploymentStatus
from serving.models import Deployment

TARGETS = ("deployment", "router", "api_key")


def _target(guardrail: Guardrail, raw: dict[str, Any]) -> dict[str, Any]:
    """The one thing to attach to, named by the request (a deployment or router by name, an API key by
    its prefix or id), as model fields; Refused naming the field otherwise."""
    named = [name for name in TARGETS if raw.get(name) not in (None, "")]
    if len(named) != 1:
        raise Refused(
            "deployment", "Name exactly one of deployment, router or api_key to attach the guardrail to."
        )
    (kind,) = named
    value = raw[kind]
    organization = guardrail.organization
    if kind == "deployment":
        found: Any = (
            Deployment.objects.filter(organization=organization, name=str(value))
            .exclude(status=DeploymentStatus.DELETED)
            .first()
        )
        if found is None:
            raise Refused("deployment", f"No deployment '{value}' in {organization.slug}.")
    elif kind == "router":
        found = Router.objects.filter(organization=organization, name=str(value)).first()
        if found is None:
            raise Refused("router", f"No router '{value}' in {organization.slug}.")
    else:
        keys = ApiKey.objects.filter(organization=organization)
        if isinstance(value, int) and not isinstance(value, bool):
            found = keys.filter(pk=value).first()
        else:
            found = keys.filter(prefix=str(value)).first()
        if found is None:
            raise Refused("api_key", f"No API key '{value}' in {organization.slug} (give its prefix or id).")
    return {kind: found}


def _version(guardrail: Guardrail, raw: Any) -> int | None:
    published = list(guardrail.versions.values_list("version", flat=True))
    if not published:
        raise Refused("version", f"'{guardrail.name}' has no published version yet; publish its draft first.")
    if raw is None or raw == "latest":
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw not in published:
        numbers = ", ".join(map(str, sorted(published)))
        raise Refused(
            "version", f"A published version of '{guardrail.name}' ({numbers}), or null for the latest."
        )
    return raw


def attach(guardrail: Guardrail, raw: Any) -> GuardrailAttachment:
    """Attach `guardrail` as the request says:
    {"deployment" | "router" | "api_key": name or key prefix, "version": n | null}."""
    if not isinstance(raw, dict):
        raise Refused("deployment", 'An object such as {"deployment": "chat", "version": null}.')
    unknown = sorted(set(raw) - {*TARGETS, "version", "organization"})
    if unknown:
        raise Refused(
            unknown[0], f"An attachment takes no '{unknown[0]}'; it takes {', '.join(TARGETS)}, version."
        )
    target = _target(guardrail, raw)
    version = _version(guardrail, raw.get("version"))
    try:
        with transaction.atomic():
            return GuardrailAttachment.objects.create(guardrail=guardrail, version=version, **target)
    except IntegrityError:
        (kind,) = target
        raise Refused(
            kind, f"'{guardrail.name}' is already attached to this {kind.replace('_', ' ')}."
        ) from None


def describe(attachment: GuardrailAttachment) -> dict[str, Any]:
    """An attachment as the API and pages show it."""
    if attachment.deployment_id is not None:
        kind, name = "deployment", attachment.deployment.name if attachment.deployment else ""
    elif attachment.router_id is not None:
        kind, name = "router", attachment.router.name if attachment.router else ""
    else:
        kind, name = "api_key", attachment.api_key.prefix if attachment.api_key else ""
    return {"id": attachment.pk, "kind": kind, "name": name, "version": attachment.version,
            "created_at": attachment.created_at}  # fmt: skip


# --- What the gateway reads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attached:
    """The compiled policies attached to an organisation's deployments (by id), routers (by name) and API
    keys (by id), and every published guardrail's latest version by id (Bedrock's guardrailConfig names
    one of them)."""

    deployments: dict[int, tuple[guardrails.Policy, ...]] = field(default_factory=dict)
    routers: dict[str, tuple[guardrails.Policy, ...]] = field(default_factory=dict)
    keys: dict[int, tuple[guardrails.Policy, ...]] = field(default_factory=dict)
    published: dict[int, guardrails.Policy] = field(default_factory=dict)

    def named(self, identifier: str) -> guardrails.Policy | None:
        """A published guardrail's latest version by id or name (None: not the organisation's)."""
        if identifier.isdigit():
            return self.published.get(int(identifier))
        return next((policy for policy in self.published.values() if policy.name == identifier), None)


EMPTY = Attached()


def attached_policies(organization_id: int) -> Attached:
    """Sync (reads the database): one query for the attachments, the latest versions through
    learning.guardrails.policies_of, and a pinned version's compiled policy (once per process)."""
    from learning.guardrails.service import version_policy

    latest = guardrails.policies_of(organization_id, max_age=0)
    rows = GuardrailAttachment.objects.filter(guardrail__organization_id=organization_id).values_list(
        "guardrail_id", "version", "deployment_id", "router__name", "api_key_id"
    )
    deployments: dict[int, list[guardrails.Policy]] = {}
    routers: dict[str, list[guardrails.Policy]] = {}
    keys: dict[int, list[guardrails.Policy]] = {}
    for guardrail_id, version, deployment_id, router_name, key_id in rows:
        policy = latest.get(guardrail_id) if version is None else version_policy(guardrail_id, version)
        if policy is None:
            continue
        if deployment_id is not None:
            deployments.setdefault(deployment_id, []).append(policy)
        elif router_name is not None:
            routers.setdefault(router_name, []).append(policy)
        elif key_id is not None:
            keys.setdefault(key_id, []).append(policy)
    if not (deployments or routers or keys or latest):
        return EMPTY
    return Attached(
        deployments={k: tuple(v) for k, v in deployments.items()},
        routers={k: tuple(v) for k, v in routers.items()},
        keys={k: tuple(v) for k, v in keys.items()},
        published=dict(latest),
    )
