from __future__ import annotations

from arbiter.config.routes import page
from services.billing.console import views

urlpatterns = [
    page("console-billing", views.billing),
    page("console-billing-plan", views.plan_change),
    page("console-billing-portal", views.portal),
]
