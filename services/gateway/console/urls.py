from __future__ import annotations

from arbiter.config.routes import page
from services.gateway.console import views, webhooks

urlpatterns = [
    page("home", views.home),
    page("signup", views.signup),
    page("signin", views.signin),
    page("signout", views.signout),
    page("console-home", views.console_home),
    page("console-switch-org", views.switch_org),
    page("console-org-create", views.org_create),
    page("console-org", views.org_overview),
    page("console-api-keys", views.api_keys),
    page("console-api-key-revoke", views.api_key_revoke),
    page("console-members", views.members),
    page("console-webhooks", webhooks.webhooks),
    page("console-webhook", webhooks.webhook),
    page("console-webhook-delivery", webhooks.webhook_delivery),
]
