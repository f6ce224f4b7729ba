"""The gateway's lists (members, API keys; API and console) run as many queries for many items as for one."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from arbiter.testing.queries import assert_same_query_counts, queries_of
from arbiter.testing.tenants import Tenant

pytestmark = pytest.mark.django_db(databases="__all__")


def test_member_and_api_key_lists(tenant: Tenant) -> None:
    api = tenant.client(["admin"])
    console = Client()
    console.force_login(tenant.owner)

    def lists() -> tuple[Any, ...]:
        return (
            api.get(tenant.url("/members")),
            api.get(tenant.url("/api-keys")),
            console.get(f"/console/{tenant.slug}/members"),
            console.get(f"/console/{tenant.slug}/api-keys"),
        )

    lists()  # the key's first use is recorded (a write, once): not part of what is compared
    (members_one, keys_one, *_), one = queries_of(lists)
    for role in ("admin", "member", "viewer"):
        user, _ = tenant.add_member(role)
        tenant.key(["datasets:read"], name=f"key of {user.email}")
    revoked = api.post(
        tenant.url("/api-keys"), {"name": "short-lived", "scopes": ["inference"]}, format="json"
    )
    assert revoked.status_code == 201, revoked.content
    assert api.delete(tenant.url(f"/api-keys/{revoked.json()['id']}")).status_code == 204
    (members_many, keys_many, members_page, keys_page), many = queries_of(lists)

    assert len(members_one.json()) == 1 and len(members_many.json()) == 4
    assert len(keys_many.json()) == len(keys_one.json()) + 4
    assert members_page.status_code == 200 and keys_page.status_code == 200
    assert b"short-lived" in keys_page.content
    assert_same_query_counts(one, many)
