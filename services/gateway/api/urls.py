from __future__ import annotations

from django.urls import path

from services.gateway.api import views

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
]
