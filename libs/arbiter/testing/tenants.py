"""Tenants and API clients for tests."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from arbiter.tenancy.logic import api_key_create
from arbiter.tenancy.models import Membership, Org
from arbiter.tenancy.scopes import SCOPES, Role

_counter = itertools.count(1)


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
        created = api_key_create(
            org_id=self.org.pk,
            name=name,
            scopes=scopes or ["admin"],
            granted=frozenset(SCOPES),
            created_by_id=self.owner.pk,
        )
        return created.secret

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
        email = email or f"{role}-{next(_counter)}-{self.org.slug}@example.com"
        user = User.objects.create_user(username=email, email=email, password=password)
        Membership.objects.create(org=self.org, user=user, role=Role(role))
        return user, password


def make_tenant(slug: str | None = None) -> Tenant:
    n = next(_counter)
    slug = slug or f"org-{n}-{secrets.token_hex(3)}"
    email = f"owner-{slug}@example.com"
    password = secrets.token_urlsafe(12)
    user = User.objects.create_user(username=email, email=email, password=password)
    org = Org.objects.create(slug=slug, name=slug.title())
    Membership.objects.create(org=org, user=user, role=Role.OWNER)
    return Tenant(org=org, owner=user, password=password)


def assert_not_found(response: Any) -> None:
    """Another org's object answers exactly like a missing one: 404 with the standard error body."""
    assert response.status_code == 404, (
        f"expected 404, got {response.status_code}: {getattr(response, 'content', b'')[:300]!r}"
    )
    if response.get("Content-Type", "").startswith("application/json"):
        assert response.json()["error"]["code"] == "not_found"
