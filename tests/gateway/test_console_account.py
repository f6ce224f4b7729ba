from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from arbiter.config.routes import page_path
from arbiter.console.context import NAV_SECTIONS
from arbiter.tenancy.models import ApiKey, Membership, Org
from arbiter.testing.tenants import Tenant, assert_not_found

pytestmark = pytest.mark.django_db(databases="__all__")


def test_sign_up_sign_out_sign_in() -> None:
    browser = Client(enforce_csrf_checks=False)
    page = browser.post(
        "/signup", {"email": "Ana@Example.com", "password": "correct horse battery", "org_name": "Ana's T&S"}
    )
    assert page.status_code == 302
    org = Org.objects.get(name="Ana's T&S")
    assert page["Location"] == f"/console/{org.slug}/"
    home = browser.get(page["Location"])
    assert b"Ana&#x27;s T&amp;S" in home.content  # user text is escaped
    assert browser.post("/signout").status_code == 302
    assert browser.get(f"/console/{org.slug}/").status_code == 302  # back to sign-in
    wrong = browser.post("/signin", {"email": "ana@example.com", "password": "nope"})
    assert wrong.status_code == 400 and b"do not match" in wrong.content
    ok = browser.post("/signin", {"email": "ana@example.com", "password": "correct horse battery"})
    assert ok.status_code == 302


def test_sign_up_with_a_taken_email_says_so_and_creates_nothing(tenant: Tenant) -> None:
    email = tenant.owner.email
    orgs_before, users_before = Org.objects.count(), get_user_model().objects.count()
    page = Client().post(
        "/signup", {"email": email.upper(), "password": "correct horse battery", "org_name": "Dup"}
    )
    assert page.status_code == 400
    assert b"already exists" in page.content
    assert (Org.objects.count(), get_user_model().objects.count()) == (orgs_before, users_before)
    weak = Client().post("/signup", {"email": "weak@example.com", "password": "short", "org_name": "Weak"})
    assert weak.status_code == 400 and not get_user_model().objects.filter(email="weak@example.com").exists()


def test_console_api_keys_show_the_secret_once_and_revoke(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.post(f"/console/{tenant.slug}/api-keys", {"name": "prod", "scopes": ["inference"]})
    assert page.status_code == 200
    secret = re.search(rb'id="new-key-secret">(arb_[^<]+)<', page.content).group(1).decode()
    assert ApiKey.objects.get(name="prod").last_four == secret[-4:]
    again = browser.get(f"/console/{tenant.slug}/api-keys")
    assert secret.encode() not in again.content and b"prod" in again.content
    key = ApiKey.objects.get(name="prod")
    assert browser.post(f"/console/{tenant.slug}/api-keys/{key.pk}/revoke").status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None


@pytest.mark.cross_tenant("console-org", "console-api-keys", "console-api-key-revoke", "console-members")
def test_console_pages_of_another_org_are_404(tenant: Tenant, victim: Tenant) -> None:
    victim.key(["admin"])
    victim_key = ApiKey.objects.get(org=victim.org)
    browser = Client()
    browser.force_login(tenant.owner)
    for path in ["/", "/api-keys", "/members"]:
        assert_not_found(browser.get(f"/console/{victim.slug}{path}"))
    assert_not_found(browser.post(f"/console/{victim.slug}/api-keys/{victim_key.pk}/revoke"))
    assert_not_found(browser.post(f"/console/{tenant.slug}/api-keys/{victim_key.pk}/revoke"))
    assert_not_found(
        browser.post(f"/console/{victim.slug}/members", {"action": "add", "email": tenant.owner.email})
    )
    assert ApiKey.objects.get(pk=victim_key.pk).revoked_at is None
    assert not Membership.objects.filter(org=victim.org, user=tenant.owner).exists()


def test_viewer_cannot_manage_keys(tenant: Tenant) -> None:
    viewer, _ = tenant.add_member("viewer")
    browser = Client()
    browser.force_login(viewer)
    assert browser.get(f"/console/{tenant.slug}/api-keys").status_code == 403
    assert browser.get(f"/console/{tenant.slug}/members").status_code == 200


def test_the_overview_walks_a_new_org_through_the_journey(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.get(f"/console/{tenant.slug}/").content.decode()
    steps = re.findall(r'<div class="what">([^<]+)</div>', page)
    assert steps == [
        "Upload a dataset",
        "Train a model",
        "Deploy it",
        "Create an API key",
        "Invite your team",
    ]
    assert f'data-check="/api/v1/orgs/{tenant.slug}/datasets"' in page
    # The navigation is the journey, in the same order on every service's pages, as plain paths.
    nav = re.search(r'<nav class="sidenav".*?</nav>', page, re.S).group(0)
    hrefs = re.findall(r'href="(/console/[^"]*)"', nav)
    assert hrefs == [page_path(section.url_name, org=tenant.slug) for section in NAV_SECTIONS]
    assert [h.split("/")[3] for h in hrefs[1:4]] == ["datasets", "labeling", "models"]
    tenant.key(["inference"])
    again = browser.get(f"/console/{tenant.slug}/").content.decode()
    assert re.search(r'<li class="done"[^>]*>\s*<div><div class="what">Create an API key', again)


def test_switching_orgs_and_listing_them_all(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    assert browser.get("/console/")["Location"] == f"/console/{tenant.slug}/"
    assert browser.get("/console/switch", {"org": "-"})["Location"] == "/console/?all=1"
    listing = browser.get("/console/?all=1")
    assert listing.status_code == 200 and tenant.org.name.encode() in listing.content
    created = browser.post("/console/orgs/new", {"name": "Second <org>"})
    second = Org.objects.get(name="Second <org>")
    assert created["Location"] == f"/console/{second.slug}/"
    assert browser.get("/console/switch", {"org": tenant.slug})["Location"] == f"/console/{tenant.slug}/"
    page = browser.get(f"/console/{second.slug}/").content.decode()
    assert "Second &lt;org&gt;" in page and "Second <org>" not in page


def test_a_malformed_member_form_is_a_404_not_a_crash(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    response = browser.post(f"/console/{tenant.slug}/members", {"action": "remove", "member": "abc"})
    assert response.status_code == 404 and b"Page not found" in response.content


def test_after_creating_a_key_the_person_can_continue_where_they_were(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    back = f"/console/{tenant.slug}/deployments/7"
    form = browser.get(f"/console/{tenant.slug}/api-keys", {"next": back})
    assert f'name="next" value="{back}"'.encode() in form.content
    created = browser.post(
        f"/console/{tenant.slug}/api-keys", {"name": "svc", "scopes": ["inference"], "next": back}
    )
    assert f'href="{back}">Continue where you were'.encode() in created.content
    elsewhere = browser.post(
        f"/console/{tenant.slug}/api-keys",
        {"name": "svc2", "scopes": ["inference"], "next": "https://evil.example/"},
    )
    assert b"evil.example" not in elsewhere.content
