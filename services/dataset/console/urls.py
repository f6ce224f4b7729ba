from __future__ import annotations

from django.urls import path

from services.dataset.console import views

ORG = "console/<slug:org>"
DATASET = f"{ORG}/datasets/<int:dataset_id>"

urlpatterns = [
    path(f"{ORG}/datasets", views.dataset_list, name="console-datasets"),
    path(f"{ORG}/datasets/new", views.dataset_upload, name="console-dataset-upload"),
    path(DATASET, views.dataset_rows, name="console-dataset"),
    path(f"{DATASET}/columns", views.dataset_columns, name="console-dataset-columns"),
    path(f"{DATASET}/rows/<int:number>", views.row_relabel, name="console-dataset-row"),
    path(f"{DATASET}/rows/<int:number>/delete", views.row_delete, name="console-dataset-row-delete"),
    path(f"{DATASET}/snapshots", views.dataset_snapshots, name="console-dataset-snapshots"),
    path(f"{ORG}/snapshots/<int:snapshot_id>", views.snapshot_detail, name="console-snapshot"),
]
