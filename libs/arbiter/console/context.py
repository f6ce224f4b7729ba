"""Template context for console pages: the signed-in user's orgs, the org in the URL, and the navigation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from arbiter.config.routes import page_path
from arbiter.tenancy.selectors import orgs_for_user


@dataclass(frozen=True)
class NavSection:
    label: str
    url_name: str
    icon: str


# Sections in the order of the journey, the same on every service's pages: links are plain paths from the route
# table, so a process serving one service links to the pages the path router sends to the others.
NAV_SECTIONS: tuple[NavSection, ...] = (
    NavSection("Overview", "console-org", "home"),
    NavSection("Datasets", "console-datasets", "datasets"),
    NavSection("Labeling", "console-labeling", "labeling"),
    NavSection("Models", "console-models", "models"),
    NavSection("Policies", "console-policies", "labeling"),
    NavSection("Deployments", "console-deployments", "deployments"),
    NavSection("Batches", "console-batches", "batches"),
    NavSection("Usage", "console-usage", "usage"),
    NavSection("Billing", "console-billing", "billing"),
    NavSection("Webhooks", "console-webhooks", "webhooks"),
    NavSection("API keys", "console-api-keys", "keys"),
    NavSection("Members", "console-members", "members"),
)


@dataclass(frozen=True)
class NavLink:
    label: str
    url: str
    icon: str
    active: bool


def nav_links(*, org_slug: str, path: str) -> list[NavLink]:
    links = []
    for section in NAV_SECTIONS:
        url = page_path(section.url_name, org=org_slug)
        home = section.url_name == "console-org"
        active = path == url if home else path.startswith(url)
        links.append(NavLink(section.label, url, section.icon, active))
    return links


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
        "console_nav": nav_links(org_slug=current.org.slug, path=request.path) if current else [],
        # Where API clients reach this install; snippets shown to users must name it, not the browser's host.
        "console_public_url": (settings.ARBITER_PUBLIC_URL or "").rstrip("/"),
    }
