"""The native inference API: deployments, classify, the request log, the playground and usage."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.parsers import JSONParser
from arbiter.api.schema import error_responses
from arbiter.tenancy.models import ApiKey
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.inference import images, logic, selectors
from services.inference.api import serializers as s
from services.inference.exports import FORMATS, request_log_export
from services.inference.models import Deployment, DeploymentStatus

MAX_USAGE_DAYS = 366


def caller_of(request: Request, org_id: int) -> logic.Caller:
    key = request.auth if isinstance(request.auth, ApiKey) else None
    return logic.Caller(
        org_id=org_id,
        api_key_id=key.pk if key is not None else None,
        user_id=None if key is not None else getattr(request.user, "pk", None),
    )


def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body; a body over Django's upload limit is a 413 that says so."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if limit is not None and length > limit:
        raise ApiError(
            status=413,
            code="payload_too_large",
            message=f"The request body is {length / 2**20:.1f} MiB; at most {limit / 2**20:.0f} MiB is read. "
            "Send fewer or shorter inputs per request.",
            details={"max_bytes": limit},
        )
    if not isinstance(request.data, dict):
        raise ApiError(status=400, code="invalid", message="The request body must be a JSON object.")
    return request.data


def _parse_moment(value: Any, name: str) -> datetime | None:
    """An ISO date or date-time; a date means its midnight, a time without zone means UTC."""
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{name}: use an ISO date or time, e.g. 2025-01-31.",
            details={name: ["Invalid date."]},
        ) from None
    return moment.replace(tzinfo=UTC) if timezone.is_naive(moment) else moment


def _parse_day(value: Any, name: str) -> date | None:
    moment = _parse_moment(value, name)
    return moment.date() if moment is not None else None


class DeploymentViewSet(OrgScopedViewSet):
    read_scope = "models:read"
    write_scope = "models:write"
    action_scopes = {"classify": "inference", "request_log_export": "models:read"}
    serializer_class = s.DeploymentSerializer
    parser_classes = [JSONParser]

    def safely_get_queryset(self) -> Any:
        return selectors.deployments_list()

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "org": self.access.org_slug}

    @extend_schema(parameters=[s.DeploymentListQuerySerializer], responses=s.DeploymentSerializer(many=True))
    def list(self, request: Request, org: str) -> Response:
        query = s.DeploymentListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployments = selectors.deployments_list(
            status=query.validated_data.get("status"), model_id=query.validated_data.get("model")
        )
        page = self.paginate_queryset(deployments)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        request=s.DeploymentCreateSerializer, responses={202: s.DeploymentSerializer, **error_responses(409)}
    )
    def create(self, request: Request, org: str) -> Response:
        payload = s.DeploymentCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        deployment, _ = logic.deployment_create(
            org_id=self.org_id,
            model=data["model"],
            version=data.get("version"),
            name=data.get("name"),
            thresholds=data.get("thresholds"),
            log_requests=data["log_requests"],
            log_retention_days=data.get("log_retention_days"),
            actor=self.access.actor,
            idempotency_key=request.headers.get("Idempotency-Key", ""),
            cascade=data.get("cascade"),
        )
        # Accepted: the model loads in the background; `status` turns `live` (or `failed`, with a reason).
        return Response(self.get_serializer(deployment).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=s.DeploymentSerializer)
    def retrieve(self, request: Request, org: str, pk: int) -> Response:
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(responses={200: s.DeploymentSerializer})
    def destroy(self, request: Request, org: str, pk: int) -> Response:
        deployment = logic.deployment_stop(deployment=self.get_object())
        return Response(self.get_serializer(deployment).data)

    @extend_schema(
        request=s.ClassifyRequestSerializer,
        responses={200: s.ClassifyResponseSerializer, **error_responses(409, 413, 503)},
    )
    def classify(self, request: Request, org: str, pk: int) -> Response:
        deployment: Deployment = self.get_object()
        # A deployment that is not live answers 409 (deployment_classify) before its inputs are read.
        texts = (
            images.classify_inputs(
                json_object(request).get("inputs"),
                field="inputs",
                kind=images.model_input_kind(deployment.artifact),
                store=deployment.log_requests,
            )
            if deployment.status == DeploymentStatus.LIVE
            else []
        )
        classification = logic.deployment_classify(
            deployment=deployment, texts=texts, caller=caller_of(request, self.org_id), endpoint="classify"
        )
        return Response(logic.classify_answer(deployment=deployment, classification=classification))

    @extend_schema(
        parameters=[
            OpenApiParameter("from", str, description="ISO date or time (inclusive)"),
            OpenApiParameter("to", str, description="ISO date or time (exclusive)"),
        ],
        responses=s.RequestLogEntrySerializer(many=True),
    )
    def request_log(self, request: Request, org: str, pk: int) -> Response:
        deployment = self.get_object()
        entries = selectors.request_log_entries(
            deployment_id=deployment.pk,
            start=_parse_moment(request.query_params.get("from"), "from"),
            end=_parse_moment(request.query_params.get("to"), "to"),
        )
        page = self.paginate_queryset(entries)
        return self.get_paginated_response(s.RequestLogEntrySerializer(page, many=True).data)

    @extend_schema(
        request=None,
        parameters=[
            OpenApiParameter("format", str, enum=tuple(FORMATS), description="jsonl (default) or csv"),
            OpenApiParameter("from", str),
            OpenApiParameter("to", str),
        ],
        responses={(200, "application/x-ndjson"): str, (200, "text/csv"): str},
    )
    def request_log_export(self, request: Request, org: str, pk: int) -> StreamingHttpResponse:
        deployment = self.get_object()
        options = {**request.query_params.dict(), **(request.data if isinstance(request.data, dict) else {})}
        export_format = str(options.get("format") or "jsonl")
        if export_format not in FORMATS:
            raise ApiError(
                status=400,
                code="invalid",
                message=f"format: choose one of {', '.join(FORMATS)}.",
                details={"format": ["Invalid choice."]},
            )
        entries = selectors.request_log_entries(
            deployment_id=deployment.pk,
            start=_parse_moment(options.get("from"), "from"),
            end=_parse_moment(options.get("to"), "to"),
        )
        heads = selectors.deployment_head_names(deployment=deployment)
        response = StreamingHttpResponse(
            request_log_export(selectors.request_log_iter(entries), heads, format=export_format),
            content_type=f"{FORMATS[export_format]}; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="{deployment.name}-requests.{export_format}"'
        return response


class PlaygroundViewSet(OrgScopedViewSet):
    read_scope = "inference"
    write_scope = "inference"
    parser_classes = [JSONParser]

    @extend_schema(
        request=s.PlaygroundRequestSerializer,
        responses={200: s.PlaygroundResponseSerializer, **error_responses(402, 413, 503)},
    )
    def create(self, request: Request, org: str, model_id: int, version: int) -> Response:
        artifact = logic.version_resolve(model=model_id, version=version).artifact
        texts = images.classify_inputs(
            json_object(request).get("input"), field="input", kind=images.model_input_kind(artifact)
        )
        answer = logic.playground_query(
            model_id=model_id, version=version, texts=texts, caller=caller_of(request, self.org_id)
        )
        return Response(
            {
                "id": f"pg-{uuid.uuid4().hex}",
                "model": answer.model_name or str(model_id),
                "version": version,
                "results": answer.classification.results,
                "quota": {
                    "used": answer.used,
                    "free": answer.free,
                    "remaining": None if answer.free is None else max(0, answer.free - answer.used),
                },
            }
        )


class UsageViewSet(OrgScopedViewSet):
    read_scope = "billing:read"

    @extend_schema(
        responses=s.USAGE_RESPONSE,
        parameters=[
            OpenApiParameter("from", str, description="first day (default: 29 days before `to`)"),
            OpenApiParameter("to", str, description="last day (default: today, UTC)"),
        ],
    )
    def list(self, request: Request, org: str) -> Response:
        end = _parse_day(request.query_params.get("to"), "to") or timezone.now().date()
        start = _parse_day(request.query_params.get("from"), "from") or end - timedelta(days=29)
        if start > end:
            raise ApiError(status=400, code="invalid", message="from: must not be after `to`.")
        if (end - start).days >= MAX_USAGE_DAYS:
            raise ApiError(
                status=400, code="invalid", message=f"Ask for at most {MAX_USAGE_DAYS} days at a time."
            )
        rows = list(selectors.usage_days(start=start, end=end))
        names = selectors.deployment_names(ids={row.deployment_id for row in rows if row.deployment_id})
        totals: dict[str, dict[str, int]] = {}
        for row in rows:
            total = totals.setdefault(row.meter, {"requests": 0, "units": 0})
            total["requests"] += row.requests
            total["units"] += row.units
        return Response(
            {
                "from": start.isoformat(),
                "to": end.isoformat(),
                "days": [{**row.as_dict(), "deployment": names.get(row.deployment_id)} for row in rows],
                "totals": totals,
                # Policies' LLM calls (decisions asked of an LLM, each cached after): {decisions, calls, tokens}.
                "llm": selectors.policy_llm_usage(start=start, end=end),
            }
        )
