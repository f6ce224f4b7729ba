from __future__ import annotations

from django.urls import path

from services.inference.console import views

ORG = "console/<slug:org>"

urlpatterns = [
    path(f"{ORG}/deployments", views.deployment_list, name="console-deployments"),
    path(f"{ORG}/deployments/new", views.deployment_create, name="console-deployment-create"),
    path(f"{ORG}/deployments/<int:deployment_id>", views.deployment_detail, name="console-deployment"),
    path(
        f"{ORG}/deployments/<int:deployment_id>/stop", views.deployment_stop, name="console-deployment-stop"
    ),
    path(f"{ORG}/usage", views.usage, name="console-usage"),
    # The deployment page's wait to go live, polled by htmx:
    # a part of that page, not a page of its own, so not in the route table.
    path(
        f"{ORG}/deployments/<int:deployment_id>/status",
        views.deployment_status,
        name="console-deployment-status",
    ),
]
