from __future__ import annotations

from django.urls import path

from arbiter.config.routes import PAGES, page
from services.dataset.console import views

urlpatterns = [
    page("console-datasets", views.dataset_list),
    page("console-dataset-upload", views.dataset_upload),
    page("console-dataset", views.dataset_rows),
    page("console-dataset-columns", views.dataset_columns),
    page("console-dataset-row", views.row_relabel),
    page("console-dataset-row-delete", views.row_delete),
    page("console-dataset-snapshots", views.dataset_snapshots),
    page("console-snapshot", views.snapshot_detail),
    # The dataset pages' import progress, polled by htmx:
    # a part of that page, not a page of its own, so not in the route table.
    path(
        PAGES["console-dataset"].route + "/progress", views.dataset_progress, name="console-dataset-progress"
    ),
    # The rows grid's images and its "fetch again" button: parts of that page too.
    path(
        PAGES["console-dataset"].route + "/images/<str:sha256>",
        views.dataset_image,
        name="console-dataset-image",
    ),
    path(
        PAGES["console-dataset"].route + "/images-fetch",
        views.dataset_images_fetch,
        name="console-dataset-images-fetch",
    ),
]
