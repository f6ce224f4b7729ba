"""Mistral's fine-tuning jobs API (`/v1/fine_tuning/jobs`) and the models API of both SDKs (`/v1/models`).

Key-scoped: the API key decides the org. Shapes follow the Mistral SDK's `ClassifierJobOut` (create, list) and
`ClassifierDetailedJobOut` (get, start, cancel), `BaseModelCard` / `FTModelCard` for models (which the OpenAI
SDK's `Model` reads too). See `services.training.fine_tuning` for how a job maps onto a model version.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.keyscoped import KeyScopedView, invalid_at
from arbiter.api.schema import ERROR_DESCRIPTIONS, ErrorSerializer, error_responses
from services.training import fine_tuning
from services.training.models import FineTuningJob

_INVALID = OpenApiResponse(
    ErrorSerializer,
    description="The request does not fit: `message` and `detail[].loc` name the field (or the file).",
)
_NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[404])}


class _TargetSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField())
    weight = serializers.FloatField()
    loss_function = serializers.CharField(help_text="`single_class` or `multi_class`.")


class _CheckpointSerializer(serializers.Serializer[Any]):
    metrics = inline_serializer(
        "CheckpointMetrics",
        {
            "train_loss": serializers.FloatField(allow_null=True),
            "valid_loss": serializers.FloatField(allow_null=True),
            "valid_mean_token_accuracy": serializers.FloatField(allow_null=True),
        },
    )
    step_number = serializers.IntegerField()
    created_at = serializers.IntegerField()


def _hyperparameters() -> Any:
    return inline_serializer(
        "FineTuningHyperparameters",
        {
            "training_steps": serializers.IntegerField(required=False, allow_null=True),
            "learning_rate": serializers.FloatField(required=False, allow_null=True),
            "weight_decay": serializers.FloatField(required=False, allow_null=True),
            "warmup_fraction": serializers.FloatField(required=False, allow_null=True),
            "epochs": serializers.FloatField(required=False, allow_null=True),
            "seq_len": serializers.IntegerField(required=False, allow_null=True),
        },
    )


def _integration() -> Any:
    return inline_serializer(
        "FineTuningIntegration",
        {"type": serializers.CharField(), "project": serializers.CharField(required=False)},
    )


def _event_serializer() -> Any:
    return inline_serializer(
        "FineTuningJobEvent",
        {
            "name": serializers.CharField(),
            "created_at": serializers.IntegerField(),
            "data": inline_serializer(
                "FineTuningJobEventData",
                {
                    "status": serializers.CharField(),
                    "error": serializers.CharField(required=False, allow_null=True),
                    "reason": serializers.CharField(required=False, allow_null=True),
                    "message": serializers.CharField(required=False, allow_null=True),
                },
            ),
        },
        many=True,
    )


STATUSES = [
    "QUEUED",
    "STARTED",
    "VALIDATING",
    "VALIDATED",
    "RUNNING",
    "FAILED_VALIDATION",
    "FAILED",
    "SUCCESS",
    "CANCELLED",
    "CANCELLATION_REQUESTED",
]


class FineTuningJobSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    job_type = serializers.CharField()
    auto_start = serializers.BooleanField()
    model = serializers.CharField()
    status = serializers.CharField(help_text="One of " + ", ".join(STATUSES) + ".")
    created_at = serializers.IntegerField()
    modified_at = serializers.IntegerField()
    training_files = serializers.ListField(child=serializers.CharField())
    validation_files = serializers.ListField(child=serializers.CharField())
    hyperparameters = _hyperparameters()
    fine_tuned_model = serializers.CharField(allow_null=True)
    suffix = serializers.CharField(allow_null=True)
    integrations = serializers.ListField(child=_integration())
    trained_tokens = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)


class FineTuningDetailedJobSerializer(FineTuningJobSerializer):
    classifier_targets = _TargetSerializer(many=True)
    events = _event_serializer()
    checkpoints = _CheckpointSerializer(many=True)


JobListSerializer = inline_serializer(
    "FineTuningJobList",
    {
        "object": serializers.CharField(),
        "data": FineTuningJobSerializer(many=True),
        "total": serializers.IntegerField(),
    },
)


def _model_card_fields() -> dict[str, Any]:
    return {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "type": serializers.CharField(help_text="`base` or `fine-tuned`."),
        "model_type": serializers.CharField(),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
        "name": serializers.CharField(),
        "description": serializers.CharField(),
        "capabilities": serializers.DictField(child=serializers.BooleanField()),
        "max_context_length": serializers.IntegerField(),
        "aliases": serializers.ListField(child=serializers.CharField()),
        "root": serializers.CharField(required=False),
        "job": serializers.CharField(required=False),
        "archived": serializers.BooleanField(required=False),
        "classifier_targets": _TargetSerializer(many=True, required=False),
    }


# Built from dicts: `root` and `data` are names DRF's serializers keep for themselves.
ModelCardSerializer = inline_serializer("CompatModelCard", _model_card_fields())
ModelListSerializer = inline_serializer(
    "CompatModelList",
    {
        "object": serializers.CharField(),
        "data": type(ModelCardSerializer)(many=True),
    },
)


class ModelDeletedSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


def job_data(job: FineTuningJob, *, detailed: bool) -> dict[str, Any]:
    status = fine_tuning.job_status(job)
    data: dict[str, Any] = {
        "id": job.public_id,
        "object": "job",
        "job_type": "classifier",
        "auto_start": job.auto_start,
        "model": job.model,
        "status": status,
        "created_at": int(job.created_at.timestamp()),
        "modified_at": int(job.modified_at.timestamp()),
        "training_files": [entry["file_id"] for entry in job.training_files],
        "validation_files": list(job.validation_files),
        "hyperparameters": dict(job.hyperparameters),
        "fine_tuned_model": job.fine_tuned_model if status == fine_tuning.SUCCESS else None,
        "suffix": job.suffix or None,
        "integrations": [],
        "trained_tokens": None,
        "metadata": None,
    }
    if detailed:
        data["classifier_targets"] = job.classifier_targets
        data["events"] = fine_tuning.job_events(job)
        data["checkpoints"] = fine_tuning.job_checkpoints(job)
    return data


def _base_card(name: str, encoder: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "type": "base",
        "model_type": "classifier",
        "created": 0,
        "owned_by": "arbiter",
        "name": name,
        "description": f"A base for classifier fine-tuning (trains on the {encoder} encoder).",
        "capabilities": {
            "completion_chat": False,
            "completion_fim": False,
            "function_calling": False,
            "fine_tuning": True,
            "vision": False,
            "classification": True,
        },
        "max_context_length": 512,
        "aliases": [],
    }


def _fine_tuned_card(job: FineTuningJob) -> dict[str, Any]:
    return {
        **_base_card(job.fine_tuned_model, job.base_model),
        "type": "fine-tuned",
        "created": int(job.created_at.timestamp()),
        "owned_by": str(job.org_id),
        "description": f"A classifier fine-tuned from {job.model} by job {job.public_id}.",
        "capabilities": {**_base_card("", "")["capabilities"], "fine_tuning": False},
        "root": job.model,
        "job": job.public_id,
        "archived": job.archived,
        "classifier_targets": job.classifier_targets,
    }


class _FineTuningView(KeyScopedView):
    read_scope = "models:read"
    write_scope = "models:write"

    def job(self, job_id: str) -> FineTuningJob:
        job = FineTuningJob.objects.select_related("version__run").filter(public_id=job_id).first()
        if job is None:
            raise ApiError(status=404, code="not_found", message=f"No fine-tuning job with id '{job_id}'.")
        return job


class JobsView(_FineTuningView):
    @extend_schema(
        operation_id="compat_fine_tuning_jobs_list",
        parameters=[
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int),
            OpenApiParameter("model", str),
            OpenApiParameter("status", str, description="One of " + ", ".join(STATUSES) + "."),
            OpenApiParameter("suffix", str),
        ],
        responses={200: JobListSerializer, 422: _INVALID},
        description="The org's fine-tuning jobs, newest first, a page at a time, filtered by model, status "
        "or suffix.",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        try:
            page = max(int(params.get("page") or 0), 0)
            size = min(max(int(params.get("page_size") or 100), 1), 1000)
        except ValueError:
            raise invalid_at(["query", "page"], "page and page_size are integers.") from None
        jobs = FineTuningJob.objects.select_related("version__run")
        if params.get("model"):
            jobs = jobs.filter(model=params["model"])
        if params.get("suffix"):
            jobs = jobs.filter(suffix=params["suffix"])
        found = [job_data(job, detailed=False) for job in jobs]
        if params.get("status"):
            found = [job for job in found if job["status"] == params["status"]]
        return Response(
            {"object": "list", "data": found[page * size : (page + 1) * size], "total": len(found)}
        )

    @extend_schema(
        operation_id="compat_fine_tuning_jobs_create",
        request=inline_serializer(
            "FineTuningJobRequest",
            {
                "model": serializers.CharField(),
                "job_type": serializers.CharField(required=False),
                "training_files": serializers.ListField(
                    child=inline_serializer(
                        "FineTuningTrainingFile",
                        {
                            "file_id": serializers.CharField(),
                            "weight": serializers.FloatField(required=False),
                        },
                    )
                ),
                "validation_files": serializers.ListField(child=serializers.CharField(), required=False),
                "hyperparameters": _hyperparameters(),
                "suffix": serializers.CharField(required=False),
                "auto_start": serializers.BooleanField(required=False),
                "invalid_sample_skip_percentage": serializers.FloatField(required=False),
            },
        ),
        responses={200: FineTuningJobSerializer, 422: _INVALID, **error_responses(402, 409)},
        description="Create a classifier fine-tuning job: checked at once (422 naming the field), then "
        "VALIDATED or FAILED_VALIDATION (the reason in `events`).",
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise invalid_at(["body"], "send a JSON object.")
        job = fine_tuning.job_create(org_id=self.org_id, body=body)
        return Response(job_data(self.job(job.public_id), detailed=False))


class JobView(_FineTuningView):
    @extend_schema(
        operation_id="compat_fine_tuning_jobs_get",
        responses={200: FineTuningDetailedJobSerializer, **_NOT_FOUND},
    )
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_data(self.job(job_id), detailed=True))


class JobStartView(_FineTuningView):
    @extend_schema(
        operation_id="compat_fine_tuning_jobs_start",
        request=None,
        responses={200: FineTuningDetailedJobSerializer, **_NOT_FOUND, **error_responses(402, 409)},
        description="Start a VALIDATED job: its model version is trained.",
    )
    def post(self, request: Request, job_id: str) -> Response:
        fine_tuning.job_start(job=self.job(job_id))
        return Response(job_data(self.job(job_id), detailed=True))


class JobCancelView(_FineTuningView):
    @extend_schema(
        operation_id="compat_fine_tuning_jobs_cancel",
        request=None,
        responses={200: FineTuningDetailedJobSerializer, **_NOT_FOUND},
        description="Cancel a job; a running trainer is stopped.",
    )
    def post(self, request: Request, job_id: str) -> Response:
        fine_tuning.job_cancel(job=self.job(job_id))
        return Response(job_data(self.job(job_id), detailed=True))


class _ModelsView(KeyScopedView):
    read_scope = "models:read"
    write_scope = "models:write"

    def fine_tuned(self) -> list[FineTuningJob]:
        jobs = FineTuningJob.objects.select_related("version__run").exclude(fine_tuned_model="")
        return [job for job in jobs if fine_tuning.job_status(job) == fine_tuning.SUCCESS]


class ModelsView(_ModelsView):
    @extend_schema(
        operation_id="compat_models_list",
        responses={200: ModelListSerializer},
        description="The base models jobs can fine-tune, and the org's fine-tuned classifiers.",
    )
    def get(self, request: Request) -> Response:
        cards = [_base_card(name, encoder) for name, encoder in fine_tuning.BASE_MODELS.items()]
        cards += [_fine_tuned_card(job) for job in self.fine_tuned()]
        return Response({"object": "list", "data": cards})


class ModelView(_ModelsView):
    def card(self, model_id: str) -> tuple[dict[str, Any], FineTuningJob | None]:
        if model_id in fine_tuning.BASE_MODELS:
            return _base_card(model_id, fine_tuning.BASE_MODELS[model_id]), None
        job = next((job for job in self.fine_tuned() if job.fine_tuned_model == model_id), None)
        if job is None:
            raise ApiError(status=404, code="not_found", message=f"No model with id '{model_id}'.")
        return _fine_tuned_card(job), job

    @extend_schema(operation_id="compat_models_retrieve", responses={200: ModelCardSerializer, **_NOT_FOUND})
    def get(self, request: Request, model_id: str) -> Response:
        return Response(self.card(model_id)[0])

    @extend_schema(
        operation_id="compat_models_delete",
        responses={200: ModelDeletedSerializer, **_NOT_FOUND, **error_responses(400)},
        description="Archive a fine-tuned model (base models cannot be deleted).",
    )
    def delete(self, request: Request, model_id: str) -> Response:
        _, job = self.card(model_id)
        if job is None:
            raise ApiError(status=400, code="invalid", message=f"'{model_id}' is a base model; it stays.")
        fine_tuning.model_archive(job=job)
        return Response({"id": model_id, "object": "model", "deleted": True})
