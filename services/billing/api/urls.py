from __future__ import annotations

from django.urls import path

from services.billing.api import views, webhooks

_billing = "api/v1/orgs/<slug:org>/billing"

urlpatterns = [
    path(_billing, views.BillingViewSet.as_view({"get": "retrieve"}), name="billing"),
    path(f"{_billing}/plan", views.BillingViewSet.as_view({"put": "plan"}), name="billing-plan"),
    path(f"{_billing}/usage", views.BillingViewSet.as_view({"get": "usage"}), name="billing-usage"),
    path(f"{_billing}/invoices", views.BillingViewSet.as_view({"get": "invoices"}), name="billing-invoices"),
    path(f"{_billing}/portal", views.BillingViewSet.as_view({"post": "portal"}), name="billing-portal"),
    path("webhooks/stripe", webhooks.stripe_webhook, name="billing-stripe-webhook"),
]
