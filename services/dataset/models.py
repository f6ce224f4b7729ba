"""Tables owned by the dataset service (in its own database).

A dataset's rows keep their cells verbatim, in the dataset's column order. What the column mapping makes of
them (the input, the labels per head, the problems that make a row invalid) is derived and stored beside the
cells, so that rows can be filtered by head, label and validity; a mapping change derives them again.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Value
from django.db.models.functions import Now

from arbiter.tenancy.scoping import OrgScopedModel


class Dataset(OrgScopedModel):
    name = models.CharField(max_length=200)
    columns = models.JSONField(default=list)
    # DatasetMapping.as_dict(): {"input_column", "columns": [{"name", "role", "head", "format", ...}]}
    mapping = models.JSONField(default=dict)
    # What the first upload's sample showed per column, and its first rows: the mapping preview.
    profiles = models.JSONField(default=list)
    preview = models.JSONField(default=list)
    # The first upload: file name, format, detected encoding/delimiter/header, size, sha256, blob key.
    source = models.JSONField(default=dict)
    next_row_number = models.BigIntegerField(default=1)
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"dataset {self.pk} {self.name!r}"


class DatasetJob(OrgScopedModel):
    """Background work on a dataset, with progress: an import of a file, or re-reading rows after a mapping
    change."""

    KIND_IMPORT = "import"
    KIND_REMAP = "remap"
    # Fetching the images an image column names (runs beside imports and edits; see logic/images.py).
    KIND_FETCH_IMAGES = "fetch_images"
    QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, default=KIND_IMPORT)
    state = models.CharField(max_length=20, default=QUEUED)
    # For imports: file name, format, size, sha256, blob key, reader options and what was detected.
    source = models.JSONField(default=dict)
    rows_read = models.BigIntegerField(default=0)
    rows_imported = models.BigIntegerField(default=0)
    rows_rejected = models.BigIntegerField(default=0)
    # The first rejected rows (each {"line", "end_line", "message"}) and reader notes (encoding repairs).
    rejections = models.JSONField(default=list)
    notes = models.JSONField(default=list)
    error = models.JSONField(null=True, blank=True)
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in (self.COMPLETED, self.FAILED)


class Row(OrgScopedModel):
    # Imports insert millions of rows: no index or constraint beyond what reading needs. Rows are always read
    # through their dataset, and only this service's code writes them (deferred foreign-key checks would
    # double the cost of each import's commits).
    org_id = models.BigIntegerField(editable=False)
    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="rows", db_index=False, db_constraint=False
    )
    # The row's number in the dataset (1, 2, ...): stable, never reused, what snapshots and reports cite.
    number = models.BigIntegerField()
    # Where the row started in its source file (None for rows added through the API).
    line = models.BigIntegerField(null=True, blank=True)
    job = models.ForeignKey(
        DatasetJob,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    cells = models.JSONField(default=list)
    # Derived from the cells by the mapping: {head: {label: true}} for heads that apply to the row (the
    # object form makes "has label" a portable has-key lookup), and the problems that make it invalid.
    labels = models.JSONField(default=dict)
    # Who last set each head's labels, for heads relabeled since the import ({head: "human:user:4",
    # "llm:<provider>:<model>@v2", "model:<model>.v1@v2"}); a head absent here has its labels from the import.
    # The database default too: imports COPY rows without naming this column.
    label_sources = models.JSONField(default=dict, db_default=Value({}, output_field=models.JSONField()))
    problems = models.JSONField(default=list)
    is_valid = models.BooleanField(default=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="dataset_row_number_once")]
        indexes = [models.Index(fields=["dataset", "is_valid", "number"], name="dataset_row_validity")]

    def __str__(self) -> str:
        return f"row {self.number} of dataset {self.dataset_id}"


class RowImage(OrgScopedModel):
    """The image a row's image cell names, as fetched: stored content-addressed in the blob store
    (`arbiter.images.image_blob_key(sha256)`), or why it could not be. Keyed by the cell's value (`url`): an
    edited cell is fetched again; the same picture in many rows is stored once."""

    PENDING, FETCHED, FAILED = "pending", "fetched", "failed"

    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    row_number = models.BigIntegerField()
    column = models.CharField(max_length=200)
    url = models.TextField()
    state = models.CharField(max_length=20, default=PENDING)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    mime = models.CharField(max_length=40, blank=True, default="")
    width = models.IntegerField(null=True, blank=True)
    height = models.IntegerField(null=True, blank=True)
    # ImageError's code and message (arbiter.images.ERROR_CODES).
    error_code = models.CharField(max_length=40, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    attempts = models.IntegerField(default=0)
    fetched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["row_number", "column"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "row_number", "column"], name="dataset_row_image_once")
        ]
        indexes = [
            models.Index(fields=["dataset", "state"], name="dataset_row_image_state"),
            models.Index(fields=["sha256"], name="dataset_row_image_sha"),
        ]

    def __str__(self) -> str:
        return f"image of row {self.row_number} ({self.column}): {self.state}"


class DatasetChange(OrgScopedModel):
    """The change history: who did what to a dataset, and when. Snapshots are files, so no change reaches
    them."""

    ADD, EDIT, RELABEL, DELETE, IMPORT, MAPPING, RENAME = (
        "add",
        "edit",
        "relabel",
        "delete",
        "import",
        "mapping",
        "rename",
    )

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="changes")
    action = models.CharField(max_length=20)
    row_number = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=64)
    at = models.DateTimeField(db_default=Now())
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["dataset", "row_number"], name="dataset_change_row")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor}"


class Snapshot(OrgScopedModel):
    """An immutable, validated copy of a dataset's valid rows: a content-addressed JSONL blob, and its
    report."""

    TEXT = "text_classification"
    IMAGE = "image_classification"
    TYPES = (TEXT, IMAGE)

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="snapshots")
    name = models.CharField(max_length=200, blank=True, default="")
    type = models.CharField(max_length=40)
    input_column = models.CharField(max_length=200)
    label_columns = models.JSONField(default=list)
    heads = models.JSONField(default=list)
    rows = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    blob = models.CharField(max_length=500)
    size = models.BigIntegerField(default=0)
    split = models.JSONField(null=True, blank=True)
    report = models.JSONField(default=dict)
    # Every invalid row with its reasons; kept apart from `report` so listings need not load it.
    invalid_rows = models.JSONField(default=list)
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"snapshot {self.pk} of dataset {self.dataset_id}"

    @property
    def manifest(self) -> dict[str, Any]:
        return {
            "heads": self.heads,
            "type": self.type,
            "input_column": self.input_column,
            "rows": self.rows,
            "sha256": self.sha256,
            "blob": self.blob,
        }


class File(OrgScopedModel):
    """A file uploaded through the OpenAI- and Mistral-compatible files API (`/v1/files`).

    A training file (purpose `fine-tune`) is a JSONL of `{"text", "labels": {<head>: [..]}}` that becomes a
    dataset and its snapshot at once: the file is immutable, so it is one snapshot forever. Batch input and
    output files are kept as they are, in the blob store.
    """

    FINE_TUNE, BATCH, BATCH_OUTPUT = "fine-tune", "batch", "batch_output"

    public_id = models.CharField(max_length=64, unique=True)
    filename = models.CharField(max_length=300)
    purpose = models.CharField(max_length=40)
    bytes = models.BigIntegerField()
    num_lines = models.BigIntegerField(null=True, blank=True)
    blob = models.CharField(max_length=500)
    # "upload" for a caller's file; "mistral" for one Arbiter wrote (a batch's output), as Mistral names it.
    source = models.CharField(max_length=20, default="upload")
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    snapshot = models.ForeignKey(Snapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"file {self.public_id} ({self.purpose})"
