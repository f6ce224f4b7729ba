"""The dataset API: thin views that parse, call one logic or selector function, and render."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.db import models
from django.http import Http404, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.schema import error_responses
from arbiter.images import image_blob_key, thumbnail_blob_key
from arbiter.storage import BlobNotFoundError
from arbiter.tenancy.scoping import org_scope
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.dataset import conf, logic, selectors
from services.dataset.api import serializers as s
from services.dataset.importing import ImportFileError, ImportOptions
from services.dataset.models import Dataset, Row, Snapshot

DOWNLOAD_CHUNK = 1024 * 1024


def _found(getter: Any, **kwargs: Any) -> Any:
    """The object, or the one 404 for missing and not-yours alike."""
    try:
        return getter(**kwargs)
    except models.ObjectDoesNotExist:
        raise Http404 from None


def _file_error(exc: ImportFileError) -> ApiError:
    return ApiError(status=400, code=exc.code, message=str(exc), details=exc.as_details())


def _too_large(size: int, limit: int, *, over: bool = False) -> ApiError:
    return ApiError(
        status=413,
        code="payload_too_large",
        message=f"the upload is {'over ' if over else ''}{size:,} bytes; the limit is {limit:,} bytes",
        details={"limit": limit, "size": size},
    )


class _UploadLimit(FileUploadHandler):
    """Stops reading a file upload once it passes the limit (bodies sent without a Content-Length)."""

    def __init__(self, request: Any, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            raise _too_large(self.limit, self.limit, over=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def _check_size(request: Request) -> None:
    """Refuse an oversize body from its Content-Length before a byte of it is read, or while it is read."""
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    limit = conf.setting("ARBITER_MAX_UPLOAD_BYTES")
    if length > limit:
        raise _too_large(length, limit)
    if request.content_type.startswith("application/json") and length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        raise ApiError(
            status=413,
            code="payload_too_large",
            message=f"JSON bodies are limited to {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes; "
            "upload the rows as a JSON Lines (.jsonl) file instead",
            details={"limit": settings.DATA_UPLOAD_MAX_MEMORY_SIZE, "size": length},
        )
    request._request.upload_handlers.insert(0, _UploadLimit(request._request, limit=limit))


def _uploaded_file(request: Request) -> UploadedFile | None:
    upload: UploadedFile | None = request.FILES.get("file")
    return upload


class DatasetScopedViewSet(OrgScopedViewSet):
    def safely_get_queryset(self) -> models.QuerySet[Any]:
        return selectors.dataset_list()

    def dataset(self) -> Dataset:
        return _found(selectors.dataset_get, dataset_id=self.kwargs["dataset"])

    def render_dataset(self, dataset: Dataset, *, status_code: int = status.HTTP_200_OK) -> Response:
        job = selectors.job_latest(dataset=dataset)
        counts = selectors.dataset_row_counts(dataset=dataset)
        images = None
        if any(c.get("role") == "image" for c in dataset.mapping.get("columns", [])):
            images = {
                **selectors.image_counts(dataset=dataset),
                "job": s.job_data(selectors.image_fetch_latest(dataset=dataset)),
            }
        return Response(s.dataset_data(dataset, counts=counts, job=job, images=images), status=status_code)


class DatasetViewSet(DatasetScopedViewSet):
    @extend_schema(operation_id="datasets_list", responses=s.DatasetSummarySerializer(many=True))
    def list(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(selectors.dataset_list())
        return self.get_paginated_response([s.dataset_data(d, detail=False) for d in page or []])

    @extend_schema(
        request={
            "multipart/form-data": s.DatasetFileSerializer,
            "application/json": s.DatasetFromJsonSerializer,
        },
        responses={201: s.DatasetSerializer, 202: s.DatasetSerializer, **error_responses(409, 413)},
        description=(
            "Upload a CSV, TSV, XLSX or JSONL file (multipart field `file`, options as form fields), or a "
            "zip of images with the one such table naming them (its image column's cells are paths inside the"
            " zip, or URLs), send JSON `rows`, or create an `example` dataset. Answers 201 with the imported "
            "dataset and its inferred mapping, or 202 while a large file imports in the background (poll the "
            "dataset or its job)."
        ),
    )
    def create(self, request: Request, org: str) -> Response:
        _check_size(request)
        try:
            if request.content_type.startswith("multipart/"):
                upload = _uploaded_file(request)
                if upload is None:
                    raise ApiError(status=400, code="invalid", message="file: attach the file to upload")
                options = s.UploadOptionsSerializer(data=request.data)
                options.is_valid(raise_exception=True)
                dataset, job = logic.dataset_create_from_file(
                    org_id=self.org_id,
                    actor=self.access.actor,
                    name=options.validated_data.get("name"),
                    file=cast(BinaryIO, upload),
                    file_name=upload.name or "upload",
                    options=options.options(),
                )
            else:
                payload = s.DatasetFromJsonSerializer(data=request.data)
                payload.is_valid(raise_exception=True)
                data = payload.validated_data
                if "example" in data:
                    dataset, job = logic.dataset_create_example(
                        org_id=self.org_id,
                        actor=self.access.actor,
                        example=data["example"],
                        name=data.get("name"),
                    )
                else:
                    dataset, job = logic.dataset_create_from_rows(
                        org_id=self.org_id,
                        actor=self.access.actor,
                        name=data.get("name"),
                        rows=data["rows"],
                        mapping=data.get("mapping"),
                    )
        except ImportFileError as exc:
            raise _file_error(exc) from None
        finished = job is None or job.finished
        return self.render_dataset(
            dataset, status_code=status.HTTP_201_CREATED if finished else status.HTTP_202_ACCEPTED
        )

    @extend_schema(responses=s.DatasetSerializer)
    def retrieve(self, request: Request, org: str, dataset: int) -> Response:
        return self.render_dataset(self.dataset())

    @extend_schema(
        request=s.DatasetUpdateSerializer,
        responses={200: s.DatasetSerializer, 202: s.DatasetSerializer, **error_responses(409)},
        description=(
            "Rename the dataset or confirm/edit its column mapping (`columns`: name, role, head, format, "
            "labels, threshold, separator; `input_column`). Rows are re-read under the new mapping: at once"
            " for small datasets (200), in the background for large ones (202)."
        ),
    )
    def partial_update(self, request: Request, org: str, dataset: int) -> Response:
        payload = s.DatasetUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        instance = self.dataset()
        job = logic.dataset_update(
            dataset=instance,
            actor=self.access.actor,
            name=payload.validated_data.get("name"),
            mapping=payload.validated_data.get("mapping"),
        )
        instance.refresh_from_db()
        background = job is not None and not job.finished
        return self.render_dataset(
            instance, status_code=status.HTTP_202_ACCEPTED if background else status.HTTP_200_OK
        )

    @extend_schema(responses={204: None, **error_responses(409)})
    def destroy(self, request: Request, org: str, dataset: int) -> Response:
        logic.dataset_delete(dataset=self.dataset())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request={"multipart/form-data": s.DatasetFileSerializer, "application/json": s.RowsSerializer},
        responses={201: s.DatasetJobSerializer, 202: s.DatasetJobSerializer, **error_responses(409, 413)},
        description="Add the rows of another file (or JSON `rows`) to the dataset; columns match by name.",
    )
    def upload(self, request: Request, org: str, dataset: int) -> Response:
        _check_size(request)
        instance = self.dataset()
        try:
            if request.content_type.startswith("multipart/"):
                upload = _uploaded_file(request)
                if upload is None:
                    raise ApiError(status=400, code="invalid", message="file: attach the file to upload")
                options = s.UploadOptionsSerializer(data=request.data)
                options.is_valid(raise_exception=True)
                job = logic.dataset_upload(
                    dataset=instance,
                    actor=self.access.actor,
                    file=cast(BinaryIO, upload),
                    file_name=upload.name or "upload",
                    options=options.options(),
                )
            else:
                payload = s.RowsSerializer(data=request.data)
                payload.is_valid(raise_exception=True)
                job = logic.dataset_upload(
                    dataset=instance,
                    actor=self.access.actor,
                    file=None,
                    file_name="request body",
                    options=ImportOptions(),
                    rows=payload.validated_data["rows"],
                )
        except ImportFileError as exc:
            raise _file_error(exc) from None
        return Response(
            s.job_data(job), status=status.HTTP_201_CREATED if job.finished else status.HTTP_202_ACCEPTED
        )

    @extend_schema(operation_id="dataset_jobs_list", responses=s.DatasetJobSerializer(many=True))
    def jobs(self, request: Request, org: str, dataset: int) -> Response:
        page = self.paginate_queryset(selectors.job_list(dataset=self.dataset()))
        return self.get_paginated_response(
            [s.job_data(job, rejections=s.LISTED_REJECTIONS) for job in page or []]
        )

    @extend_schema(responses=s.DatasetJobSerializer)
    def job(self, request: Request, org: str, dataset: int, job: int) -> Response:
        return Response(s.job_data(_found(selectors.job_get, dataset=self.dataset(), job_id=job)))

    @extend_schema(
        operation_id="dataset_history_list",
        parameters=[OpenApiParameter("row", int, description="only the changes of this row")],
        responses=s.DatasetChangeSerializer(many=True),
    )
    def history(self, request: Request, org: str, dataset: int) -> Response:
        row = request.query_params.get("row")
        if row is not None and not row.isdigit():
            raise ApiError(status=400, code="invalid", message="row: a row number")
        changes = selectors.change_list(dataset=self.dataset(), row_number=int(row) if row else None)
        page = self.paginate_queryset(changes)
        return self.get_paginated_response([s.change_data(change) for change in page or []])

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def export(self, request: Request, org: str, dataset: int) -> StreamingHttpResponse:
        instance = self.dataset()
        org_id = self.org_id

        def content() -> Iterator[bytes]:
            # The body streams after the view returned (and its org scope ended): scope it again.
            with org_scope(org_id):
                # A BOM makes spreadsheet programs read the file as UTF-8.
                yield "\ufeff".encode()
                for chunk in selectors.dataset_export_csv(dataset=instance):
                    yield chunk.encode()

        response = StreamingHttpResponse(content(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="dataset-{instance.pk}.csv"'
        return response

    @extend_schema(
        operation_id="dataset_images_fetch",
        request=s.ImagesFetchSerializer,
        responses={202: s.DatasetJobSerializer, **error_responses(400)},
    )
    def images_fetch(self, request: Request, org: str, dataset: int) -> Response:
        payload = s.ImagesFetchSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        instance = self.dataset()
        job = logic.images_fetch_queue(
            dataset=instance, actor=self.access.actor, retry_failed=payload.validated_data["retry_failed"]
        )
        if job is None:
            raise ApiError(
                status=400,
                code="no_image_column",
                message="the dataset has no column with the role 'image' (PATCH its mapping)",
            )
        return Response(s.job_data(job), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="dataset_image_retrieve",
        parameters=[OpenApiParameter("thumbnail", bool, description="true: a small preview")],
        responses={(200, "image/*"): OpenApiTypes.BINARY},
    )
    def image(self, request: Request, org: str, dataset: int, sha256: str) -> HttpResponse:
        """An image a row of this dataset names, by the hash of its normalised bytes."""
        instance = self.dataset()
        found = selectors.row_image_by_hash(dataset=instance, sha256=sha256)
        if found is None:
            raise Http404
        thumbnail = request.query_params.get("thumbnail") in ("true", "1")
        store = conf.blob_store()
        key = thumbnail_blob_key(sha256) if thumbnail else image_blob_key(sha256)
        try:
            with store.open(key) as stream:
                body = stream.read()
        except BlobNotFoundError:
            raise Http404 from None
        mime = ("image/png" if body.startswith(b"\x89PNG") else "image/jpeg") if thumbnail else found.mime
        response = HttpResponse(body, content_type=mime)
        # Content-addressed: the bytes under this URL never change.
        response["Cache-Control"] = "private, max-age=31536000, immutable"
        response["X-Content-Type-Options"] = "nosniff"
        return response


class RowViewSet(DatasetScopedViewSet):
    def _context(self, dataset: Dataset) -> tuple[str | None, list[str]]:
        mapping = dataset.mapping
        heads = [c["head"] for c in mapping.get("columns", []) if c["role"] == "label"]
        return mapping.get("input_column"), heads

    def _render(self, row: Row, dataset: Dataset, *, status_code: int = status.HTTP_200_OK) -> Response:
        input_column, heads = self._context(dataset)
        images = logic.row_images(dataset=dataset, numbers=[row.number])
        return Response(
            s.row_data(row, dataset=dataset, input_column=input_column, heads=heads, images=images),
            status=status_code,
        )

    @extend_schema(
        operation_id="dataset_rows_list",
        parameters=[
            OpenApiParameter("q", str, description="text to search for in the input column"),
            OpenApiParameter("head", str, description="only rows this head applies to"),
            OpenApiParameter("label", str, description="with `head`: only rows with this label"),
            OpenApiParameter(
                "source",
                str,
                description="with `head`: only rows whose labels came from `import`, or from a source starting "
                "with this (`human`, `human:user:4`, `llm`, `model`, `model:toxicity.v2`)",
            ),
            OpenApiParameter("invalid", bool, description="true: only invalid rows; false: only valid rows"),
        ],
        responses=s.RowSerializer(many=True),
    )
    def list(self, request: Request, org: str, dataset: int) -> Response:
        instance = self.dataset()
        params = request.query_params
        invalid = params.get("invalid")
        if invalid not in (None, "", "true", "false", "1", "0"):
            raise ApiError(status=400, code="invalid", message="invalid: true or false")
        source = params.get("source") or None
        if source and not params.get("head"):
            raise ApiError(
                status=400, code="invalid", message="source: name the head too (?head=...&source=...)"
            )
        input_column, heads = self._context(instance)
        rows = selectors.rows_filtered(
            dataset=instance,
            input_column=input_column,
            q=params.get("q") or None,
            head=params.get("head") or None,
            label=params.get("label") or None,
            invalid=None if invalid in (None, "") else invalid in ("true", "1"),
            source=source,
        )
        page = self.paginate_queryset(rows) or []
        images = logic.row_images(dataset=instance, numbers=[row.number for row in page])
        return self.get_paginated_response(
            [
                s.row_data(row, dataset=instance, input_column=input_column, heads=heads, images=images)
                for row in page
            ]
        )

    @extend_schema(request=s.RowWriteSerializer, responses={201: s.RowSerializer, **error_responses(409)})
    def create(self, request: Request, org: str, dataset: int) -> Response:
        payload = s.RowWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        instance = self.dataset()
        row = logic.row_create(dataset=instance, actor=self.access.actor, **payload.validated_data)
        return self._render(row, instance, status_code=status.HTTP_201_CREATED)

    @extend_schema(responses=s.RowSerializer)
    def retrieve(self, request: Request, org: str, dataset: int, row: int) -> Response:
        instance = self.dataset()
        return self._render(_found(selectors.row_get, dataset=instance, number=row), instance)

    @extend_schema(request=s.RowWriteSerializer, responses={200: s.RowSerializer, **error_responses(409)})
    def partial_update(self, request: Request, org: str, dataset: int, row: int) -> Response:
        payload = s.RowWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        instance = self.dataset()
        found = _found(selectors.row_get, dataset=instance, number=row)
        return self._render(
            logic.row_update(row=found, actor=self.access.actor, **payload.validated_data), instance
        )

    @extend_schema(responses={204: None, **error_responses(409)})
    def destroy(self, request: Request, org: str, dataset: int, row: int) -> Response:
        logic.row_delete(
            row=_found(selectors.row_get, dataset=self.dataset(), number=row), actor=self.access.actor
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class SnapshotViewSet(DatasetScopedViewSet):
    def snapshot(self) -> Snapshot:
        return _found(selectors.snapshot_get, snapshot_id=self.kwargs["snapshot"])

    def _listing(self, dataset_id: int | str | None) -> Response:
        page = self.paginate_queryset(selectors.snapshot_list(dataset_id=dataset_id))
        return self.get_paginated_response([s.snapshot_data(snapshot) for snapshot in page or []])

    @extend_schema(
        operation_id="snapshots_list",
        parameters=[OpenApiParameter("dataset", int, description="only this dataset's snapshots")],
        responses=s.SnapshotSerializer(many=True),
    )
    def list(self, request: Request, org: str) -> Response:
        dataset_id = request.query_params.get("dataset")
        if dataset_id is not None and not dataset_id.isdigit():
            raise ApiError(status=400, code="invalid", message="dataset: a dataset id")
        return self._listing(dataset_id)

    @extend_schema(operation_id="dataset_snapshots_list", responses=s.SnapshotSerializer(many=True))
    def dataset_list(self, request: Request, org: str, dataset: int) -> Response:
        return self._listing(self.dataset().pk)

    @extend_schema(
        request=s.SnapshotCreateSerializer,
        responses={201: s.SnapshotDetailSerializer, **error_responses(409)},
        description="Freeze the dataset's valid rows into an immutable snapshot with its validation report. "
        "`input_column` and `label_columns` default to the mapping's; `test_percent` and `seed` add a "
        "seeded stratified train/test split.",
    )
    def create(self, request: Request, org: str, dataset: int) -> Response:
        payload = s.SnapshotCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        snapshot = logic.snapshot_create(
            dataset=self.dataset(),
            actor=self.access.actor,
            input_column=data.get("input_column"),
            label_columns=data.get("label_columns"),
            type=data.get("type"),
            name=data["name"],
            test_percent=data.get("test_percent"),
            seed=data["seed"],
            max_tokens=data.get("max_tokens"),
        )
        return Response(s.snapshot_data(snapshot, detail=True), status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.SnapshotDetailSerializer)
    def retrieve(self, request: Request, org: str, snapshot: int) -> Response:
        return Response(s.snapshot_data(self.snapshot(), detail=True))

    @extend_schema(operation_id="snapshot_invalid_rows_list", responses=s.InvalidRowSerializer(many=True))
    def invalid_rows(self, request: Request, org: str, snapshot: int) -> Response:
        page = self.paginate_queryset(self.snapshot().invalid_rows)  # type: ignore[arg-type]
        return self.get_paginated_response(page or [])

    @extend_schema(
        parameters=[
            OpenApiParameter("test_snapshot", int, required=True, description="the candidate test set")
        ],
        responses=s.TestSetCheckSerializer,
    )
    def test_check(self, request: Request, org: str, snapshot: int) -> Response:
        test_id = request.query_params.get("test_snapshot", "")
        if not test_id.isdigit():
            raise ApiError(
                status=400, code="invalid", message="test_snapshot: the id of the snapshot to check"
            )
        train = self.snapshot()
        test = _found(selectors.snapshot_get, snapshot_id=test_id)
        return Response(
            {
                "snapshot": train.pk,
                "test_snapshot": test.pk,
                **logic.snapshot_test_set_check(snapshot=train, test=test),
            }
        )

    @extend_schema(responses={(200, "application/jsonl"): OpenApiTypes.STR})
    def download(self, request: Request, org: str, snapshot: int) -> StreamingHttpResponse:
        instance = self.snapshot()

        def content() -> Iterator[bytes]:
            with conf.blob_store().open(instance.blob) as stream:
                while chunk := stream.read(DOWNLOAD_CHUNK):
                    yield chunk

        response = StreamingHttpResponse(content(), content_type="application/jsonl")
        response["Content-Disposition"] = f'attachment; filename="snapshot-{instance.pk}.jsonl"'
        return response
