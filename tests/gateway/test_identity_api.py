from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from arbiter.tenancy.models import ApiKey, Org
from arbiter.testing.factories import ApiKeyFactory, UserFactory
from arbiter.testing.tenants import Tenant, assert_not_found

pytestmark = pytest.mark.django_db(databases="__all__")


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_key_created_through_the_api_authenticates_me_until_revoked(tenant: Tenant) -> None:
    admin = tenant.client(["admin"])
    created = admin.post(
        tenant.url("/api-keys"), {"name": "ci", "scopes": ["inference", "models:read"]}, format="json"
    )
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("arb_")

    me = bearer(secret).get("/api/v1/me")
    assert me.status_code == 200
    body = me.json()
    assert body["kind"] == "api_key"
    assert body["orgs"][0]["slug"] == tenant.slug
    assert set(body["orgs"][0]["scopes"]) == {"inference", "models:read"}

    # Only a hash, the prefix and the last four characters are stored; the secret is never shown again.
    key = ApiKey.objects.get(pk=created.json()["id"])
    assert secret not in (key.hashed_secret, key.prefix, key.last_four)
    assert key.prefix == secret[:12] and key.last_four == secret[-4:]
    listed = admin.get(tenant.url("/api-keys")).json()
    assert all("secret" not in item for item in listed)
    assert bearer(secret).get("/api/v1/me").status_code == 200
    assert ApiKey.objects.get(pk=key.pk).last_used_at is not None

    assert admin.delete(tenant.url(f"/api-keys/{key.pk}")).status_code == 204
    revoked = bearer(secret).get("/api/v1/me")
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "authentication_failed"


def test_a_key_revoked_by_another_process_stops_working_within_the_cache_time(
    tenant: Tenant, override_arbiter_settings
) -> None:
    """A process trusts a key it looked up for ARBITER_API_KEY_CACHE_SECONDS (no identity read per request);
    a revocation made elsewhere (here: straight in the database, as the gateway's process would) waits that long."""
    override_arbiter_settings(ARBITER_API_KEY_CACHE_SECONDS="0.5")
    live = ApiKeyFactory(org=tenant.org, scopes=["inference"])
    assert bearer(live.secret).get("/api/v1/me").status_code == 200
    ApiKey.objects.filter(pk=live.pk).update(revoked_at=timezone.now())
    assert bearer(live.secret).get("/api/v1/me").status_code == 200  # still trusted from the cache
    time.sleep(0.6)
    assert bearer(live.secret).get("/api/v1/me").status_code == 401


