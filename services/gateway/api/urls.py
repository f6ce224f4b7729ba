from __future__ import annotations

from django.urls import path

from services.gateway.api import views, webhooks

urlpatterns = [
    path("api/v1/me", views.MeView.as_view(), name="me"),
    path("api/v1/orgs", views.OrgListView.as_view(), name="org-list"),
    path(
        "api/v1/orgs/<slug:org>",
        views.OrgViewSet.as_view({"get": "retrieve", "patch": "partial_update"}),
        name="org-detail",
    ),
    path(
        "api/v1/orgs/<slug:org>/members",
        views.MemberViewSet.as_view({"get": "list", "post": "create"}),
        name="member-list",
    ),
    path(
        "api/v1/orgs/<slug:org>/members/<str:pk>",
        views.MemberViewSet.as_view({"patch": "partial_update", "delete": "destroy"}),
        name="member-detail",
    ),
    path(
        "api/v1/orgs/<slug:org>/api-keys",
        views.ApiKeyViewSet.as_view({"get": "list", "post": "create"}),
        name="api-key-list",
    ),
    path(
        "api/v1/orgs/<slug:org>/api-keys/<str:pk>",
        views.ApiKeyViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="api-key-detail",
    ),
    path("api/v1/webhooks/event-types", webhooks.EventTypesView.as_view(), name="webhook-event-types"),
    path(
        "api/v1/orgs/<slug:org>/webhooks",
        webhooks.WebhookViewSet.as_view({"get": "list", "post": "create"}),
        name="webhook-list",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:pk>",
        webhooks.WebhookViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="webhook-detail",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:pk>/rotate-secret",
        webhooks.WebhookViewSet.as_view({"post": "rotate"}),
        name="webhook-rotate-secret",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:pk>/test",
        webhooks.WebhookViewSet.as_view({"post": "test"}),
        name="webhook-test",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:pk>/resend",
        webhooks.WebhookViewSet.as_view({"post": "resend"}),
        name="webhook-resend",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:webhook_id>/deliveries",
        webhooks.DeliveryViewSet.as_view({"get": "list"}),
        name="webhook-delivery-list",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:webhook_id>/deliveries/<str:pk>",
        webhooks.DeliveryViewSet.as_view({"get": "retrieve"}),
        name="webhook-delivery-detail",
    ),
    path(
        "api/v1/orgs/<slug:org>/webhooks/<str:webhook_id>/deliveries/<str:pk>/retry",
        webhooks.DeliveryViewSet.as_view({"post": "retry"}),
        name="webhook-delivery-retry",
    ),
    path(
        "api/v1/orgs/<slug:org>/hooks",
        webhooks.HookViewSet.as_view({"get": "list", "post": "create"}),
        name="hook-list",
    ),
    path(
        "api/v1/orgs/<slug:org>/hooks/samples/<str:event>",
        webhooks.HookViewSet.as_view({"get": "samples"}),
        name="hook-samples",
    ),
    path(
        "api/v1/orgs/<slug:org>/hooks/<str:pk>",
        webhooks.HookViewSet.as_view({"delete": "destroy"}),
        name="hook-detail",
    ),
]
