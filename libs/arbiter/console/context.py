"""Template context for console pages: the signed-in user's orgs and the org in the URL, if any."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from arbiter.tenancy.selectors import orgs_for_user

# Console sections contributed by services; only the enabled ones show in the navigation.
NAV_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("dataset", "Datasets", "datasets"),
    ("annotation", "Labeling", "labeling"),
    ("training", "Models", "models"),
    ("inference", "Deployments", "deployments"),
    ("billing", "Usage", "usage"),
    ("gateway", "API keys", "api-keys"),
    ("gateway", "Members", "members"),
)


def console(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "pk", None):
        return {}
    memberships = list(orgs_for_user(user_id=user.pk))
    match = getattr(request, "resolver_match", None)
    slug = match.kwargs.get("org") if match else None
    current = next((m for m in memberships if m.org.slug == slug), None)
    return {
        "console_memberships": memberships,
        "console_org": current.org if current else None,
        "console_role": current.role if current else None,
        "console_nav": [(label, path) for service, label, path in NAV_SECTIONS if service in settings.ARBITER_SERVICES],
    }
