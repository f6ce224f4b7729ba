from __future__ import annotations

from django.urls import path

from services.gateway.console import views

urlpatterns = [
    path("", views.home, name="home"),
    path("signup", views.signup, name="signup"),
    path("signin", views.signin, name="signin"),
    path("signout", views.signout, name="signout"),
    path("console/", views.console_home, name="console-home"),
    path("console/switch", views.switch_org, name="console-switch-org"),
    path("console/orgs/new", views.org_create, name="console-org-create"),
    path("console/<slug:org>/", views.org_overview, name="console-org"),
    path("console/<slug:org>/api-keys", views.api_keys, name="console-api-keys"),
    path(
        "console/<slug:org>/api-keys/<int:key_id>/revoke", views.api_key_revoke, name="console-api-key-revoke"
    ),
    path("console/<slug:org>/members", views.members, name="console-members"),
]
