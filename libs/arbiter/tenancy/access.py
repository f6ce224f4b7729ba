"""Who is calling, and what may they do in an org. One answer for every service."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import Http404, HttpRequest
from rest_framework.request import Request

from arbiter.tenancy.authentication import ApiKeyPrincipal
from arbiter.tenancy.models import ApiKey, Membership, Org
from arbiter.tenancy.scopes import ROLE_SCOPES, Role, expand


@dataclass(frozen=True)
class OrgAccess:
    org_id: int
    org_slug: str
    scopes: frozenset[str]
    role: Role | None
    user_id: int | None
    api_key_id: int | None

    @property
    def actor(self) -> str:
        """How the change history names who did something."""
        return f"user:{self.user_id}" if self.user_id is not None else f"api-key:{self.api_key_id}"


def resolve_org_access(request: Request | HttpRequest, org_slug: str) -> OrgAccess:
    """The caller's access to the org named in the URL. Missing and not-yours are the same 404."""
    user = request.user
    if isinstance(user, ApiKeyPrincipal):
        key = getattr(request, "auth", None)
        assert isinstance(key, ApiKey)
        if key.org.slug != org_slug:
            raise Http404
        return OrgAccess(
            org_id=key.org_id,
            org_slug=key.org.slug,
            scopes=expand(key.scopes),
            role=None,
            user_id=None,
            api_key_id=key.pk,
        )
    user_id = getattr(user, "pk", None)
    membership = (
        Membership.objects.select_related("org").filter(org__slug=org_slug, user_id=user_id).first()
        if user_id is not None
        else None
    )
    if membership is None:
        raise Http404
    role = Role(membership.role)
    return OrgAccess(
        org_id=membership.org_id,
        org_slug=membership.org.slug,
        scopes=ROLE_SCOPES[role],
        role=role,
        user_id=membership.user_id,
        api_key_id=None,
    )


def key_org(request: Request) -> Org | None:
    """The org of the API key on this request, for key-scoped endpoints with no org in the path."""
    return request.auth.org if isinstance(request.auth, ApiKey) else None
