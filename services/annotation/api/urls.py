from __future__ import annotations

from django.urls import path

from services.annotation.api import views

_ORG = "api/v1/orgs/<slug:org>"

urlpatterns = [
    path(
        f"{_ORG}/llm-providers",
        views.ProviderViewSet.as_view({"get": "list", "post": "create"}),
        name="llm-provider-list",
    ),
    path(
        f"{_ORG}/llm-providers/<str:pk>",
        views.ProviderViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="llm-provider-detail",
    ),
    path(
        f"{_ORG}/label-schemas",
        views.LabelSchemaViewSet.as_view({"get": "list", "post": "create"}),
        name="label-schema-list",
    ),
    path(
        f"{_ORG}/label-schemas/<str:pk>",
        views.LabelSchemaViewSet.as_view({"get": "retrieve"}),
        name="label-schema-detail",
    ),
    path(
        f"{_ORG}/annotation-jobs",
        views.JobViewSet.as_view({"get": "list", "post": "create"}),
        name="annotation-job-list",
    ),
    path(
        f"{_ORG}/annotation-jobs/estimate",
        views.JobViewSet.as_view({"post": "estimate"}),
        name="annotation-job-estimate",
    ),
    path(
        f"{_ORG}/annotation-jobs/<str:pk>",
        views.JobViewSet.as_view({"get": "retrieve"}),
        name="annotation-job-detail",
    ),
    path(
        f"{_ORG}/annotation-jobs/<str:pk>/cancel",
        views.JobViewSet.as_view({"post": "cancel"}),
        name="annotation-job-cancel",
    ),
    path(
        f"{_ORG}/annotation-jobs/<str:pk>/suggestions",
        views.JobViewSet.as_view({"get": "suggestions"}),
        name="annotation-job-suggestions",
    ),
    path(
        f"{_ORG}/annotation-jobs/<str:pk>/accept",
        views.JobViewSet.as_view({"post": "accept"}),
        name="annotation-job-accept",
    ),
    path(
        f"{_ORG}/annotation-jobs/<str:pk>/compare",
        views.JobViewSet.as_view({"get": "compare"}),
        name="annotation-job-compare",
    ),
    path(
        f"{_ORG}/datasets/<str:dataset_id>/review",
        views.ReviewViewSet.as_view({"get": "setting", "put": "set_overlap"}),
        name="dataset-review",
    ),
    path(
        f"{_ORG}/datasets/<str:dataset_id>/review/next",
        views.ReviewViewSet.as_view({"get": "next"}),
        name="dataset-review-next",
    ),
    path(
        f"{_ORG}/datasets/<str:dataset_id>/review/<str:row>",
        views.ReviewViewSet.as_view({"post": "save"}),
        name="dataset-review-save",
    ),
    path(
        f"{_ORG}/datasets/<str:dataset_id>/agreement",
        views.ReviewViewSet.as_view({"get": "agreement"}),
        name="dataset-agreement",
    ),
]
