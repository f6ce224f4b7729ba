"""Tables owned by the inference service: the read model of trained versions, deployments, the playground
queries per model, the opt-in request log, daily usage and the read model of billing's entitlements.

Models and versions belong to the training service; this service knows them only through
`training.completed` (`ModelVersion` here is that event's read model) and refers to them by id.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from arbiter.entitlements import EntitlementRecord
from arbiter.tenancy.scoping import OrgScopedModel


class ModelVersion(OrgScopedModel):
    """A trained version that can be deployed or tried in the playground (from `training.completed`)."""

    model_id = models.BigIntegerField()
    version = models.PositiveIntegerField()
    model_name = models.CharField(max_length=200, blank=True, default="")
    run_id = models.BigIntegerField(null=True, blank=True)
    artifact = models.CharField(max_length=500)
    # [{"name", "labels", "multi_label", "negative_labels"}], from the event or the artifact's config.
    heads = models.JSONField(default=list)
    # {head: {label: threshold}} chosen at training time.
    thresholds = models.JSONField(default=dict)
    # The run's metrics summary (validation metric, ONNX precision check) as the event carried it.
    metrics = models.JSONField(default=dict)
    completed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org_id", "model_id", "version"], name="inference_version_once")
        ]
        ordering = ["model_id", "version"]

    def __str__(self) -> str:
        return f"model {self.model_id} v{self.version}"


class DeploymentStatus(models.TextChoices):
    PENDING = "pending"
    LIVE = "live"
    FAILED = "failed"
    STOPPED = "stopped"


ACTIVE_STATUSES = (DeploymentStatus.PENDING, DeploymentStatus.LIVE)


class Deployment(OrgScopedModel):
    """A model version served behind the org's API keys, under a name unique among its active deployments."""

    name = models.CharField(max_length=100)
    model_id = models.BigIntegerField()
    version = models.PositiveIntegerField()
    model_name = models.CharField(max_length=200, blank=True, default="")
    artifact = models.CharField(max_length=500)
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING
    )
    # Why a deployment failed or stopped: a stable code and a sentence for people.
    reason = models.CharField(max_length=100, blank=True, default="")
    message = models.TextField(blank=True, default="")
    # {head: {label: threshold}} overriding the version's thresholds.
    thresholds = models.JSONField(default=dict)
    log_requests = models.BooleanField(default=False)
    log_retention_days = models.PositiveIntegerField(default=30)
    # How the loading process serves it, e.g. "onnx-int8", "onnx-fp32", "torch-cuda", "torch-cpu".
    runtime = models.CharField(max_length=40, blank=True, default="")
    created_by = models.CharField(max_length=100, blank=True, default="")
    # A retried create with the same Idempotency-Key header returns this deployment instead of a new one.
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    live_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # A cascade (`services.inference.cascade`): the policy version that decides the inputs the trained model is
    # unsure of. `policy_artifact` is empty while that version has not reached this service.
    policy_model_id = models.BigIntegerField(null=True, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    policy_artifact = models.CharField(max_length=500, blank=True, default="")
    # {"band": [low, high], "heads": {<trained category>: <policy category>}}; {} without a policy.
    cascade = models.JSONField(default=dict, blank=True)

    @property
    def is_cascade(self) -> bool:
        return self.policy_model_id is not None

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org_id", "name"],
                condition=models.Q(status__in=["pending", "live"]),
                name="inference_deployment_active_name_unique",
            ),
            models.UniqueConstraint(
                fields=["org_id", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="inference_deployment_idempotency_key_unique",
            ),
        ]
        indexes = [models.Index(fields=["org_id", "model_id", "status"], name="inference_deployment_model")]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class Entitlement(EntitlementRecord):
    """An org's plan, allowances and usage as billing last announced them (`entitlements.changed`)."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org_id"], name="inference_entitlement_once")]


class PlaygroundCounter(OrgScopedModel):
    """Playground queries an org has made against one model (all its versions), for the free allowance."""

    model_id = models.BigIntegerField()
    queries = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org_id", "model_id"], name="inference_playground_counter_once")
        ]


class RequestLogEntry(OrgScopedModel):
    """One classified input of a deployment that logs its requests, kept for its retention period."""

    deployment_id = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    endpoint = models.CharField(max_length=40)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    text = models.TextField()
    # {head: {"labels": [...], "flagged": bool}}: what the deployment answered.
    prediction = models.JSONField(default=dict)

    class Meta:
        indexes = [
            models.Index(fields=["deployment_id", "created_at"], name="inference_log_deployment"),
            models.Index(fields=["created_at"], name="inference_log_created"),
        ]
        ordering = ["created_at", "id"]


class Meter(models.TextChoices):
    CLASSIFICATION = "classification"
    PLAYGROUND = "playground"


class UsageDay(OrgScopedModel):
    """Calls and units (classified inputs) per org, day, meter and deployment: the `GET .../usage` source.

    `deployment_id` is 0 for playground queries, which run against a version, not a deployment.
    """

    day = models.DateField()
    meter = models.CharField(max_length=20, choices=Meter.choices)
    deployment_id = models.BigIntegerField(default=0)
    model_id = models.BigIntegerField()
    version = models.PositiveIntegerField()
    requests = models.PositiveBigIntegerField(default=0)
    units = models.PositiveBigIntegerField(default=0)
    # A cascade deployment's share sent to its policy: the requests with an input the trained model was unsure
    # of, those inputs, and the LLM calls and tokens their decisions cost (decisions already cached cost none).
    policy_requests = models.PositiveBigIntegerField(default=0)
    policy_units = models.PositiveBigIntegerField(default=0)
    llm_calls = models.PositiveBigIntegerField(default=0)
    llm_prompt_tokens = models.PositiveBigIntegerField(default=0)
    llm_completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org_id", "day", "meter", "deployment_id", "model_id", "version"],
                name="inference_usage_day_once",
            )
        ]
        ordering = ["day", "deployment_id"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "meter": self.meter,
            "deployment_id": self.deployment_id or None,
            "model_id": self.model_id,
            "version": self.version,
            "requests": self.requests,
            "units": self.units,
        }


class BatchFile(OrgScopedModel):
    """The read model of a batch input file (`file.created` with purpose `batch`): the files API is the
    dataset service's; this service keeps where the file's bytes are, to read them when a batch names it."""

    file_id = models.CharField(max_length=64, unique=True)
    filename = models.CharField(max_length=300)
    blob = models.CharField(max_length=500)
    bytes = models.BigIntegerField()
    num_lines = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"batch file {self.file_id}"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class Batch(OrgScopedModel):
    """A batch of the OpenAI-compatible batches API: every line of an input file classified in the background
    by the batch worker, a chunk of lines per transaction (`cursor` lines done, their answers in `BatchLine`).

    The output and error files are written here and registered as files by the dataset service
    (`batch.output_written`); the batch is `completed` (or, cancelled midway with answers, `cancelled`) when
    `file.created` announces its output file."""

    OPENAI, MISTRAL, CONSOLE = "openai", "mistral", "console"

    public_id = models.CharField(max_length=64, unique=True)
    # Which API made it (`/v1/batches`, Mistral's `/v1/batch/jobs` or the console): the shape it is answered in.
    api = models.CharField(max_length=10, default=OPENAI)
    input_file_id = models.CharField(max_length=64)
    input_file_ids = models.JSONField(default=list)
    # Input files not yet announced to this service (`file.created` on its way): the batch waits for them.
    awaiting_files = models.JSONField(default=list)
    # Inline requests of a Mistral batch job (`requests` instead of `input_files`), as file lines.
    inline_requests = models.JSONField(default=list)
    # Requests answered so far, in file order: the worker goes on from here.
    cursor = models.PositiveIntegerField(default=0)
    # Mistral's batch jobs name the model once for every line.
    model = models.CharField(max_length=200, blank=True, default="")
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=10, default="24h")
    status = models.CharField(max_length=20, choices=BatchStatus.choices, default=BatchStatus.VALIDATING)
    output_file_id = models.CharField(max_length=64, blank=True, default="")
    error_file_id = models.CharField(max_length=64, blank=True, default="")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list)
    metadata = models.JSONField(null=True, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"batch {self.public_id} ({self.status})"


class BatchLine(models.Model):
    """One answered request of a running batch (an output or error line), kept until the batch's files are
    written: a cancelled batch's output holds what was answered, and a restarted worker goes on from here."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    error = models.BooleanField(default=False)
    line = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "position"], name="inference_batch_line_once")
        ]
        ordering = ["position"]

    def __str__(self) -> str:
        return f"line {self.position} of batch {self.batch_id}"


class PolicyDecision(OrgScopedModel):
    """A policy version's decision for one input, by (artifact, input hash): asked of the LLM once, served
    from here after; its LLM calls and tokens are the policy's metered usage."""

    artifact = models.CharField(max_length=500)
    input_sha256 = models.CharField(max_length=64)
    # `arbiter.llm.policy.PolicyDecision.to_dict()`: flag, category, reason, scores, raw answer, ...
    decision = models.JSONField()
    llm_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["artifact", "input_sha256"], name="inference_policy_decision_once"
            )
        ]
        indexes = [models.Index(fields=["org_id", "created_at"], name="inference_policy_decision_day")]
