"""Tenants and API clients for tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from arbiter.tenancy.models import Org
from arbiter.tenancy.scopes import Role
from arbiter.testing.factories import ApiKeyFactory, MembershipFactory, OrgFactory, UserFactory


@dataclass
class Tenant:
    """An org with an owner, and helpers to call the API as that org."""

    org: Org
    owner: User
    password: str

    @property
    def slug(self) -> str:
        return self.org.slug

    def url(self, path: str = "") -> str:
        return f"/api/v1/orgs/{self.org.slug}{path}"

    def key(self, scopes: list[str] | None = None, name: str = "test key") -> str:
        """The secret of a new API key of this org, made by its owner."""
        key = ApiKeyFactory.create(
            org=self.org, name=name, scopes=sorted(set(scopes or ["admin"])), created_by=self.owner
        )
        secret: str = key.secret  # type: ignore[attr-defined]
        return secret

    def client(self, scopes: list[str] | None = None) -> APIClient:
        """An API client authenticated by a fresh key of this org with these scopes (default: admin)."""
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.key(scopes)}")
        return client

    def session_client(self, user: User | None = None) -> APIClient:
        client = APIClient(enforce_csrf_checks=False)
        client.force_login(user or self.owner)
        return client

    def add_member(self, role: Role | str, email: str | None = None) -> tuple[User, str]:
        password = secrets.token_urlsafe(12)
        fields = {"email": email} if email else {}
        user = UserFactory.create(password=password, **fields)
        MembershipFactory.create(org=self.org, user=user, role=Role(role))
        return user, password


def make_tenant(slug: str | None = None) -> Tenant:
    org = OrgFactory.create(**({"slug": slug} if slug else {}))
    password = secrets.token_urlsafe(12)
    owner = UserFactory.create(email=f"owner-{org.slug}@example.com", password=password)
    MembershipFactory.create(org=org, user=owner, role=Role.OWNER)
    return Tenant(org=org, owner=owner, password=password)


def assert_not_found(response: Any) -> None:
    """Another org's object answers exactly like a missing one: 404 with the standard error body."""
    assert response.status_code == 404, (
        f"expected 404, got {response.status_code}: {getattr(response, 'content', b'')[:300]!r}"
    )
    if response.get("Content-Type", "").startswith("application/json"):
        assert response.json()["error"]["code"] == "not_found"
