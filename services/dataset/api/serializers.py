"""Request validation and response shapes of the dataset API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from services.dataset.example import EXAMPLE_NAMES
from services.dataset.importing import FILE_FORMATS, ImportOptions
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row, RowImage, Snapshot
from services.dataset.validation import shown_labels

LISTED_REJECTIONS = 20
_TIME = serializers.DateTimeField()


def _time(value: Any) -> str | None:
    """Times as the API writes them everywhere (ISO 8601), so response bodies are plain JSON."""
    return _TIME.to_representation(value) if value is not None else None


# --- requests -----------------------------------------------------------------------------------------------


class UploadOptionsSerializer(serializers.Serializer):
    """Form fields that go with an uploaded file; every one is optional (detected when left out)."""

    name = serializers.CharField(max_length=200, required=False)
    format = serializers.ChoiceField(choices=FILE_FORMATS, default="auto")
    encoding = serializers.CharField(max_length=40, required=False)
    delimiter = serializers.CharField(max_length=10, required=False, trim_whitespace=False)
    header = serializers.ChoiceField(choices=["auto", "true", "false"], default="auto")
    sheet = serializers.CharField(max_length=100, required=False)

    def options(self) -> ImportOptions:
        data = self.validated_data
        header = {"auto": None, "true": True, "false": False}[data["header"]]
        return ImportOptions(
            format=data["format"],
            encoding=data.get("encoding"),
            delimiter=data.get("delimiter"),
            header=header,
            sheet=data.get("sheet"),
        )


class DatasetFileSerializer(UploadOptionsSerializer):
    """A file to import (CSV, TSV, XLSX, JSONL or JSON, or a zip of images with one such table naming them), with
    the options that go with it (for a zip: its table's)."""

    file = serializers.FileField()


class DatasetFromJsonSerializer(serializers.Serializer):
    """`{"name", "rows": [{...}, ...], "mapping"}` or `{"example": "moderation"}`."""

    name = serializers.CharField(max_length=200, required=False)
    rows = serializers.ListField(child=serializers.JSONField(), required=False, allow_empty=False)
    mapping = serializers.JSONField(required=False)
    example = serializers.ChoiceField(choices=list(EXAMPLE_NAMES), required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("rows" in attrs) == ("example" in attrs):
            raise serializers.ValidationError("send a file (multipart), JSON `rows`, or an `example` name")
        return attrs


class RowsSerializer(serializers.Serializer):
    rows = serializers.ListField(child=serializers.JSONField(), allow_empty=False)


class DatasetUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    mapping = serializers.JSONField(required=False)


class RowWriteSerializer(serializers.Serializer):
    """A new row or a change to one: the input text, cells by column name, and/or labels by head."""

    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    cells = serializers.DictField(child=serializers.JSONField(allow_null=True), required=False)
    labels = serializers.DictField(child=serializers.JSONField(allow_null=True), required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("send `text`, `cells` and/or `labels`")
        return attrs


class SnapshotCreateSerializer(serializers.Serializer):
    input_column = serializers.CharField(max_length=200, required=False)
    label_columns = serializers.ListField(child=serializers.CharField(max_length=200), required=False)
    type = serializers.ChoiceField(
        choices=Snapshot.TYPES,
        required=False,
        help_text="left out: from the input column's role (text or image)",
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    test_percent = serializers.FloatField(min_value=0.0, max_value=90.0, required=False)
    seed = serializers.IntegerField(default=0)
    max_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)


# --- responses ----------------------------------------------------------------------------------------------


def job_data(job: DatasetJob | None, *, rejections: int | None = None) -> dict[str, Any] | None:
    if job is None:
        return None
    source = job.source or {}
    return {
        "id": job.pk,
        "kind": job.kind,
        "state": job.state,
        "rows_read": job.rows_read,
        "rows_imported": job.rows_imported,
        "rows_rejected": job.rows_rejected,
        "rejections": job.rejections if rejections is None else job.rejections[:rejections],
        "notes": job.notes,
        "error": job.error,
        "file": {key: source.get(key) for key in ("file_name", "format", "size", "sha256", "detected")}
        if job.kind == DatasetJob.KIND_IMPORT
        else None,
        "created_by": job.created_by,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
    }


def dataset_state(job: DatasetJob | None, rows: int) -> str:
    if job is None:
        return "ready"
    if not job.finished:
        return "importing" if job.kind == DatasetJob.KIND_IMPORT else "updating"
    if job.state == DatasetJob.FAILED and rows == 0:
        return "failed"
    return "ready"


def heads_data(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": column["head"],
            "column": column["name"],
            "format": column["format"],
            "multi_label": column["format"] == "multi",
            "labels": column.get("labels"),
        }
        for column in mapping.get("columns", [])
        if column["role"] == "label"
    ]


def dataset_data(
    dataset: Dataset,
    *,
    counts: dict[str, int] | None = None,
    job: DatasetJob | None = None,
    detail: bool = True,
    images: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": dataset.pk,
        "name": dataset.name,
        "columns": dataset.columns,
        "mapping": dataset.mapping,
        "heads": heads_data(dataset.mapping),
        "source": {
            key: dataset.source.get(key) for key in ("file_name", "format", "size", "sha256", "detected")
        },
        "created_by": dataset.created_by,
        "created_at": _time(dataset.created_at),
        "updated_at": _time(dataset.updated_at),
    }
    if counts is not None:
        data |= counts
        data["state"] = dataset_state(job, counts["rows"])
    data["job"] = job_data(job, rejections=LISTED_REJECTIONS)
    if images is not None:
        data["images"] = images
    if detail:
        data["profiles"] = dataset.profiles
        data["preview"] = dataset.preview
    return data


def image_data(image: RowImage | None, *, url: str) -> dict[str, Any]:
    """An image cell's state: `pending` until the fetch job has tried its current value."""
    if image is None or image.url != url:
        return {"state": "pending", "url": url}
    data: dict[str, Any] = {"state": image.state, "url": url, "attempts": image.attempts}
    if image.state == RowImage.FETCHED:
        data |= {"sha256": image.sha256, "mime": image.mime, "width": image.width, "height": image.height}
    else:
        data["error"] = {"code": image.error_code, "message": image.error_message}
    return data


def row_data(
    row: Row,
    *,
    dataset: Dataset,
    input_column: str | None,
    heads: list[str],
    images: dict[int, dict[str, RowImage]] | None = None,
) -> dict[str, Any]:
    cells = row.cells
    named = {name: cells[i] if i < len(cells) else None for i, name in enumerate(dataset.columns)}
    image_columns = [c["name"] for c in dataset.mapping.get("columns", []) if c.get("role") == "image"]
    mine = (images or {}).get(row.number, {})
    shown: dict[str, Any] = {}
    for name in image_columns:
        value = named.get(name)
        if isinstance(value, str) and value.strip():
            shown[name] = image_data(mine.get(name), url=value.strip())
    return {
        "number": row.number,
        "line": row.line,
        "input": named.get(input_column) if input_column else None,
        "cells": named,
        "labels": shown_labels(row.labels, heads),
        "label_sources": {
            head: row.label_sources.get(head, "import") for head in heads if head in row.labels
        },
        "valid": row.is_valid,
        "problems": row.problems,
        "images": shown,
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
    }


def change_data(change: DatasetChange) -> dict[str, Any]:
    return {
        "id": change.pk,
        "action": change.action,
        "row": change.row_number,
        "actor": change.actor,
        "at": _time(change.at),
        "before": change.before,
        "after": change.after,
    }


def snapshot_data(snapshot: Snapshot, *, detail: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": snapshot.pk,
        "dataset": snapshot.dataset_id,
        "name": snapshot.name,
        "type": snapshot.type,
        "input_column": snapshot.input_column,
        "label_columns": snapshot.label_columns,
        "heads": snapshot.heads,
        "rows": snapshot.rows,
        "sha256": snapshot.sha256,
        "blob": snapshot.blob,
        "size": snapshot.size,
        "split": snapshot.split,
        "manifest": snapshot.manifest,
        "created_by": snapshot.created_by,
        "created_at": _time(snapshot.created_at),
    }
    if detail:
        data["report"] = snapshot.report
    return data


# --- response shapes, as the OpenAPI schema describes them (the functions above build the bodies) -------------


class FileInfoSerializer(serializers.Serializer):
    file_name = serializers.CharField(allow_null=True)
    format = serializers.CharField(allow_null=True, help_text="csv, tsv, xlsx, jsonl or json")
    size = serializers.IntegerField(allow_null=True, help_text="bytes")
    sha256 = serializers.CharField(allow_null=True)
    detected = serializers.JSONField(
        allow_null=True, help_text="what was detected: encoding, delimiter, header, sheet"
    )


class RejectionSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    end_line = serializers.IntegerField()
    message = serializers.CharField()


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class DatasetJobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(
        choices=[DatasetJob.KIND_IMPORT, DatasetJob.KIND_REMAP, DatasetJob.KIND_FETCH_IMAGES],
        help_text="fetch_images: rows_read images tried, rows_imported fetched, rows_rejected failed",
    )
    state = serializers.ChoiceField(
        choices=[DatasetJob.QUEUED, DatasetJob.RUNNING, DatasetJob.COMPLETED, DatasetJob.FAILED]
    )
    rows_read = serializers.IntegerField()
    rows_imported = serializers.IntegerField()
    rows_rejected = serializers.IntegerField()
    rejections = RejectionSerializer(many=True, help_text="lines that could not be read, with why")
    notes = serializers.ListField(child=serializers.CharField(), help_text="what the importer decided")
    error = JobErrorSerializer(allow_null=True)
    file = FileInfoSerializer(allow_null=True, help_text="the imported file (null for a remap)")
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class ColumnMappingSerializer(serializers.Serializer):
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=["text", "image", "json", "label", "ignore"])
    head = serializers.CharField(required=False, help_text="label columns: the head's name")
    format = serializers.CharField(required=False, help_text="label columns: single, multi, code or score")
    labels = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True)
    threshold = serializers.FloatField(required=False, help_text="score columns: the cut-off")
    separator = serializers.CharField(required=False, help_text="multi columns: between labels")


