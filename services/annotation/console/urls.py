from __future__ import annotations

from arbiter.config.routes import page
from services.annotation.console import views

urlpatterns = [
    page("console-labeling", views.labeling),
    page("console-labeling-dataset", views.labeling_dataset),
    page("console-labeling-review", views.review),
]
