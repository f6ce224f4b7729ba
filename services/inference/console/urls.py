from __future__ import annotations

from django.urls import path

from arbiter.config.routes import PAGES, page
from services.inference.console import views

urlpatterns = [
    page("console-deployments", views.deployment_list),
    page("console-deployment-create", views.deployment_create),
    page("console-deployment", views.deployment_detail),
    page("console-deployment-stop", views.deployment_stop),
    page("console-usage", views.usage),
    page("console-batches", views.batch_list),
    page("console-batch", views.batch_detail),
    page("console-batch-cancel", views.batch_cancel),
    # The deployment page's wait for its deployment to go live, polled by htmx:
    # a part of that page, not a page of its own, so not in the route table.
    path(
        PAGES["console-deployment"].route + "/status",
        views.deployment_status,
        name="console-deployment-status",
    ),
]