class DatasetMappingSerializer(serializers.Serializer):
    input_column = serializers.CharField(allow_null=True, required=False)
    columns = ColumnMappingSerializer(many=True, required=False)


class DatasetHeadSerializer(serializers.Serializer):
    name = serializers.CharField()
    column = serializers.CharField()
    format = serializers.CharField()
    multi_label = serializers.BooleanField()
    labels = serializers.ListField(child=serializers.CharField(), allow_null=True)


class DatasetSummarySerializer(serializers.Serializer):
    """A dataset as lists show it."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    columns = serializers.ListField(child=serializers.CharField())
    mapping = DatasetMappingSerializer()
    heads = DatasetHeadSerializer(many=True)
    # DRF takes declared fields off the class, so `source` does not shadow Field.source (mypy cannot tell).
    source = FileInfoSerializer()  # type: ignore[assignment]
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    job = DatasetJobSerializer(allow_null=True)


class TopValueSerializer(serializers.Serializer):
    value = serializers.JSONField(allow_null=True)
    count = serializers.IntegerField()


class ColumnProfileSerializer(serializers.Serializer):
    name = serializers.CharField()
    role = serializers.CharField()
    reason = serializers.CharField(allow_null=True, help_text="why this role was inferred")
    values = serializers.IntegerField()
    nulls = serializers.IntegerField()
    distinct = serializers.IntegerField()
    mean_length = serializers.FloatField()
    top_values = TopValueSerializer(many=True)


class PreviewRowSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    cells = serializers.DictField(child=serializers.JSONField(allow_null=True))


class DatasetImagesSerializer(serializers.Serializer):
    fetched = serializers.IntegerField(help_text="image cells whose image is stored")
    failed = serializers.IntegerField(help_text="image cells whose image could not be fetched (rows say why)")
    job = DatasetJobSerializer(allow_null=True, help_text="the latest image fetch job")


class DatasetSerializer(DatasetSummarySerializer):
    """A dataset with its row counts, state, column profiles and a preview of the first rows."""

    rows = serializers.IntegerField()
    valid_rows = serializers.IntegerField()
    invalid_rows = serializers.IntegerField()
    state = serializers.ChoiceField(choices=["importing", "updating", "failed", "ready"])
    profiles = ColumnProfileSerializer(many=True)
    preview = PreviewRowSerializer(many=True)
    images = DatasetImagesSerializer(required=False, help_text="only for a dataset with an image column")


class RowProblemSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="e.g. empty_input, unknown_label")
    column = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class RowImageErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="e.g. http_status, not_an_image, too_large, address")
    message = serializers.CharField()


class RowImageSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["pending", "fetched", "failed"])
    url = serializers.CharField(help_text="the cell's value: an http(s) URL or a data: URI")
    attempts = serializers.IntegerField(required=False)
    sha256 = serializers.CharField(required=False, help_text="the stored image: GET .../images/{sha256}")
    mime = serializers.CharField(required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    error = RowImageErrorSerializer(required=False)


class ImagesFetchSerializer(serializers.Serializer):
    retry_failed = serializers.BooleanField(
        default=True, help_text="fetch the images that failed again too (default); false: only new ones"
    )


class RowSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    line = serializers.IntegerField(allow_null=True, help_text="its line in the imported file")
    input = serializers.JSONField(allow_null=True, help_text="the input column's cell")
    cells = serializers.DictField(child=serializers.JSONField(allow_null=True))
    labels = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField(), allow_null=True),
        help_text="per head: its labels (null: the head does not apply)",
    )
    label_sources = serializers.DictField(
        child=serializers.CharField(),
        help_text="per labeled head: where its labels came from (import, human:user:<id>, llm:..., model:...)",
    )
    valid = serializers.BooleanField()
    problems = RowProblemSerializer(many=True)
    images = serializers.DictField(
        child=RowImageSerializer(),
        help_text="per image column with a value: fetched, failed (why) or pending",
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DatasetChangeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    row = serializers.IntegerField(allow_null=True)
    actor = serializers.CharField()
    at = serializers.DateTimeField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)


class InvalidRowSerializer(serializers.Serializer):
    row = serializers.IntegerField()
    line = serializers.IntegerField(allow_null=True)
    reasons = RowProblemSerializer(many=True)


class SnapshotHeadSerializer(serializers.Serializer):
    name = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField())
    multi_label = serializers.BooleanField()


class SnapshotSplitSerializer(serializers.Serializer):
    test_percent = serializers.FloatField()
    seed = serializers.IntegerField()
    train = serializers.IntegerField(help_text="rows")
    test = serializers.IntegerField(help_text="rows")


class SnapshotManifestSerializer(serializers.Serializer):
    """What trainers read: the heads, the input column and the content-addressed JSONL blob."""

    heads = SnapshotHeadSerializer(many=True)
    type = serializers.ChoiceField(choices=Snapshot.TYPES)
    input_column = serializers.CharField()
    rows = serializers.IntegerField()
    sha256 = serializers.CharField()
    blob = serializers.CharField()


class SnapshotSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    dataset = serializers.IntegerField()
    name = serializers.CharField(allow_blank=True)
    type = serializers.ChoiceField(choices=Snapshot.TYPES)
    input_column = serializers.CharField()
    label_columns = serializers.ListField(child=serializers.CharField())
    heads = SnapshotHeadSerializer(many=True)
    rows = serializers.IntegerField()
    sha256 = serializers.CharField()
    blob = serializers.CharField()
    size = serializers.IntegerField()
    split = SnapshotSplitSerializer(allow_null=True, help_text="the seeded train/test split, if asked for")
    manifest = SnapshotManifestSerializer()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()


class HeadReportSerializer(serializers.Serializer):
    labels = serializers.DictField(child=serializers.IntegerField(), help_text="rows per label")
    does_not_apply = serializers.IntegerField(help_text="rows the head does not apply to")
    splits = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        allow_null=True,
        help_text="per split (train, test): rows per label",
    )


class SnapshotReportSerializer(serializers.Serializer):
    """The validation report of a snapshot."""

    rows_total = serializers.IntegerField()
    valid_rows = serializers.IntegerField()
    invalid_rows = serializers.IntegerField()
    invalid_percent = serializers.FloatField()
    invalid_reasons = serializers.DictField(child=serializers.IntegerField(), help_text="rows per reason")
    invalid_rows_sample = InvalidRowSerializer(many=True)
    max_tokens = serializers.IntegerField(allow_null=True)
    heads = serializers.DictField(child=HeadReportSerializer())
    duplicates = serializers.JSONField(help_text="exact and conflicting duplicate groups, with examples")
    warnings = serializers.ListField(child=serializers.CharField())
    split = SnapshotSplitSerializer(required=False)
    imports = serializers.JSONField(required=False, help_text="the imports the rows came from")


class SnapshotDetailSerializer(SnapshotSerializer):
    report = SnapshotReportSerializer()


class LeakageSerializer(serializers.Serializer):
    exact = serializers.IntegerField()
    normalised = serializers.IntegerField()
    example_rows = serializers.ListField(child=serializers.IntegerField())


class TestSetCheckSerializer(serializers.Serializer):
    snapshot = serializers.IntegerField()
    test_snapshot = serializers.IntegerField()
    usable = serializers.BooleanField()
    problems = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(child=serializers.CharField())
    shared_heads = serializers.ListField(child=serializers.CharField())
    test_rows = serializers.IntegerField()
    leakage = LeakageSerializer(help_text="test rows that also occur in the training snapshot")
    test_counts = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
