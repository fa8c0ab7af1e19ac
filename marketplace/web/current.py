"""The organisation a person is working in on the web UI.

People may belong to several organisations; the UI shows one at a time, chosen in the header and kept
in the session. Which organisations a person may pick is decided by `tenancy`, as for the API.
"""

from __future__ import annotations

from django.db.models import Exists, F, OuterRef, QuerySet
from django.http import HttpRequest

from marketplace.accounts import tenancy
from marketplace.accounts.models import Membership, Organization

SESSION_KEY = "organization"


def choices(request: HttpRequest) -> QuerySet[Organization]:
    """The organisations the person may pick, their own memberships first (a platform admin sees all)."""
    if not request.user.is_authenticated:
        return Organization.objects.none()
    mine = Exists(Membership.objects.filter(organization=OuterRef("pk"), user=request.user))
    return tenancy.visible_organizations(request).annotate(mine=mine).order_by(F("mine").desc(), "name")


def organization(request: HttpRequest) -> Organization | None:
    """The picked organisation, or the person's first one; None for someone in no organisation.
    Cached on the request: templates and views ask several times."""
    if hasattr(request, "_current_organization"):
        found: Organization | None = request._current_organization
        return found
    options = choices(request)
    slug = request.session.get(SESSION_KEY)
    found = (options.filter(slug=slug).first() if slug else None) or options.first()
    request._current_organization = found  # type: ignore[attr-defined]
    return found


def pick(request: HttpRequest, slug: str) -> Organization | None:
    """Switch to `slug` if the person may; returns it, or None (and changes nothing) if not."""
    found = choices(request).filter(slug=slug).first()
    if found is not None:
        request.session[SESSION_KEY] = found.slug
        request._current_organization = found  # type: ignore[attr-defined]
    return found
