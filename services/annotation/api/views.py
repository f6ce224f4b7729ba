"""The annotation API: LLM providers, label schemas, auto-labeling jobs (suggestions, accepting them, comparing
two jobs), the review queue and agreement per head. Views parse, call one function, and render."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.schema import error_responses
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.annotation import logic, selectors
from services.annotation.api import serializers as s
from services.annotation.models import AnnotationJob, DatasetCopy, RowCopy, Suggestion


def _id(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Http404 from None
    if number < 1:
        raise Http404
    return number


def _head(request: Request) -> str:
    head = request.query_params.get("head", "").strip()
    if not head:
        raise ApiError(
            status=400,
            code="invalid",
            message="head: name the head (?head=...)",
            details={"head": ["required"]},
        )
    return head


HEAD = OpenApiParameter("head", str, required=True, description="The head (label column) to review")


class ProviderViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """OpenAI-compatible endpoints of the org (OpenAI, Mistral, vLLM, Ollama, ...). Changing them needs `admin`."""

    write_scope = "admin"
    serializer_class = s.ProviderSerializer
    pagination_class = None
    idempotency_redact = ("api_key",)

    def safely_get_queryset(self) -> Any:
        return selectors.provider_list()

    @extend_schema(
        request=s.ProviderCreateSerializer, responses={201: s.ProviderSerializer, **error_responses(409)}
    )
    def create(self, request: Request, org: str) -> Response:
        payload = s.ProviderCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        provider = logic.provider_create(
            org_id=self.org_id, actor=self.access.actor, **payload.validated_data
        )
        return Response(s.ProviderSerializer(provider).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.ProviderUpdateSerializer, responses={200: s.ProviderSerializer, **error_responses(409)}
    )
    def partial_update(self, request: Request, org: str, pk: str) -> Response:
        payload = s.ProviderUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        provider = logic.provider_update(provider=self.get_object(), **payload.validated_data)
        return Response(s.ProviderSerializer(provider).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, org: str, pk: str) -> Response:
        logic.provider_delete(provider=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class LabelSchemaViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = s.LabelSchemaSerializer

    def safely_get_queryset(self) -> Any:
        dataset = self.request.query_params.get("dataset")
        head = self.request.query_params.get("head")
        return selectors.label_schema_list(dataset_id=_id(dataset) if dataset else None, head=head or None)

    @extend_schema(
        parameters=[
            OpenApiParameter("dataset", int, required=False, description="Only this dataset's schemas"),
            OpenApiParameter("head", str, required=False, description="Only this head's versions"),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.LabelSchemaCreateSerializer, responses={201: s.LabelSchemaSerializer})
    def create(self, request: Request, org: str) -> Response:
        payload = s.LabelSchemaCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        schema = logic.label_schema_create(
            org_id=self.org_id,
            actor=self.access.actor,
            dataset_id=data["dataset"],
            head=data["head"],
            labels=data["labels"],
            multi_label=data["multi_label"],
        )
        return Response(s.LabelSchemaSerializer(schema).data, status=status.HTTP_201_CREATED)


class JobViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = s.AnnotationJobSerializer

    def safely_get_queryset(self) -> Any:
        dataset = self.request.query_params.get("dataset")
        return selectors.job_list(dataset_id=_id(dataset) if dataset else None)

    @extend_schema(
        parameters=[OpenApiParameter("dataset", int, required=False, description="Only this dataset's jobs")]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=s.AnnotationJobCreateSerializer,
        responses={201: s.AnnotationJobSerializer, **error_responses(402, 429)},
    )
    def create(self, request: Request, org: str) -> Response:
        payload = s.AnnotationJobCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        job = logic.job_create(
            org_id=self.org_id,
            actor=self.access.actor,
            dataset_id=data["dataset"],
            head=data["head"],
            provider=data.get("provider", "similarity"),
            rows=data.get("rows", "unlabeled"),
            schema_version=data.get("schema_version"),
            few_shot=data["few_shot"],
        )
        return Response(s.AnnotationJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.EstimateRequestSerializer, responses=s.EstimateSerializer)
    def estimate(self, request: Request, org: str) -> Response:
        """What a job would use before it starts: rows, LLM calls, and the month's automated annotations left."""
        payload = s.EstimateRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        body = selectors.job_estimate(
            org_id=self.org_id,
            dataset_id=data["dataset"],
            head=data["head"],
            provider=data.get("provider", "similarity"),
            rows=data.get("rows", "unlabeled"),
        )
        return Response(s.EstimateSerializer(body).data)

    @extend_schema(request=None, responses={200: s.AnnotationJobSerializer, **error_responses(409)})
    def cancel(self, request: Request, org: str, pk: str) -> Response:
        return Response(s.AnnotationJobSerializer(logic.job_cancel(job=self.get_object())).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "state",
                str,
                required=False,
                enum=[Suggestion.PENDING, Suggestion.ACCEPTED, Suggestion.REJECTED, Suggestion.FAILED],
                description="Only suggestions in this state",
            )
        ],
        responses=s.SuggestionSerializer(many=True),
    )
    def suggestions(self, request: Request, org: str, pk: str) -> Response:
        job: AnnotationJob = self.get_object()
        wanted = request.query_params.get("state") or None
        if wanted not in (
            None,
            Suggestion.PENDING,
            Suggestion.ACCEPTED,
            Suggestion.REJECTED,
            Suggestion.FAILED,
        ):
            raise ApiError(status=400, code="invalid", message="state: pending, accepted, rejected or failed")
        page = self.paginate_queryset(selectors.job_suggestions(job=job, state=wanted))
        return self.get_paginated_response(s.SuggestionSerializer(page, many=True).data)

    @extend_schema(request=s.AcceptSerializer, responses=s.AcceptedSerializer)
    def accept(self, request: Request, org: str, pk: str) -> Response:
        payload = s.AcceptSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = logic.suggestions_accept(
            job=self.get_object(),
            actor=self.access.actor,
            min_score=payload.validated_data.get("min_score"),
            rows=payload.validated_data.get("rows"),
        )
        return Response(s.AcceptedSerializer(result).data)

    @extend_schema(
        parameters=[OpenApiParameter("with", int, required=True, description="The other job")],
        responses=s.FlipSerializer(many=True),
    )
    def compare(self, request: Request, org: str, pk: str) -> Response:
        job: AnnotationJob = self.get_object()
        other = selectors.job_list().filter(pk=_id(request.query_params.get("with"))).first()
        if other is None:
            raise Http404
        return Response(s.FlipSerializer(selectors.jobs_compare(job=job, other=other), many=True).data)


