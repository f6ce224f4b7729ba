from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.schema import error_responses
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.training import logic, selectors
from services.training.api import serializers as s
from services.training.models import Model, RunState


def _not_a_policy(model_type: str | None) -> None:
    """Policies are written, not trained: their own API makes them and their versions."""
    if model_type == "policy":
        raise ApiError(
            status=400,
            code="invalid",
            message="type: a policy is written, not trained; create it and its versions with "
            "POST /api/v1/orgs/{org}/policies and POST .../policies/{id}/versions.",
            details={"type": ["Use the policies API."]},
        )


class TrainingViewSet(OrgScopedViewSet):
    read_scope = "models:read"
    write_scope = "models:write"


class ModelViewSet(TrainingViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = s.ModelSerializer

    def safely_get_queryset(self) -> QuerySet[Model]:
        return selectors.model_list()

    @extend_schema(
        request=s.ModelCreateSerializer, responses={201: s.ModelCreatedSerializer, **error_responses(409)}
    )
    def create(self, request: Request, org: str) -> Response:
        payload = s.ModelCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        _not_a_policy(data.get("type"))
        version = logic.model_create(
            org_id=self.org_id,
            name=data["name"],
            type=data.get("type"),
            base_model=data["base_model"],
            snapshot_ids=data["snapshots"],
            test=data.get("test"),
            options=data.get("options", {}),
        )
        model = selectors.model_list().get(pk=version.model_id)
        body = s.ModelCreatedSerializer({"model": model, "version": version}).data
        return Response(body, status=status.HTTP_201_CREATED)


class VersionViewSet(TrainingViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = s.VersionSerializer
    lookup_field = "number"

    def safely_get_queryset(self) -> Any:
        return selectors.version_list(model_id=self.kwargs["model"])

    @extend_schema(
        request=s.VersionCreateSerializer, responses={201: s.VersionSerializer, **error_responses(409)}
    )
    def create(self, request: Request, org: str, model: int) -> Response:
        parent_model = self._model()
        _not_a_policy(parent_model.type)
        payload = s.VersionCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        version = logic.version_create(
            model=parent_model,
            parent_number=data.get("parent"),
            snapshot_ids=data.get("snapshots"),
            test=data.get("test"),
            options=data.get("options", {}),
        )
        return Response(s.VersionSerializer(version).data, status=status.HTTP_201_CREATED)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self._model()
        return super().list(request, *args, **kwargs)

    def _model(self) -> Model:
        model = selectors.model_list().filter(pk=self.kwargs["model"]).first()
        if model is None:
            raise Http404
        return model


class RunViewSet(TrainingViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = s.RunSerializer

    def safely_get_queryset(self) -> Any:
        runs = selectors.run_list().order_by("-created_at", "-id")
        state = self.request.query_params.get("state")
        return runs.filter(state=state) if state in RunState.values else runs

    @extend_schema(
        parameters=[OpenApiParameter("state", enum=RunState.values, required=False)],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses={200: s.RunSerializer, **error_responses(409)})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, org: str, pk: int) -> Response:
        run = logic.run_cancel(run=self.get_object())
        return Response(s.RunSerializer(run).data)
