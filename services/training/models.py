"""Tables owned by the training service: models, their versions and runs, and a read model of snapshots.

A version is trained by exactly one run. The run carries the operator's view (state, conditions, the job that
runs its trainer); the version carries what the run produced (evaluation, thresholds, artifact).
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from arbiter.entitlements import EntitlementRecord
from arbiter.tenancy.scoping import OrgScopedModel


class Snapshot(OrgScopedModel):
    """What the training service knows of a dataset snapshot: its manifest, from `snapshot.created`."""

    snapshot_id = models.BigIntegerField()
    dataset_id = models.BigIntegerField()
    name = models.CharField(max_length=200, blank=True, default="")
    type = models.CharField(max_length=40)
    input_column = models.CharField(max_length=200)
    heads = models.JSONField()
    rows = models.IntegerField()
    sha256 = models.CharField(max_length=64)
    blob = models.CharField(max_length=500)
    report = models.JSONField(default=dict)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org_id", "snapshot_id"], name="training_snapshot_once")
        ]

    @property
    def invalid_percent(self) -> float:
        return float(self.report.get("invalid_percent") or 0.0)


class Model(OrgScopedModel):
    """A trained classifier, or a policy: a written policy an LLM applies (each version is a policy document;
    see `services.training.policies`)."""

    TYPES = [
        ("text_classification", "text classification"),
        ("image_classification", "image classification"),
        ("policy", "policy"),
    ]

    name = models.CharField(max_length=200)
    type = models.CharField(max_length=40, choices=TYPES, default="text_classification")
    base_model = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org_id", "name"], name="training_model_name_unique")]
        ordering = ["-created_at", "-id"]


class ModelVersion(OrgScopedModel):
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    # The version this one was trained from (of this model, or of another model for a new model).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    base_model = models.CharField(max_length=300)
    # Every head of the version: {"name", "labels", "multi_label", "origin": "new" | "retrained" | "kept" |
    # "builtin"} (builtin: a head of the base model, such as vision-moderation's nsfw).
    heads = models.JSONField(default=list)
    snapshot_ids = models.JSONField(default=list)
    # {"snapshot": <id>} or {"split_percent": <float>}
    test = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    # The full evaluation from the ML core: per head and class metrics, curves, confusion matrices.
    evaluation = models.JSONField(null=True, blank=True)
    thresholds = models.JSONField(default=dict)
    artifact_key = models.CharField(max_length=500, blank=True, default="")
    # A policy's version: the document (`arbiter.llm.policy.PolicyDocument.to_dict()`, the key encrypted).
    policy = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="training_version_number_unique")
        ]
        ordering = ["number"]


class PolicyEvaluation(OrgScopedModel):
    """A policy version run over a labelled snapshot: every row's decision, and the evaluation of one head of
    the snapshot in the same shape as a trained version's (`arbiter.ml.metrics`)."""

    QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
    STATES = [(s, s) for s in (QUEUED, RUNNING, SUCCEEDED, FAILED)]

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="policy_evaluations")
    snapshot_id = models.BigIntegerField()
    head = models.CharField(max_length=200)
    # At most this many rows of the snapshot, in its order (0: all): a first look costs a few LLM calls.
    limit = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=20, choices=STATES, default=QUEUED)
    rows = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    # One entry per row: {"row", "text", "truth", "flag", "category", "reason", "scores"} or, when the model
    # gave no usable answer, {"row", "text", "truth", "error", "message", "raw"}.
    decisions = models.JSONField(default=list)
    evaluation = models.JSONField(null=True, blank=True)
    # How the policy's categories met the head's labels, and what did not match.
    warnings = models.JSONField(default=list)
    llm_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    # Moved on while rows are decided; a running evaluation whose heartbeat stops is resumed by the operator.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    recoveries = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "snapshot_id", "head", "limit"], name="training_policy_evaluation_once"
            )
        ]
        indexes = [models.Index(fields=["state", "created_at"], name="training_policy_eval_queue")]
        ordering = ["-created_at", "-id"]


