from __future__ import annotations

from django.urls import path

from services.dataset.api import files, views

DATASET = "api/v1/orgs/<slug:org>/datasets/<int:dataset>"
SNAPSHOT = "api/v1/orgs/<slug:org>/snapshots/<int:snapshot>"

urlpatterns = [
    path(
        "api/v1/orgs/<slug:org>/datasets",
        views.DatasetViewSet.as_view({"get": "list", "post": "create"}),
        name="dataset-list",
    ),
    path(
        DATASET,
        views.DatasetViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="dataset-detail",
    ),
    path(f"{DATASET}/uploads", views.DatasetViewSet.as_view({"post": "upload"}), name="dataset-upload"),
    path(f"{DATASET}/jobs", views.DatasetViewSet.as_view({"get": "jobs"}), name="dataset-job-list"),
    path(
        f"{DATASET}/jobs/<int:job>", views.DatasetViewSet.as_view({"get": "job"}), name="dataset-job-detail"
    ),
    path(
        f"{DATASET}/images/fetch",
        views.DatasetViewSet.as_view({"post": "images_fetch"}),
        name="dataset-images-fetch",
    ),
    path(
        f"{DATASET}/images/<str:sha256>",
        views.DatasetViewSet.as_view({"get": "image"}),
        name="dataset-image",
    ),
    path(f"{DATASET}/history", views.DatasetViewSet.as_view({"get": "history"}), name="dataset-history"),
    path(f"{DATASET}/export.csv", views.DatasetViewSet.as_view({"get": "export"}), name="dataset-export"),
    path(
        f"{DATASET}/rows",
        views.RowViewSet.as_view({"get": "list", "post": "create"}),
        name="dataset-row-list",
    ),
    path(
        f"{DATASET}/rows/<int:row>",
        views.RowViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="dataset-row-detail",
    ),
    path(
        f"{DATASET}/snapshots",
        views.SnapshotViewSet.as_view({"get": "dataset_list", "post": "create"}),
        name="dataset-snapshot-list",
    ),
    path(
        "api/v1/orgs/<slug:org>/snapshots",
        views.SnapshotViewSet.as_view({"get": "list"}),
        name="snapshot-list",
    ),
    path(SNAPSHOT, views.SnapshotViewSet.as_view({"get": "retrieve"}), name="snapshot-detail"),
    path(
        f"{SNAPSHOT}/invalid-rows",
        views.SnapshotViewSet.as_view({"get": "invalid_rows"}),
        name="snapshot-invalid-rows",
    ),
    path(
        f"{SNAPSHOT}/test-check",
        views.SnapshotViewSet.as_view({"get": "test_check"}),
        name="snapshot-test-check",
    ),
    path(
        f"{SNAPSHOT}/download", views.SnapshotViewSet.as_view({"get": "download"}), name="snapshot-download"
    ),
    path("v1/files", files.FilesView.as_view(), name="compat-files"),
    path("v1/files/<str:file_id>", files.FileView.as_view(), name="compat-file"),
    path("v1/files/<str:file_id>/content", files.FileContentView.as_view(), name="compat-file-content"),
]
