from __future__ import annotations

from django.urls import path

from services.inference.api import batches, compat, views

_deployments = "api/v1/orgs/<slug:org>/deployments"

urlpatterns = [
    path(
        _deployments,
        views.DeploymentViewSet.as_view({"get": "list", "post": "create"}),
        name="deployment-list",
    ),
    path(
        f"{_deployments}/<int:pk>",
        views.DeploymentViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="deployment-detail",
    ),
    path(
        f"{_deployments}/<int:pk>/classify",
        views.DeploymentViewSet.as_view({"post": "classify"}),
        name="deployment-classify",
    ),
    path(
        f"{_deployments}/<int:pk>/request-log",
        views.DeploymentViewSet.as_view({"get": "request_log"}),
        name="deployment-request-log",
    ),
    path(
        f"{_deployments}/<int:pk>/request-log/export",
        views.DeploymentViewSet.as_view({"post": "request_log_export"}),
        name="deployment-request-log-export",
    ),
    path(
        "api/v1/orgs/<slug:org>/models/<int:model_id>/versions/<int:version>/playground",
        views.PlaygroundViewSet.as_view({"post": "create"}),
        name="model-version-playground",
    ),
    path("api/v1/orgs/<slug:org>/usage", views.UsageViewSet.as_view({"get": "list"}), name="inference-usage"),
    path("v1/moderations", compat.ModerationsView.as_view(), name="compat-moderations"),
    path("v1/classifications", compat.ClassificationsView.as_view(), name="compat-classifications"),
    path("v1/batches", batches.BatchesView.as_view(), name="compat-batches"),
    path("v1/batches/<str:batch_id>", batches.BatchView.as_view(), name="compat-batch"),
    path("v1/batches/<str:batch_id>/cancel", batches.BatchCancelView.as_view(), name="compat-batch-cancel"),
    path("v1/batch/jobs", batches.BatchJobsView.as_view(), name="compat-batch-jobs"),
    path("v1/batch/jobs/<str:job_id>", batches.BatchJobView.as_view(), name="compat-batch-job"),
    path(
        "v1/batch/jobs/<str:job_id>/cancel",
        batches.BatchJobCancelView.as_view(),
        name="compat-batch-job-cancel",
    ),
]
