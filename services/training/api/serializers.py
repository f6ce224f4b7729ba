from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from arbiter.api.fields import MAX_ID, IdField
from services.training import selectors
from services.training.logic import VersionRef
from services.training.models import Model, ModelVersion, TrainingRun
from services.training.options import MAX_TIME_BUDGET_MINUTES, SELECTION_RULES, STRATEGIES

DEFAULT_BASE_MODEL = "minilm-l6"


class OptionsSerializer(serializers.Serializer):
    """Every option may be left out: the default (or, for a new version, the parent's value) applies."""

    strategy = serializers.ChoiceField(choices=STRATEGIES, required=False)
    max_epochs = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    selection_rule = serializers.ChoiceField(choices=SELECTION_RULES, required=False)
    selection_head = serializers.CharField(max_length=200, allow_null=True, required=False)
    early_stopping = serializers.IntegerField(min_value=0, max_value=1000, required=False)
    max_invalid_row_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    learning_rate = serializers.FloatField(min_value=1e-8, max_value=0.999, allow_null=True, required=False)
    batch_size = serializers.IntegerField(min_value=1, max_value=4096, required=False)
    max_tokens = serializers.IntegerField(min_value=8, max_value=8192, required=False)
    target_precision = serializers.FloatField(min_value=0.01, max_value=1, allow_null=True, required=False)
    time_budget_minutes = serializers.FloatField(
        min_value=1,
        max_value=MAX_TIME_BUDGET_MINUTES,
        required=False,
        help_text="How long training may take, 1 minute to 24 hours (default 20); the operator stops a trainer "
        "that runs well past it.",
    )

    def to_internal_value(self, data: Any) -> Any:
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            raise serializers.ValidationError(
                {unknown[0]: [f"Unknown option. Known options: {', '.join(sorted(self.fields))}."]}
            )
        return super().to_internal_value(data)


class TestDataSerializer(serializers.Serializer):
    snapshot = IdField(required=False)
    split_percent = serializers.FloatField(min_value=1, max_value=90, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if len(attrs) != 1:
            raise serializers.ValidationError(
                "Give either `snapshot` (a test snapshot id) or `split_percent` (the share of rows held out)."
            )
        return attrs


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": 300, "description": "an encoder name or path"},
            {
                "type": "object",
                "properties": {
                    "model": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                    "version": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                },
                "required": ["model", "version"],
                "description": "a trained version to train from",
            },
        ],
        "default": DEFAULT_BASE_MODEL,
    }
)
class BaseModelField(serializers.Field):
    """An encoder name (`minilm-l6`, a Hugging Face id) or a trained version: `{"model": 3, "version": 2}`."""

    default_error_messages = {
        # Doubled braces: DRF formats this message.
        "invalid": 'Give an encoder name such as "minilm-l6", or a version as {{"model": 3, "version": 2}}.'
    }

    def to_internal_value(self, data: Any) -> str | VersionRef:
        if isinstance(data, str) and data.strip() and len(data) <= 300:
            return data.strip()
        if isinstance(data, dict) and set(data) == {"model", "version"}:
            model, version = data["model"], data["version"]
            if (
                isinstance(model, int)
                and isinstance(version, int)
                and 0 < model <= MAX_ID
                and 0 < version <= MAX_ID
            ):
                return VersionRef(model_id=model, number=version)
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class ModelCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    type = serializers.ChoiceField(
        choices=[t for t, _ in Model.TYPES],
        required=False,
        help_text="left out: the parent's type, image_classification on an image base, else the snapshots' type",
    )
    base_model = BaseModelField(default=DEFAULT_BASE_MODEL)
    snapshots = serializers.ListField(child=IdField(), min_length=1, max_length=50)
    test = TestDataSerializer(required=False)
    options = OptionsSerializer(required=False)


class VersionCreateSerializer(serializers.Serializer):
    # DRF takes declared fields off the class, so `parent` does not shadow Field.parent (mypy cannot tell).
    parent = IdField(  # type: ignore[assignment]
        required=False, help_text="Version number to train from."
    )
    snapshots = serializers.ListField(child=IdField(), min_length=1, max_length=50, required=False)
    test = TestDataSerializer(required=False)
    options = OptionsSerializer(required=False)


class EpochSerializer(serializers.Serializer):
    """One finished epoch, as the trainer reported it (`training.progress`)."""

    epoch = serializers.IntegerField()
    max_epochs = serializers.IntegerField(required=False)
    train_loss = serializers.FloatField(allow_null=True, required=False)
    valid_loss = serializers.FloatField(allow_null=True, required=False)
    selection_metric = serializers.FloatField(allow_null=True, required=False)
    candidate = serializers.CharField(
        required=False, help_text="the auto strategy's candidate (head, full, ...)"
    )
    head_metrics = serializers.JSONField(required=False, help_text="per head: the epoch's validation metrics")


