"""What the annotation API takes and answers. An LLM provider's API key is write-only: only its last four
characters come back."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from arbiter.api.fields import IdField
from services.annotation.models import AnnotationJob, LabelSchema, LlmProvider, RowCopy, Suggestion


class ProviderSerializer(serializers.ModelSerializer[LlmProvider]):
    has_api_key = serializers.SerializerMethodField()

    class Meta:
        model = LlmProvider
        fields = [
            "id",
            "name",
            "base_url",
            "model",
            "has_api_key",
            "api_key_hint",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_has_api_key(self, provider: LlmProvider) -> bool:
        return bool(provider.api_key_encrypted)


class ProviderCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    base_url = serializers.CharField(
        max_length=500, help_text="The OpenAI-compatible API's base, e.g. https://api.openai.com/v1"
    )
    model = serializers.CharField(max_length=200)
    api_key = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        write_only=True,
        trim_whitespace=True,
        help_text="Stored encrypted; never returned.",
    )


class ProviderUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    base_url = serializers.CharField(max_length=500, required=False)
    model = serializers.CharField(max_length=200, required=False)
    api_key = serializers.CharField(max_length=500, required=False, allow_blank=True, write_only=True)


class LabelSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    code = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=2**31 - 1,
        help_text="The number an upload may use for it",
    )
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class LabelSchemaSerializer(serializers.ModelSerializer[LabelSchema]):
    dataset = serializers.IntegerField(source="dataset_id", read_only=True)
    labels = LabelSerializer(many=True, read_only=True)

    class Meta:
        model = LabelSchema
        fields = ["id", "dataset", "head", "version", "multi_label", "labels", "created_by", "created_at"]
        read_only_fields = fields


class LabelSchemaCreateSerializer(serializers.Serializer):
    dataset = IdField()
    head = serializers.CharField(max_length=200)
    multi_label = serializers.BooleanField(default=False)
    labels = LabelSerializer(many=True)


class AnnotationJobCreateSerializer(serializers.Serializer):
    dataset = IdField()
    head = serializers.CharField(max_length=200)
    provider = serializers.JSONField(
        required=False,
        help_text='"similarity" (offline), {"id": <LLM provider id>}, or {"deployment": <id>} (a deployed '
        "trained model version of the org)",
    )
    rows = serializers.JSONField(
        required=False,
        help_text='"unlabeled", "all", "labeled", {"sample": N, "from": "unlabeled"|"all"|"labeled", "seed": S} '
        'or {"filter": {"q": "words"}, "from": ...}',
    )
    schema_version = serializers.IntegerField(min_value=1, required=False, help_text="Default: the newest")
    few_shot = serializers.IntegerField(
        min_value=0,
        max_value=20,
        default=0,
        help_text="Examples drawn from rows people labeled, shown to an LLM",
    )


class EstimateRequestSerializer(serializers.Serializer):
    dataset = IdField()
    head = serializers.CharField(max_length=200)
    provider = serializers.JSONField(required=False, help_text="As for a job (default: similarity)")
    rows = serializers.JSONField(required=False, help_text="As for a job (default: unlabeled)")


class QuotaSerializer(serializers.Serializer):
    meter = serializers.CharField()
    plan = serializers.CharField()
    included = serializers.IntegerField(
        allow_null=True, help_text="Automated annotations a month; null: no limit"
    )
    used = serializers.IntegerField()
    remaining = serializers.IntegerField(allow_null=True)
    overage = serializers.BooleanField(help_text="More than included is billed rather than refused")
    period_end = serializers.DateField()


class EstimateSerializer(serializers.Serializer):
    rows = serializers.IntegerField(help_text="Rows the job would label: the automated annotations it uses")
    calls = serializers.IntegerField(
        help_text="Calls to the LLM endpoint (one per row with text; 0 otherwise)"
    )
    quota = QuotaSerializer()
    allowed = serializers.BooleanField()
    refusal = serializers.CharField(allow_null=True, help_text="Why the job would be refused")


class AnnotationJobSerializer(serializers.ModelSerializer[AnnotationJob]):
    dataset = serializers.IntegerField(source="dataset_id", read_only=True)
    schema = serializers.SerializerMethodField()
    provider = serializers.SerializerMethodField()
    rows = serializers.SerializerMethodField()
    title = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    tokens = serializers.SerializerMethodField()

    class Meta:
        model = AnnotationJob
        fields = [
            "id",
            "dataset",
            "head",
            "schema",
            "provider",
            "agent",
            "rows",
            "title",
            "state",
            "progress",
            "tokens",
            "prompt",
            "agreement",
            "error",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {"type": "object", "properties": {"id": {"type": "integer"}, "version": {"type": "integer"}}}
    )
    def get_schema(self, job: AnnotationJob) -> dict[str, int]:
        return {"id": job.schema_id, "version": job.schema.version}

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string"},
                "id": {"type": "integer", "nullable": True},
                "deployment": {"type": "integer", "nullable": True},
            },
        }
    )
    def get_provider(self, job: AnnotationJob) -> dict[str, Any]:
        return {"kind": job.provider_kind, "id": job.provider_id, "deployment": job.deployment_id}

    @extend_schema_field(OpenApiTypes.ANY)
    def get_rows(self, job: AnnotationJob) -> Any:
        return job.rows_spec.get("rows")

    @extend_schema_field({"type": "string", "description": "what a `review` job's rows are (who sent them)"})
    def get_title(self, job: AnnotationJob) -> str:
        return str(job.rows_spec.get("title") or "")

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                name: {"type": "integer"} for name in ("total", "done", "failed", "labeled", "percent")
            },
        }
    )
    def get_progress(self, job: AnnotationJob) -> dict[str, int]:
        percent = (
            100 if job.total == 0 and job.finished else (100 * job.done // job.total if job.total else 0)
        )
        return {
            "total": job.total,
            "done": job.done,
            "failed": job.failed,
            "labeled": job.done - job.failed,
            "percent": percent,
        }

    @extend_schema_field(
        {"type": "object", "properties": {"prompt": {"type": "integer"}, "completion": {"type": "integer"}}}
    )
    def get_tokens(self, job: AnnotationJob) -> dict[str, int]:
        return {"prompt": job.prompt_tokens, "completion": job.completion_tokens}


class SuggestionSerializer(serializers.ModelSerializer[Suggestion]):
    row = serializers.IntegerField(source="row_number", read_only=True)

    class Meta:
        model = Suggestion
        fields = [
            "row",
            "labels",
            "score",
            "scores",
            "agent",
            "state",
            "reason",
            "message",
            "raw",
            "created_at",
        ]
        read_only_fields = fields


class AcceptSerializer(serializers.Serializer):
    min_score = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        help_text="Accept every pending suggestion scoring at least this",
    )
    rows = serializers.ListField(
        child=IdField(),
        required=False,
        max_length=10_000,
        help_text="Accept these rows' suggestions",
    )


class AcceptedSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    kept_labels = serializers.IntegerField(help_text="Rows that had labels already: kept, not overwritten")


class FlipSerializer(serializers.Serializer):
    row = serializers.IntegerField()
    labels = serializers.ListField(child=serializers.CharField())
    other_labels = serializers.ListField(child=serializers.CharField())


class ReviewRowSerializer(serializers.ModelSerializer[RowCopy]):
    class Meta:
        model = RowCopy
        fields = ["number", "text", "labels"]
        read_only_fields = fields


class ReviewSuggestionSerializer(serializers.Serializer):
    # The API's field is called `label`, which DRF's `Field.label` attribute shadows for type checkers only.
    label = serializers.CharField(allow_null=True)  # type: ignore[assignment]
    labels = serializers.ListField(child=serializers.CharField())
    score = serializers.FloatField(allow_null=True)
    scores = serializers.DictField(child=serializers.FloatField())
    agent = serializers.CharField()
    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Why the suggestion says so, when its author said (a policy)",
    )


class ReviewProgressSerializer(serializers.Serializer):
    labeled = serializers.IntegerField()
    total = serializers.IntegerField()


class ReviewStateSerializer(serializers.Serializer):
    overlap = serializers.IntegerField(help_text="How many different people label each row of the head")
    annotators = serializers.IntegerField(help_text="How many people labeled this row so far")
    disputed = serializers.BooleanField(help_text="`overlap` people labeled it and their votes tie")
    mine = serializers.ListField(
        child=serializers.CharField(),
        allow_null=True,
        help_text="Your own labels for the row, if you gave some; never another person's",
    )


class ReviewNextSerializer(serializers.Serializer):
    row = ReviewRowSerializer(allow_null=True)
    suggestion = ReviewSuggestionSerializer(allow_null=True)
    progress = ReviewProgressSerializer()
    review = ReviewStateSerializer(allow_null=True)


class ReviewSavedSerializer(serializers.Serializer):
    number = serializers.IntegerField(source="row.number")
    text = serializers.CharField(source="row.text", allow_null=True)
    labels = serializers.DictField(
        source="row.labels",
        child=serializers.ListField(child=serializers.CharField()),
        help_text="The row's labels per head as the dataset has them: a pending vote is not among them",
    )
    state = serializers.ChoiceField(
        choices=["accepted", "pending", "disputed"],
        help_text="accepted: the row's labels are decided; pending: fewer than `overlap` people labeled it; "
        "disputed: they did and their votes tie, so it comes back in the queue",
    )
    annotators = serializers.IntegerField()
    overlap = serializers.IntegerField()


class ReviewSettingSerializer(serializers.Serializer):
    head = serializers.CharField(max_length=200)
    overlap = serializers.IntegerField(
        min_value=1, max_value=20, help_text="How many different people label each row before it is done"
    )


class ReviewSaveSerializer(serializers.Serializer):
    head = serializers.CharField(max_length=200)
    labels = serializers.ListField(child=serializers.CharField(max_length=200), min_length=1, max_length=100)
    text = serializers.CharField(
        required=False,
        allow_blank=False,
        trim_whitespace=False,
        help_text="The row's text, edited (optional)",
    )


class AnnotatorAgreementSerializer(serializers.Serializer):
    overlap = serializers.IntegerField()
    annotators = serializers.IntegerField(help_text="People who labeled rows another person labeled too")
    rows = serializers.IntegerField(help_text="Rows that two or more people labeled")
    percent_agreement = serializers.FloatField(
        allow_null=True, help_text="Of those rows, the percent where everyone gave the same labels"
    )
    method = serializers.ChoiceField(
        choices=["cohen_kappa", "krippendorff_alpha"],
        allow_null=True,
        help_text="Cohen's kappa for two annotators, Krippendorff's alpha (nominal) for more",
    )
    value = serializers.FloatField(
        allow_null=True, help_text="Undefined (null) when every answer is the same"
    )


class AgreementSerializer(serializers.Serializer):
    head = serializers.CharField()
    job = serializers.IntegerField(allow_null=True)
    agent = serializers.CharField(allow_null=True)
    agreement = serializers.JSONField(
        allow_null=True, help_text="accuracy, Cohen's kappa, per-label P/R/F1, confusion"
    )
    annotators = AnnotatorAgreementSerializer(help_text="How the people who labeled the head agree")
