from __future__ import annotations

from django.urls import path

from services.training.api import views

ORG = "api/v1/orgs/<slug:org>"

urlpatterns = [
    path(f"{ORG}/models", views.ModelViewSet.as_view({"get": "list", "post": "create"}), name="model-list"),
    path(f"{ORG}/models/<int:pk>", views.ModelViewSet.as_view({"get": "retrieve"}), name="model-detail"),
    path(
        f"{ORG}/models/<int:model>/versions",
        views.VersionViewSet.as_view({"get": "list", "post": "create"}),
        name="model-version-list",
    ),
    path(
        f"{ORG}/models/<int:model>/versions/<int:number>",
        views.VersionViewSet.as_view({"get": "retrieve"}),
        name="model-version-detail",
    ),
    path(f"{ORG}/runs", views.RunViewSet.as_view({"get": "list"}), name="run-list"),
    path(f"{ORG}/runs/<int:pk>", views.RunViewSet.as_view({"get": "retrieve"}), name="run-detail"),
    path(f"{ORG}/runs/<int:pk>/cancel", views.RunViewSet.as_view({"post": "cancel"}), name="run-cancel"),
]