class RunProgressSerializer(serializers.Serializer):
    epoch = serializers.IntegerField(help_text="the last finished epoch (0: none yet)")
    max_epochs = serializers.IntegerField(allow_null=True)
    epochs = EpochSerializer(many=True)


class RunOutcomeSerializer(serializers.Serializer):
    reason = serializers.CharField()
    message = serializers.CharField()


class RunSerializer(serializers.ModelSerializer):
    model = serializers.IntegerField(source="version.model_id")
    version = serializers.IntegerField(source="version.number")
    progress = serializers.SerializerMethodField()
    outcome = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "model",
            "version",
            "state",
            "outcome",
            "conditions",
            "progress",
            "executor",
            "job",
            "attempt",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(RunProgressSerializer)
    def get_progress(self, run: TrainingRun) -> dict[str, Any]:
        return selectors.run_progress(run)

    @extend_schema_field(RunOutcomeSerializer(allow_null=True))
    def get_outcome(self, run: TrainingRun) -> dict[str, str] | None:
        return selectors.run_outcome(run)


class VersionSummarySerializer(serializers.ModelSerializer):
    status = serializers.CharField(source="run.state")
    run = serializers.IntegerField(source="run.id")

    class Meta:
        model = ModelVersion
        fields = ["number", "status", "run", "created_at"]


class VersionRefSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    version = serializers.IntegerField()


class VersionTimeSerializer(serializers.Serializer):
    budget_seconds = serializers.FloatField(help_text="options.time_budget_minutes in seconds")
    used_seconds = serializers.FloatField(
        allow_null=True, help_text="from the trainer's start to the run's end (or now, while it runs)"
    )


class CandidateSerializer(serializers.Serializer):
    """One step of the `auto` plan: what ran, how long, its validation score; or why it was skipped."""

    name = serializers.CharField(help_text="tfidf, head, full, blend or calibrate")
    ran = serializers.BooleanField()
    seconds = serializers.FloatField(allow_null=True)
    selection_metric = serializers.FloatField(allow_null=True, help_text="on the validation rows")
    head_metrics = serializers.JSONField(help_text="per head, on the validation rows")
    skipped = serializers.CharField(allow_null=True, help_text="why it did not run")
    detail = serializers.JSONField(help_text="epochs, C per head, encoder shares, offsets, ...")


class VersionSerializer(serializers.ModelSerializer):
    model = serializers.IntegerField(source="model_id")
    parent = serializers.SerializerMethodField()  # type: ignore[assignment]  # as in VersionCreateSerializer
    status = serializers.CharField(source="run.state")
    snapshots = serializers.ListField(source="snapshot_ids", child=serializers.IntegerField())
    run = RunSerializer()
    progress = serializers.SerializerMethodField()
    metrics = serializers.JSONField(source="evaluation")
    artifact = serializers.CharField(source="artifact_key")
    time = serializers.SerializerMethodField()
    candidates = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "number",
            "parent",
            "base_model",
            "status",
            "heads",
            "snapshots",
            "test",
            "options",
            "run",
            "progress",
            "time",
            "candidates",
            "metrics",
            "thresholds",
            "artifact",
            "created_at",
        ]

    @extend_schema_field(VersionRefSerializer(allow_null=True))
    def get_parent(self, version: ModelVersion) -> dict[str, int] | None:
        if version.parent is None:
            return None
        return {"model": version.parent.model_id, "version": version.parent.number}

    @extend_schema_field(RunProgressSerializer)
    def get_progress(self, version: ModelVersion) -> dict[str, Any]:
        return selectors.run_progress(version.run)

    @extend_schema_field(VersionTimeSerializer)
    def get_time(self, version: ModelVersion) -> dict[str, Any]:
        return selectors.version_time(version)

    @extend_schema_field(CandidateSerializer(many=True))
    def get_candidates(self, version: ModelVersion) -> list[dict[str, Any]]:
        return selectors.version_candidates(version)


class ModelSerializer(serializers.ModelSerializer):
    versions = VersionSummarySerializer(many=True)
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = ["id", "name", "type", "base_model", "created_at", "latest_version", "versions"]

    def get_latest_version(self, model: Model) -> int | None:
        numbers = [v.number for v in model.versions.all()]
        return max(numbers) if numbers else None


class ModelCreatedSerializer(serializers.Serializer):
    """A new model with its first version (and that version's run)."""

    model = ModelSerializer()
    version = VersionSerializer()
