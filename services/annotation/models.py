"""Tables owned by the annotation service (in its own database).

Rows belong to the dataset service. What annotation labels is its own copy of them (`DatasetCopy`, `RowCopy`:
each row's number, text and labels), kept up to date by `dataset.rows_changed` events; what it decides goes
back as `labels.accepted` events, which the dataset service applies. Datasets are referred to by id.
"""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

from arbiter.entitlements import EntitlementRecord
from arbiter.tenancy.scoping import OrgScopedModel


class LlmProvider(OrgScopedModel):
    """An OpenAI-compatible endpoint of the org. The API key is stored encrypted (`arbiter.secrets`) and
    never returned: only its last four characters are shown."""

    name = models.CharField(max_length=100)
    base_url = models.CharField(max_length=500)
    model = models.CharField(max_length=200)
    api_key_encrypted = models.TextField(blank=True, default="")
    api_key_hint = models.CharField(max_length=8, blank=True, default="")
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["org_id", "name"], name="annotation_provider_name_once")
        ]

    def __str__(self) -> str:
        return f"LLM provider {self.name!r}"


class LabelSchema(OrgScopedModel):
    """The labels of one head of a dataset, each with a description; editing makes a new version."""

    dataset_id = models.BigIntegerField()
    head = models.CharField(max_length=200)
    version = models.IntegerField()
    multi_label = models.BooleanField(default=False)
    # [{"name", "code" (int or null), "description"}]
    labels = models.JSONField(default=list)
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["dataset_id", "head", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["org_id", "dataset_id", "head", "version"], name="annotation_schema_version_once"
            )
        ]

    def __str__(self) -> str:
        return f"label schema {self.head!r} v{self.version} of dataset {self.dataset_id}"

    @property
    def label_names(self) -> list[str]:
        return [label["name"] for label in self.labels]


class Entitlement(EntitlementRecord):
    """An org's plan, allowances and usage as billing last announced them (`entitlements.changed`)."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org_id"], name="annotation_entitlement_once")]


class DeploymentCopy(OrgScopedModel):
    """A deployment of one of the org's trained model versions, as the inference service announces it
    (`deployment.live`, `.stopped`, `.failed`): what a `model` labeler may name."""

    deployment_id = models.BigIntegerField()
    name = models.CharField(max_length=100, blank=True, default="")
    model_id = models.BigIntegerField()
    version = models.IntegerField()
    live = models.BooleanField(default=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-deployment_id"]
        constraints = [
            models.UniqueConstraint(fields=["org_id", "deployment_id"], name="annotation_deployment_once")
        ]

    def __str__(self) -> str:
        return f"deployment {self.name or self.deployment_id} (model {self.model_id} v{self.version})"


class DatasetCopy(OrgScopedModel):
    """What annotation knows of a dataset, from the dataset service's events."""

    dataset_id = models.BigIntegerField()
    name = models.CharField(max_length=200)
    input_column = models.CharField(max_length=200, blank=True, default="")
    # [{"name", "labels"}] as the dataset maps its label columns.
    heads = models.JSONField(default=list)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-dataset_id"]
        constraints = [
            models.UniqueConstraint(fields=["org_id", "dataset_id"], name="annotation_dataset_once")
        ]

    def __str__(self) -> str:
        return f"copy of dataset {self.dataset_id}"


class RowCopy(OrgScopedModel):
    dataset_id = models.BigIntegerField()
    number = models.BigIntegerField()
    # None: the row has no text to label (an image row), which differs from an empty text.
    text = models.TextField(null=True, blank=True)  # noqa: DJ001
    # {head: [labels]} as the dataset has them (people's labels, or accepted suggestions).
    labels = models.JSONField(default=dict)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["org_id", "dataset_id", "number"], name="annotation_row_once")
        ]

    def __str__(self) -> str:
        return f"row {self.number} of dataset {self.dataset_id}"


