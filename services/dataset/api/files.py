"""The files API of the OpenAI and Mistral SDKs (`client.files.create` / `client.files.upload`): `/v1/files`.

Key-scoped (the API key decides the org). Answers carry the fields both SDKs read: `{id, object: "file",
bytes, created_at, filename, purpose, status, sample_type, source, num_lines}`.
"""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.keyscoped import KeyScopedView, invalid_at
from arbiter.api.parsers import JSONParser, MultiPartParser
from arbiter.api.schema import ERROR_DESCRIPTIONS, ErrorSerializer, error_responses
from services.dataset import conf, selectors
from services.dataset.api.views import _check_size
from services.dataset.logic import files as logic
from services.dataset.models import File

_INVALID = OpenApiResponse(
    ErrorSerializer,
    description="The file or a field is invalid: `message` and `detail[].loc` name the field or the line.",
)
_NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[404])}


def file_data(file: File) -> dict[str, Any]:
    if file.purpose == File.FINE_TUNE:
        sample_type = "instruct"
    else:
        sample_type = "batch_result" if file.source == "mistral" else "batch_request"
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at.timestamp()),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "sample_type": sample_type,
        "source": file.source,
        "num_lines": file.num_lines,
        "mimetype": "application/jsonl",
        "deleted": file.deleted_at is not None,
    }


# Schemas only (built from dicts: `source` and `data` are names DRF's serializers keep for themselves).
def _file_fields() -> dict[str, serializers.Field[Any, Any, Any, Any]]:
    return {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "bytes": serializers.IntegerField(),
        "created_at": serializers.IntegerField(),
        "filename": serializers.CharField(),
        "purpose": serializers.CharField(),
        "status": serializers.CharField(),
        "sample_type": serializers.CharField(),
        "source": serializers.CharField(),
        "num_lines": serializers.IntegerField(allow_null=True),
        "mimetype": serializers.CharField(),
        "deleted": serializers.BooleanField(),
    }


FileSerializer = inline_serializer("CompatFile", _file_fields())
FileListSerializer = inline_serializer(
    "CompatFileList",
    {
        "object": serializers.CharField(),
        "data": type(FileSerializer)(many=True),
        "total": serializers.IntegerField(),
    },
)
FileUploadSerializer = inline_serializer(
    "CompatFileUpload",
    {
        "file": serializers.FileField(),
        "purpose": serializers.CharField(required=False, help_text="`fine-tune` (the default) or `batch`."),
    },
)
FileDeletedSerializer = inline_serializer(
    "CompatFileDeleted",
    {"id": serializers.CharField(), "object": serializers.CharField(), "deleted": serializers.BooleanField()},
)


class _FilesView(KeyScopedView):
    read_scope = "datasets:read"
    write_scope = "datasets:write"

    def file(self, file_id: str) -> File:
        try:
            return selectors.file_get(file_id=file_id)
        except File.DoesNotExist:
            raise ApiError(status=404, code="not_found", message=f"No file with id '{file_id}'.") from None


class FilesView(_FilesView):
    parser_classes = [MultiPartParser, JSONParser]

    @extend_schema(
        operation_id="compat_files_list",
        parameters=[OpenApiParameter("purpose", str, required=False), OpenApiParameter("page_size", int)],
        responses={200: FileListSerializer, 422: _INVALID},
        description="The org's files, newest first (`purpose` filters).",
    )
    def get(self, request: Request) -> Response:
        files = selectors.file_list(purpose=request.query_params.get("purpose") or None)
        try:
            size = min(max(int(request.query_params.get("page_size") or 100), 1), 1000)
            page = max(int(request.query_params.get("page") or 0), 0)
        except ValueError:
            raise invalid_at(["query", "page_size"], "page and page_size are integers.") from None
        chosen = files[page * size : (page + 1) * size]
        return Response(
            {"object": "list", "data": [file_data(file) for file in chosen], "total": files.count()}
        )

    @extend_schema(
        operation_id="compat_files_upload",
        request={"multipart/form-data": FileUploadSerializer},
        responses={200: FileSerializer, 422: _INVALID, **error_responses(413)},
        description="Upload a file: a training JSONL (`fine-tune`) of `{text, labels: {<head>: [..]}}` "
        "becomes a dataset and its snapshot; a `batch` file is kept for a batch.",
    )
    def post(self, request: Request) -> Response:
        _check_size(request)
        upload = request.FILES.get("file")
        if upload is None:
            raise invalid_at(["body", "file"], "this field is required: send the file as multipart `file`.")
        purpose = str(request.POST.get("purpose") or File.FINE_TUNE)
        file = logic.file_create(
            org_id=self.org_id,
            actor=f"api-key:{request.auth.pk}",  # type: ignore[union-attr]
            data=upload.read(),
            filename=upload.name or "file.jsonl",
            purpose=purpose,
        )
        return Response(file_data(file))


class FileView(_FilesView):
    @extend_schema(operation_id="compat_files_retrieve", responses={200: FileSerializer, **_NOT_FOUND})
    def get(self, request: Request, file_id: str) -> Response:
        return Response(file_data(self.file(file_id)))

    @extend_schema(operation_id="compat_files_delete", responses={200: FileDeletedSerializer, **_NOT_FOUND})
    def delete(self, request: Request, file_id: str) -> Response:
        file = self.file(file_id)
        logic.file_delete(file=file)
        return Response({"id": file.public_id, "object": "file", "deleted": True})


class FileContentView(_FilesView):
    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The body is the file's bytes whatever the SDK accepts (Mistral's asks for application/octet-stream);
        # errors are still JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="compat_files_content",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **_NOT_FOUND},
        description="The file's bytes as uploaded (or, for a batch's output, as written).",
    )
    def get(self, request: Request, file_id: str) -> FileResponse:
        file = self.file(file_id)
        return FileResponse(
            conf.blob_store().open(file.blob),
            as_attachment=True,
            filename=file.filename,
            content_type="application/octet-stream",
        )
