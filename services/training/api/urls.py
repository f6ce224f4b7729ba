from __future__ import annotations

from django.urls import path

from services.training.api import fine_tuning, policies, views

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
    path(
        f"{ORG}/policies",
        policies.PolicyViewSet.as_view({"get": "list", "post": "create"}),
        name="policy-list",
    ),
    path(
        f"{ORG}/policies/<int:pk>", policies.PolicyViewSet.as_view({"get": "retrieve"}), name="policy-detail"
    ),
    path(
        f"{ORG}/policies/<int:policy>/versions",
        policies.PolicyVersionViewSet.as_view({"get": "list", "post": "create"}),
        name="policy-version-list",
    ),
    path(
        f"{ORG}/policies/<int:policy>/versions/<int:number>",
        policies.PolicyVersionViewSet.as_view({"get": "retrieve"}),
        name="policy-version-detail",
    ),
    path(
        f"{ORG}/policies/<int:policy>/evaluations",
        policies.PolicyEvaluationViewSet.as_view({"get": "list", "post": "create"}),
        name="policy-evaluation-list",
    ),
    path(
        f"{ORG}/policies/<int:policy>/evaluations/<int:pk>",
        policies.PolicyEvaluationViewSet.as_view({"get": "retrieve"}),
        name="policy-evaluation-detail",
    ),
    path(
        f"{ORG}/policies/<int:policy>/evaluations/<int:pk>/review",
        policies.PolicyEvaluationViewSet.as_view({"post": "review"}),
        name="policy-evaluation-review",
    ),
    path(
        f"{ORG}/policies/<int:pk>/diff", policies.PolicyViewSet.as_view({"post": "diff"}), name="policy-diff"
    ),
    path(
        f"{ORG}/policies/<int:pk>/compare",
        policies.PolicyViewSet.as_view({"post": "compare"}),
        name="policy-compare",
    ),
    path("v1/fine_tuning/jobs", fine_tuning.JobsView.as_view(), name="compat-fine-tuning-jobs"),
    path("v1/fine_tuning/jobs/<str:job_id>", fine_tuning.JobView.as_view(), name="compat-fine-tuning-job"),
    path(
        "v1/fine_tuning/jobs/<str:job_id>/start",
        fine_tuning.JobStartView.as_view(),
        name="compat-fine-tuning-job-start",
    ),
    path(
        "v1/fine_tuning/jobs/<str:job_id>/cancel",
        fine_tuning.JobCancelView.as_view(),
        name="compat-fine-tuning-job-cancel",
    ),
    path("v1/models", fine_tuning.ModelsView.as_view(), name="compat-models"),
    path("v1/models/<str:model_id>", fine_tuning.ModelView.as_view(), name="compat-model"),
]
