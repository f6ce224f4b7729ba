"""OpenAI's batches API (`client.batches.create / retrieve / list / cancel`): `/v1/batches`.

Key-scoped (the API key decides the org; another org's batch is a 404). See `services.inference.batches`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.keyscoped import KeyScopedView
from arbiter.api.schema import ERROR_DESCRIPTIONS, ErrorSerializer, error_responses
from arbiter.tenancy.models import ApiKey
from services.inference import batches as logic
from services.inference.api.views import json_object
from services.inference.models import Batch, BatchStatus


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _has_output(batch: Batch) -> bool:
    """The output file is there to read: the batch completed, or was cancelled after answering some lines."""
    return batch.status in (BatchStatus.COMPLETED, BatchStatus.CANCELLED) and bool(batch.output_file_id)


def batch_data(batch: Batch) -> dict[str, Any]:
    done = _has_output(batch)
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id if done else None,
        "error_file_id": (batch.error_file_id or None) if done else None,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": None,
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata,
    }


def _stamp() -> serializers.IntegerField:
    return serializers.IntegerField(allow_null=True, required=False)


BatchSerializer = inline_serializer(
    "CompatBatch",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "endpoint": serializers.CharField(),
        "errors": serializers.JSONField(allow_null=True),
        "input_file_id": serializers.CharField(),
        "completion_window": serializers.CharField(),
        "status": serializers.ChoiceField(choices=BatchStatus.choices),
        "output_file_id": serializers.CharField(allow_null=True),
        "error_file_id": serializers.CharField(allow_null=True),
        "created_at": serializers.IntegerField(),
        "in_progress_at": _stamp(),
        "expires_at": serializers.IntegerField(),
        "finalizing_at": _stamp(),
        "completed_at": _stamp(),
        "failed_at": _stamp(),
        "expired_at": _stamp(),
        "cancelling_at": _stamp(),
        "cancelled_at": _stamp(),
        "request_counts": inline_serializer(
            "CompatBatchRequestCounts",
            {
                "total": serializers.IntegerField(),
                "completed": serializers.IntegerField(),
                "failed": serializers.IntegerField(),
            },
        ),
        "metadata": serializers.DictField(child=serializers.CharField(), allow_null=True),
    },
)
BatchListSerializer = inline_serializer(
    "CompatBatchList",
    {
        "object": serializers.CharField(),
        "data": type(BatchSerializer)(many=True),
        "first_id": serializers.CharField(allow_null=True),
        "last_id": serializers.CharField(allow_null=True),
        "has_more": serializers.BooleanField(),
    },
)
BatchCreateSerializer = inline_serializer(
    "CompatBatchCreate",
    {
        "input_file_id": serializers.CharField(help_text="A file uploaded with purpose `batch`."),
        "endpoint": serializers.ChoiceField(choices=logic.ENDPOINTS),
        "completion_window": serializers.ChoiceField(choices=list(logic.COMPLETION_WINDOWS)),
        "metadata": serializers.DictField(child=serializers.CharField(), required=False, allow_null=True),
    },
)
_NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[404])}


class _BatchesView(KeyScopedView):
    api = Batch.OPENAI

    def batch(self, batch_id: str) -> Batch:
        batch = Batch.objects.filter(public_id=batch_id, api=self.api).first()
        if batch is None:
            raise ApiError(status=404, code="not_found", message=f"No batch with id '{batch_id}'.")
        return batch


class BatchesView(_BatchesView):
    @extend_schema(
        operation_id="compat_batches_list",
        parameters=[
            OpenApiParameter("after", str, required=False),
            OpenApiParameter("limit", int, required=False),
        ],
        responses={200: BatchListSerializer, **error_responses(400, 404)},
        description="The org's batches, newest first; `after` (a batch id) and `limit` page.",
    )
    def get(self, request: Request) -> Response:
        batches = Batch.objects.filter(api=self.api).order_by("-id")
        after = request.query_params.get("after")
        if after:
            batches = batches.filter(pk__lt=self.batch(after).pk)
        try:
            limit = min(max(int(request.query_params.get("limit") or 20), 1), 100)
        except ValueError:
            raise ApiError(status=400, code="invalid", message="limit: give an integer.") from None
        page = list(batches[: limit + 1])
        data = [batch_data(batch) for batch in page[:limit]]
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(page) > limit,
            }
        )

    @extend_schema(
        operation_id="compat_batches_create",
        request=BatchCreateSerializer,
        responses={200: BatchSerializer, **error_responses(400, 404)},
        description="Classify every line of a `batch` file (`{custom_id, method, url, body}`) in the background. "
        "A bad line is a 400 naming it; the output and error files are downloadable once `completed`.",
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        key = request.auth
        assert isinstance(key, ApiKey)
        batch = logic.batch_create(
            org_id=self.org_id,
            api_key_id=key.pk,
            input_file_ids=[body.get("input_file_id")],
            endpoint=body.get("endpoint"),
            completion_window=body.get("completion_window"),
            metadata=body.get("metadata"),
        )
        return Response(batch_data(batch))


class BatchView(_BatchesView):
    @extend_schema(operation_id="compat_batches_retrieve", responses={200: BatchSerializer, **_NOT_FOUND})
    def get(self, request: Request, batch_id: str) -> Response:
        return Response(batch_data(self.batch(batch_id)))


class BatchCancelView(_BatchesView):
    @extend_schema(
        operation_id="compat_batches_cancel",
        request=None,
        responses={200: BatchSerializer, **_NOT_FOUND, **error_responses(409)},
        description="Cancel a batch the consumer has not finished: `cancelling`, then `cancelled`.",
    )
    def post(self, request: Request, batch_id: str) -> Response:
        return Response(batch_data(logic.batch_cancel(batch=self.batch(batch_id))))


# --- Mistral's batch jobs (`client.batch.jobs.create / get / list / cancel`): `/v1/batch/jobs` -----------------

MISTRAL_STATUS = {
    BatchStatus.VALIDATING: "QUEUED",
    BatchStatus.IN_PROGRESS: "RUNNING",
    BatchStatus.FINALIZING: "RUNNING",
    BatchStatus.COMPLETED: "SUCCESS",
    BatchStatus.FAILED: "FAILED",
    BatchStatus.EXPIRED: "TIMEOUT_EXCEEDED",
    BatchStatus.CANCELLING: "CANCELLATION_REQUESTED",
    BatchStatus.CANCELLED: "CANCELLED",
}


def batch_job_data(batch: Batch) -> dict[str, Any]:
    done = _has_output(batch)
    return {
        "id": batch.public_id,
        "object": "batch",
        "input_files": batch.input_file_ids or ([batch.input_file_id] if batch.input_file_id else []),
        "metadata": batch.metadata,
        "endpoint": batch.endpoint,
        "model": batch.model or None,
        "output_file": batch.output_file_id if done else None,
        "error_file": (batch.error_file_id or None) if done else None,
        "errors": [{"message": str(error.get("message", "")), "count": 1} for error in batch.errors],
        "status": MISTRAL_STATUS[BatchStatus(batch.status)],
        "created_at": _ts(batch.created_at),
        "total_requests": batch.total,
        "completed_requests": batch.completed + batch.failed,
        "succeeded_requests": batch.completed,
        "failed_requests": batch.failed,
        "started_at": _ts(batch.in_progress_at),
        "completed_at": _ts(batch.completed_at or batch.cancelled_at),
    }


BatchJobSerializer = inline_serializer(
    "CompatBatchJob",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "input_files": serializers.ListField(child=serializers.CharField()),
        "metadata": serializers.DictField(child=serializers.CharField(), allow_null=True),
        "endpoint": serializers.CharField(),
        "model": serializers.CharField(allow_null=True),
        "output_file": serializers.CharField(allow_null=True),
        "error_file": serializers.CharField(allow_null=True),
        "errors": inline_serializer(
            "CompatBatchJobError",
            {"message": serializers.CharField(), "count": serializers.IntegerField()},
            many=True,
        ),
        "status": serializers.ChoiceField(choices=sorted(set(MISTRAL_STATUS.values()))),
        "created_at": serializers.IntegerField(),
        "total_requests": serializers.IntegerField(),
        "completed_requests": serializers.IntegerField(),
        "succeeded_requests": serializers.IntegerField(),
        "failed_requests": serializers.IntegerField(),
        "started_at": _stamp(),
        "completed_at": _stamp(),
    },
)
BatchJobListSerializer = inline_serializer(
    "CompatBatchJobList",
    {
        "object": serializers.CharField(),
        "data": type(BatchJobSerializer)(many=True),
        "total": serializers.IntegerField(),
    },
)
BatchJobCreateSerializer = inline_serializer(
    "CompatBatchJobCreate",
    {
        "input_files": serializers.ListField(
            child=serializers.CharField(), required=False, help_text="Files of purpose `batch`."
        ),
        "requests": inline_serializer(
            "CompatBatchJobRequest",
            {
                "custom_id": serializers.CharField(required=False, allow_null=True),
                "body": inline_serializer(
                    "CompatBatchJobRequestBody",
                    {
                        "input": serializers.JSONField(
                            required=False, help_text="A text or a list of texts."
                        ),
                        "inputs": serializers.JSONField(
                            required=False, help_text="The same, Mistral's name."
                        ),
                        "model": serializers.CharField(required=False, help_text="Ignored: the job's model."),
                    },
                    help_text="One call's body.",
                ),
            },
            many=True,
            required=False,
            help_text="Inline requests instead of input_files (at most 10,000).",
        ),
        "endpoint": serializers.ChoiceField(choices=logic.ENDPOINTS),
        "model": serializers.CharField(help_text="A deployment or model name, for every line."),
        "metadata": serializers.DictField(child=serializers.CharField(), required=False, allow_null=True),
        "timeout_hours": serializers.IntegerField(required=False, help_text="24 (the default) only."),
    },
)


class BatchJobsView(_BatchesView):
    api = Batch.MISTRAL

    @extend_schema(
        operation_id="compat_batch_jobs_list",
        parameters=[
            OpenApiParameter("page", int, required=False),
            OpenApiParameter("page_size", int, required=False),
            OpenApiParameter("status", str, required=False, many=True),
        ],
        responses={200: BatchJobListSerializer, **error_responses(400)},
        description="The org's Mistral batch jobs, newest first.",
    )
    def get(self, request: Request) -> Response:
        jobs = Batch.objects.filter(api=self.api).order_by("-id")
        wanted = request.query_params.getlist("status")
        if wanted:
            jobs = jobs.filter(status__in=[s for s, name in MISTRAL_STATUS.items() if name in wanted])
        try:
            size = min(max(int(request.query_params.get("page_size") or 100), 1), 1000)
            page = max(int(request.query_params.get("page") or 0), 0)
        except ValueError:
            raise ApiError(status=400, code="invalid", message="page, page_size: give integers.") from None
        chosen = jobs[page * size : (page + 1) * size]
        return Response(
            {"object": "list", "data": [batch_job_data(job) for job in chosen], "total": jobs.count()}
        )

    @extend_schema(
        operation_id="compat_batch_jobs_create",
        request=BatchJobCreateSerializer,
        responses={200: BatchJobSerializer, **error_responses(400, 404)},
        description="Mistral's batch job: every line (`{custom_id, body}`) of the input files, or every inline "
        "request, classified by `model` in the background, as `/v1/batches` does.",
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        if body.get("timeout_hours") not in (None, 24):
            raise ApiError(status=400, code="invalid", message="timeout_hours: only 24 is supported.")
        key = request.auth
        assert isinstance(key, ApiKey)
        job = logic.batch_create(
            org_id=self.org_id,
            api_key_id=key.pk,
            input_file_ids=body.get("input_files"),
            endpoint=body.get("endpoint"),
            completion_window="24h",
            metadata=body.get("metadata"),
            api=Batch.MISTRAL,
            model=body.get("model"),
            inline=body.get("requests"),
        )
        return Response(batch_job_data(job))


class BatchJobView(_BatchesView):
    api = Batch.MISTRAL

    @extend_schema(operation_id="compat_batch_jobs_get", responses={200: BatchJobSerializer, **_NOT_FOUND})
    def get(self, request: Request, job_id: str) -> Response:
        return Response(batch_job_data(self.batch(job_id)))


class BatchJobCancelView(_BatchesView):
    api = Batch.MISTRAL

    @extend_schema(
        operation_id="compat_batch_jobs_cancel",
        request=None,
        responses={200: BatchJobSerializer, **_NOT_FOUND, **error_responses(409)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        return Response(batch_job_data(logic.batch_cancel(batch=self.batch(job_id))))