class AnnotationJob(OrgScopedModel):
    QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
    FINISHED = (COMPLETED, FAILED, CANCELLED)
    SIMILARITY, OPENAI, MODEL = "similarity", "openai", "model"
    # Rows another service asked people to look at again (`review.requested`), with its suggestions.
    REVIEW = "review"

    dataset_id = models.BigIntegerField()
    head = models.CharField(max_length=200)
    schema = models.ForeignKey(LabelSchema, on_delete=models.PROTECT, related_name="jobs")
    provider_kind = models.CharField(max_length=20)
    provider = models.ForeignKey(
        LlmProvider, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The `model` labeler: the deployment (of the inference service) that classifies the rows.
    deployment_id = models.BigIntegerField(null=True, blank=True)
    # provider:model@v<schema version>: what every suggestion of the job names as its author.
    agent = models.CharField(max_length=64)
    # "unlabeled" | "all" | "labeled" | {"sample": N, "seed": S} | {"filter": {"q": "..."}}
    rows_spec = models.JSONField(default=dict)
    row_numbers = models.JSONField(default=list)
    state = models.CharField(max_length=20, default=QUEUED)
    total = models.IntegerField(default=0)
    done = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    # The system prompt the provider was given (LLM providers), shown in the console and API.
    prompt = models.TextField(blank=True, default="")
    # Agreement with the human labels of the rows that had them: accuracy, per label P/R/F1, confusion.
    agreement = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)
    # Moved on by the process running the job; a running job whose heartbeat stops is recovered by the sweep.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"annotation job {self.pk} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in self.FINISHED


class Suggestion(OrgScopedModel):
    """A labeler's answer for one row of a job, or why it has none. Accepting is an explicit act."""

    PENDING, ACCEPTED, REJECTED, FAILED = "pending", "accepted", "rejected", "failed"

    job = models.ForeignKey(AnnotationJob, on_delete=models.CASCADE, related_name="suggestions")
    dataset_id = models.BigIntegerField()
    head = models.CharField(max_length=200)
    row_number = models.BigIntegerField()
    labels = models.JSONField(default=list)
    score = models.FloatField(null=True, blank=True)
    scores = models.JSONField(default=dict)
    agent = models.CharField(max_length=64)
    state = models.CharField(max_length=20, default=PENDING)
    # A failed row: why (a stable code and a message), and what the model answered, kept as it was.
    reason = models.CharField(max_length=40, blank=True, default="")
    message = models.TextField(blank=True, default="")
    raw = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["row_number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "row_number"], name="annotation_suggestion_once")
        ]
        indexes = [
            models.Index(fields=["dataset_id", "head", "row_number"], name="annotation_suggestion_row")
        ]

    def __str__(self) -> str:
        return f"suggestion for row {self.row_number} ({self.state})"


class ReviewSetting(OrgScopedModel):
    """How a head of a dataset is reviewed: `overlap` different people label each row before it is done (1:
    the first person's labels are accepted at once)."""

    dataset_id = models.BigIntegerField()
    head = models.CharField(max_length=200)
    overlap = models.PositiveSmallIntegerField(default=1)
    updated_by = models.CharField(max_length=64)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org_id", "dataset_id", "head"], name="annotation_review_once")
        ]

    def __str__(self) -> str:
        return f"review of {self.head!r} of dataset {self.dataset_id} (overlap {self.overlap})"


class Annotation(OrgScopedModel):
    """One person's labels for one row of a head. The review API answers a person only their own; the row's
    labels become the dataset's when `overlap` people agree (see `logic.review_save`)."""

    dataset_id = models.BigIntegerField()
    head = models.CharField(max_length=200)
    row_number = models.BigIntegerField()
    # Who: the `labels.accepted` source of a person (human:user:<id>), or of an API key's actor.
    annotator = models.CharField(max_length=64)
    labels = models.JSONField(default=list)
    # The row's text as this person edited it (None: unchanged); sent with the labels the row is accepted with.
    text = models.TextField(null=True, blank=True)  # noqa: DJ001
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["row_number", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["org_id", "dataset_id", "head", "row_number", "annotator"],
                name="annotation_annotation_once",
            )
        ]
        indexes = [models.Index(fields=["dataset_id", "head", "row_number"], name="annotation_annot_row")]

    def __str__(self) -> str:
        return f"{self.annotator}'s labels for row {self.row_number} of {self.head!r}"
