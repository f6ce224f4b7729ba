from __future__ import annotations

from django.urls import path

from services.training.console import views

ORG = "console/<slug:org>"

urlpatterns = [
    path(f"{ORG}/models", views.model_list, name="console-models"),
    path(f"{ORG}/models/new", views.model_create, name="console-model-create"),
    path(f"{ORG}/models/<int:model_id>", views.model_detail, name="console-model"),
    path(
        f"{ORG}/models/<int:model_id>/versions/new", views.version_create, name="console-model-version-create"
    ),
    path(
        f"{ORG}/models/<int:model_id>/versions/<int:number>",
        views.version_detail,
        name="console-model-version",
    ),
    path(
        f"{ORG}/models/<int:model_id>/versions/<int:number>/cancel",
        views.version_cancel,
        name="console-model-version-cancel",
    ),
    # The version page's live training progress, polled by htmx:
    # a part of that page, not a page of its own, so not in the route table.
    path(
        f"{ORG}/models/<int:model_id>/versions/<int:number>/progress",
        views.version_progress,
        name="console-model-version-progress",
    ),
]