def test_wrong_and_expired_keys_are_401(tenant: Tenant) -> None:
    assert bearer("arb_not-a-real-key").get("/api/v1/me").status_code == 401
    assert bearer("something-else").get("/api/v1/me").status_code == 401
    assert APIClient().get("/api/v1/me").status_code == 401
    live = ApiKeyFactory(org=tenant.org, scopes=["inference"])
    assert bearer(live.secret).get("/api/v1/me").status_code == 200
    expired = ApiKeyFactory(org=tenant.org, expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(expired.secret).get("/api/v1/me")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_missing_scope_or_role_is_403(tenant: Tenant) -> None:
    reader = tenant.client(["datasets:read"])
    assert reader.get(tenant.url("/members")).status_code == 200
    denied = reader.post(tenant.url("/api-keys"), {"name": "x", "scopes": ["admin"]}, format="json")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"

    viewer, _ = tenant.add_member("viewer")
    session = tenant.session_client(viewer)
    assert session.get(tenant.url("/members")).status_code == 200
    assert session.post(tenant.url("/members"), {"email": "x@example.com"}, format="json").status_code == 403

    # Nobody can mint a key with more power than they hold.
    member, _ = tenant.add_member("member")
    assert (
        tenant.session_client(member)
        .post(tenant.url("/api-keys"), {"name": "x", "scopes": ["inference"]}, format="json")
        .status_code
        == 403
    )


@pytest.mark.cross_tenant("org-detail", "member-list", "member-detail", "api-key-list", "api-key-detail")
def test_another_orgs_resources_are_404_like_missing_ones(tenant: Tenant, victim: Tenant) -> None:
    attacker = tenant.client(["admin"])
    victim.key(["admin"])
    victim_key = ApiKey.objects.get(org=victim.org)
    victim_member = victim.org.memberships.first()
    for path in ["", "/members", "/api-keys"]:
        assert_not_found(attacker.get(victim.url(path)))
    assert_not_found(attacker.patch(victim.url(), {"name": "pwned"}, format="json"))
    assert_not_found(
        attacker.post(victim.url("/api-keys"), {"name": "x", "scopes": ["admin"]}, format="json")
    )
    assert_not_found(attacker.delete(victim.url(f"/api-keys/{victim_key.pk}")))
    assert_not_found(attacker.get(victim.url(f"/api-keys/{victim_key.pk}")))
    assert_not_found(
        attacker.patch(victim.url(f"/members/{victim_member.pk}"), {"role": "viewer"}, format="json")
    )
    assert_not_found(attacker.delete(victim.url(f"/members/{victim_member.pk}")))
    # The victim's own objects, addressed through the attacker's org, are missing too.
    assert_not_found(attacker.delete(tenant.url(f"/api-keys/{victim_key.pk}")))
    assert_not_found(
        attacker.patch(tenant.url(f"/members/{victim_member.pk}"), {"role": "viewer"}, format="json")
    )
    assert_not_found(attacker.get(tenant.url("/api-keys/not-a-number")))
    # A signed-in person outside the org gets the same answer.
    assert_not_found(tenant.session_client().get(victim.url("/members")))
    # Nothing changed on the victim's side.
    assert Org.objects.get(pk=victim.org.pk).name == victim.org.name
    assert ApiKey.objects.get(pk=victim_key.pk).revoked_at is None
    assert victim.org.memberships.get(pk=victim_member.pk).role == "owner"


def test_malformed_json_and_fields_are_400_naming_the_field(tenant: Tenant) -> None:
    admin = tenant.client(["admin"])
    broken = admin.post(tenant.url("/api-keys"), data="{not json", content_type="application/json")
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "malformed_request"
    missing = admin.post(tenant.url("/api-keys"), {"scopes": ["inference"]}, format="json")
    assert missing.status_code == 400
    assert missing.json()["error"]["message"].startswith("name:")
    wrong = admin.post(tenant.url("/api-keys"), {"name": "x", "scopes": ["everything"]}, format="json")
    assert wrong.status_code == 400
    assert "scopes" in wrong.json()["error"]["message"]


def test_members_roles_and_the_last_owner(tenant: Tenant) -> None:
    admin = tenant.client(["admin"])
    user = UserFactory(email="new@example.com")
    added = admin.post(tenant.url("/members"), {"email": "New@Example.com", "role": "viewer"}, format="json")
    assert added.status_code == 201, added.content
    assert added.json()["email"] == user.email
    assert admin.post(tenant.url("/members"), {"email": "new@example.com"}, format="json").status_code == 409
    assert (
        admin.post(tenant.url("/members"), {"email": "nobody@example.com"}, format="json").status_code == 404
    )
    member_id = added.json()["id"]
    assert (
        admin.patch(tenant.url(f"/members/{member_id}"), {"role": "member"}, format="json").json()["role"]
        == "member"
    )
    owner = tenant.org.memberships.get(role="owner")
    last = tenant.session_client().delete(tenant.url(f"/members/{owner.pk}"))
    assert last.status_code == 409
    assert last.json()["error"]["code"] == "last_owner"


def test_person_creates_org_and_lists_orgs(tenant: Tenant) -> None:
    session = tenant.session_client()
    created = session.post("/api/v1/orgs", {"name": "Second Team"}, format="json")
    assert created.status_code == 201
    slugs = {org["slug"] for org in session.get("/api/v1/orgs").json()}
    assert slugs == {tenant.slug, created.json()["slug"]}
    me = session.get("/api/v1/me").json()
    assert {o["slug"]: o["role"] for o in me["orgs"]}[created.json()["slug"]] == "owner"
    assert tenant.client(["admin"]).post("/api/v1/orgs", {"name": "x"}, format="json").status_code == 403
    taken = session.post("/api/v1/orgs", {"name": "x", "slug": tenant.slug}, format="json")
    assert taken.status_code == 409


def test_idempotency_key_returns_the_first_result_and_creates_once(tenant: Tenant) -> None:
    admin = tenant.client(["admin"])
    body = {"name": "retry-me", "scopes": ["inference"]}
    first = admin.post(tenant.url("/api-keys"), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = admin.post(tenant.url("/api-keys"), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["secret"] is None  # a secret is shown once, never replayed from storage
    assert ApiKey.objects.filter(org=tenant.org, name="retry-me").count() == 1
    different = admin.post(
        tenant.url("/api-keys"), {**body, "name": "other"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert different.status_code == 422
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    fresh = admin.post(tenant.url("/api-keys"), body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
