"""Request validation and response shapes of the dataset API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from services.dataset.example import EXAMPLE_NAMES
from services.dataset.importing import FILE_FORMATS, ImportOptions
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row, Snapshot
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
    type = serializers.ChoiceField(choices=Snapshot.TYPES, default=Snapshot.TEXT)
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
    if detail:
        data["profiles"] = dataset.profiles
        data["preview"] = dataset.preview
    return data


def row_data(row: Row, *, dataset: Dataset, input_column: str | None, heads: list[str]) -> dict[str, Any]:
    cells = row.cells
    named = {name: cells[i] if i < len(cells) else None for i, name in enumerate(dataset.columns)}
    return {
        "number": row.number,
        "line": row.line,
        "input": named.get(input_column) if input_column else None,
        "cells": named,
        "labels": shown_labels(row.labels, heads),
        "valid": row.is_valid,
        "problems": row.problems,
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