def _review_job(value: str | None, *, dataset_id: int, head: str) -> AnnotationJob | None:
    """The job whose rows a review walks (`?job=`): one of this dataset's head, else a 400 saying so."""
    if not value:
        return None
    job = selectors.review_job(value, dataset_id=dataset_id, head=head)
    if job is None:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"job: no labeling job {value} of this dataset's head {head!r}",
        )
    return job


class ReviewViewSet(OrgScopedViewSet):
    """The review queue of a dataset's head: the next row with a suggestion, a person's labels (a vote when the
    head's `overlap` asks several people per row), the overlap, and agreement per head."""

    def safely_get_queryset(self) -> Any:
        return DatasetCopy.objects.all()

    def _dataset(self, dataset_id: str) -> DatasetCopy:
        dataset = selectors.dataset_copy(dataset_id=_id(dataset_id))
        if dataset is None:
            raise Http404
        return dataset

    @extend_schema(
        parameters=[
            HEAD,
            OpenApiParameter("after", int, required=False, description="Skip rows up to this number"),
            OpenApiParameter(
                "job",
                int,
                required=False,
                description="Only the rows of this job's pending suggestions, labeled or not (rows sent for "
                "review, such as a policy's disagreements)",
            ),
        ],
        responses=s.ReviewNextSerializer,
    )
    def next(self, request: Request, org: str, dataset_id: str) -> Response:
        dataset = self._dataset(dataset_id)
        head = _head(request)
        try:
            after = int(request.query_params.get("after") or 0)
        except ValueError:
            raise ApiError(status=400, code="invalid", message="after: a row number") from None
        item = selectors.review_next(
            dataset_id=dataset.dataset_id,
            head=head,
            after=after,
            annotator=self._annotator(),
            job=_review_job(request.query_params.get("job"), dataset_id=dataset.dataset_id, head=head),
        )
        if item is None:
            labeled = RowCopy.objects.filter(dataset_id=dataset.dataset_id, labels__has_key=head).count()
            total = RowCopy.objects.filter(dataset_id=dataset.dataset_id).count()
            empty: dict[str, Any] = {
                "row": None,
                "suggestion": None,
                "progress": {"labeled": labeled, "total": total},
                "review": None,
            }
            return Response(s.ReviewNextSerializer(empty).data)
        suggestion: dict[str, Any] | None = None
        if item.suggestion is not None:
            found = item.suggestion
            suggestion = {
                "labels": found.labels,
                "score": found.score,
                "scores": found.scores,
                "agent": found.agent,
                "reason": found.message,
            }
        else:
            schema = selectors.label_schema_current(dataset_id=dataset.dataset_id, head=head)
            if schema is not None and item.row.text:
                suggestion = selectors.similarity_suggest(schema=schema, text=item.row.text)
        if suggestion is not None:
            suggestion["label"] = suggestion["labels"][0] if suggestion["labels"] else None
        body = {
            "row": item.row,
            "suggestion": suggestion,
            "progress": {"labeled": item.labeled, "total": item.total},
            "review": {
                "overlap": item.overlap,
                "annotators": item.annotators,
                "disputed": item.disputed,
                "mine": item.mine,
            },
        }
        return Response(s.ReviewNextSerializer(body).data)

    def _annotator(self) -> str:
        """Who labels: the person signed in, or the API key's actor (the `labels.accepted` source)."""
        if self.access.user_id is not None:
            return f"human:user:{self.access.user_id}"
        return f"human:{self.access.actor}"[:64]

    @extend_schema(parameters=[HEAD], responses=s.ReviewSettingSerializer)
    def setting(self, request: Request, org: str, dataset_id: str) -> Response:
        """How many different people label each row of the head before it is done."""
        dataset = self._dataset(dataset_id)
        head = _head(request)
        overlap = selectors.review_overlap(dataset_id=dataset.dataset_id, head=head)
        return Response(s.ReviewSettingSerializer({"head": head, "overlap": overlap}).data)

    @extend_schema(request=s.ReviewSettingSerializer, responses=s.ReviewSettingSerializer)
    def set_overlap(self, request: Request, org: str, dataset_id: str) -> Response:
        """Set the overlap: rows that many people labeled already are decided at once."""
        dataset = self._dataset(dataset_id)
        payload = s.ReviewSettingSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        head = payload.validated_data["head"]
        overlap = logic.review_overlap_set(
            org_id=self.org_id,
            actor=self.access.actor,
            dataset_id=dataset.dataset_id,
            head=head,
            overlap=payload.validated_data["overlap"],
        )
        return Response(s.ReviewSettingSerializer({"head": head, "overlap": overlap}).data)

    @extend_schema(request=s.ReviewSaveSerializer, responses=s.ReviewSavedSerializer)
    def save(self, request: Request, org: str, dataset_id: str, row: str) -> Response:
        """A person's labels for a row: accepted at once, or kept as their vote until `overlap` people voted."""
        dataset = self._dataset(dataset_id)
        payload = s.ReviewSaveSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        saved = logic.review_save(
            org_id=self.org_id,
            actor=self.access.actor,
            user_source=self._annotator(),
            dataset_id=dataset.dataset_id,
            row_number=_id(row),
            head=payload.validated_data["head"],
            labels=payload.validated_data["labels"],
            text=payload.validated_data.get("text"),
        )
        return Response(s.ReviewSavedSerializer(saved).data)

    @extend_schema(parameters=[HEAD], responses=s.AgreementSerializer)
    def agreement(self, request: Request, org: str, dataset_id: str) -> Response:
        dataset = self._dataset(dataset_id)
        body = selectors.head_agreement(dataset_id=dataset.dataset_id, head=_head(request))
        return Response(s.AgreementSerializer(body).data)
