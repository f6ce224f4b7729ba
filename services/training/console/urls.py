from __future__ import annotations

from django.urls import path

from arbiter.config.routes import PAGES, page
from services.training.console import policies, views

urlpatterns = [
    page("console-models", views.model_list),
    page("console-model-create", views.model_create),
    page("console-model", views.model_detail),
    page("console-model-version-create", views.version_create),
    page("console-model-version", views.version_detail),
    page("console-model-version-cancel", views.version_cancel),
    page("console-policies", policies.policy_list),
    page("console-policy-create", policies.policy_create),
    page("console-policy", policies.policy_detail),
    page("console-policy-evaluate", policies.policy_evaluate),
    page("console-policy-evaluation", policies.policy_evaluation),
    page("console-policy-diff", policies.policy_diff),
    # The version page's live training progress, polled by htmx:
    # a part of that page, not a page of its own, so not in the route table.
    path(
        PAGES["console-model-version"].route + "/progress",
        views.version_progress,
        name="console-model-version-progress",
    ),
    # The training form's estimate of what will run, recomputed by htmx: a part of the form's pages.
    path(PAGES["console-model-create"].route + "/plan", views.training_plan, name="console-training-plan"),
]