class RunState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})


class TrainingRun(OrgScopedModel):
    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="run")
    state = models.CharField(max_length=20, choices=RunState.choices, default=RunState.QUEUED)
    # [{"type", "status", "reason", "message", "time"}], one per type.
    conditions = models.JSONField(default=list)
    # Set when `training.requested` was consumed and the run passed validation: the operator may launch it.
    admitted_at = models.DateTimeField(null=True, blank=True)
    # Snapshot ids the version names that `snapshot.created` has not brought to this service yet: the run
    # waits (condition WaitingForSnapshot) and is requested when the last one arrives.
    awaiting_snapshots = models.JSONField(default=list)
    executor = models.CharField(max_length=20, blank=True, default="")
    # The executor's handle on the trainer: the Kubernetes Job name, or the local process id.
    job = models.CharField(max_length=200, blank=True, default="")
    # The operator still answers for a trainer of this run that may be alive.
    job_active = models.BooleanField(default=False)
    attempt = models.PositiveIntegerField(default=0)
    # One entry per finished epoch: {"epoch", "train_loss", "valid_loss", "selection_metric", ...}.
    epochs = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "admitted_at"], name="training_run_queue"),
            models.Index(fields=["job_active"], name="training_run_job_active"),
        ]

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def condition(self, type: str) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c["type"] == type), None)


class Entitlement(EntitlementRecord):
    """An org's plan, allowances and usage as billing last announced them (`entitlements.changed`)."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org_id"], name="training_entitlement_once")]


class TrainingFile(OrgScopedModel):
    """What the training service knows of a file of the compatibility files API (`file.created`)."""

    file_id = models.CharField(max_length=64)
    purpose = models.CharField(max_length=40)
    filename = models.CharField(max_length=300)
    num_lines = models.BigIntegerField(null=True, blank=True)
    snapshot_id = models.BigIntegerField(null=True, blank=True)
    deleted = models.BooleanField(default=False)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["file_id"], name="training_file_once")]


class FineTuningJob(OrgScopedModel):
    """A job of Mistral's fine-tuning API (`job_type: "classifier"`): validated in the background against its
    files' snapshots, then, when started, the model version it trains (`version`), deployed when it succeeds.

    Before it starts, its status is stored here (VALIDATING, VALIDATED, FAILED_VALIDATION, CANCELLED); from then on it
    is read from the version's run (QUEUED, RUNNING, FAILED, CANCELLED) and the deployment (SUCCESS once
    `fine_tuned_model` answers).
    """

    public_id = models.CharField(max_length=64, unique=True)
    # The `model` the caller named (a Mistral base model name or an Arbiter encoder) and what it maps onto.
    model = models.CharField(max_length=200)
    base_model = models.CharField(max_length=300)
    hyperparameters = models.JSONField(default=dict)
    # [{"file_id", "weight"}]; validation files are ids.
    training_files = models.JSONField(default=list)
    validation_files = models.JSONField(default=list)
    suffix = models.CharField(max_length=100, blank=True, default="")
    auto_start = models.BooleanField(default=False)
    invalid_sample_skip_percentage = models.FloatField(default=0.0)
    # [{"name", "labels", "weight", "loss_function"}], from the data.
    classifier_targets = models.JSONField(default=list)
    status = models.CharField(max_length=30)
    # [{"name", "created_at", "data"}]: what happened before the run took over (validation, cancelling).
    events = models.JSONField(default=list)
    # Optimizer steps in one epoch over the training rows: a checkpoint is written every epoch.
    steps_per_epoch = models.PositiveIntegerField(default=1)
    fine_tuned_model = models.CharField(max_length=200, blank=True, default="")
    version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="fine_tuning_job"
    )
    deployed_at = models.DateTimeField(null=True, blank=True)
    deploy_error = models.TextField(blank=True, default="")
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    modified_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
