from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from arbiter.api.fields import IdField
from services.inference import selectors
from services.inference.models import Deployment, DeploymentStatus, RequestLogEntry


class CascadePolicySerializer(serializers.Serializer):
    model = serializers.IntegerField(help_text="The policy model's id.")
    version = serializers.IntegerField()


class CascadeLlmSerializer(serializers.Serializer):
    calls = serializers.IntegerField(
        help_text="LLM calls the policy's decisions cost (cached decisions cost none)"
    )
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()


class CascadeUsageSerializer(serializers.Serializer):
    requests = serializers.IntegerField(help_text="classify calls since the deployment was created")
    inputs = serializers.IntegerField(help_text="inputs classified")
    model_requests = serializers.IntegerField(help_text="calls the trained model answered alone")
    policy_requests = serializers.IntegerField(help_text="calls with at least one input sent to the policy")
    model_inputs = serializers.IntegerField(help_text="inputs the trained model decided")
    policy_inputs = serializers.IntegerField(help_text="inputs sent to the policy")
    policy_share = serializers.FloatField(
        allow_null=True, help_text="policy_inputs / inputs; null before any"
    )
    llm = CascadeLlmSerializer()


class CascadeSerializer(serializers.Serializer):
    policy = CascadePolicySerializer()
    band = serializers.ListField(
        child=serializers.FloatField(), help_text="[low, high]: the policy decides scores within it"
    )
    heads = serializers.DictField(
        child=serializers.CharField(), help_text="{<trained category>: <policy category>}"
    )
    usage = CascadeUsageSerializer()


class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.IntegerField(source="model_id", read_only=True)
    classify_url = serializers.SerializerMethodField(help_text="Where to POST {inputs: [...]} to classify.")
    cascade = serializers.SerializerMethodField(
        help_text="The policy that decides the inputs the trained model is unsure of, and the share it decided; "
        "null without one."
    )

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "model",
            "model_name",
            "version",
            "status",
            "reason",
            "message",
            "runtime",
            "thresholds",
            "log_requests",
            "log_retention_days",
            "created_by",
            "created_at",
            "live_at",
            "stopped_at",
            "classify_url",
            "cascade",
        ]
        read_only_fields = fields

    def get_classify_url(self, obj: Deployment) -> str:
        return f"/api/v1/orgs/{self.context['org']}/deployments/{obj.pk}/classify"

    @extend_schema_field(CascadeSerializer(allow_null=True))
    def get_cascade(self, obj: Deployment) -> dict[str, Any] | None:
        if not obj.is_cascade:
            return None
        return {
            "policy": {"model": obj.policy_model_id, "version": obj.policy_version},
            "band": obj.cascade.get("band"),
            "heads": obj.cascade.get("heads"),
            "usage": selectors.cascade_usage(deployment_id=obj.pk),
        }


class DeploymentCreateSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200, help_text="The model's id (or its name).")
    version = IdField(required=False, help_text="Default: the newest trained one.")
    name = serializers.CharField(max_length=100, required=False, help_text="Unique among active deployments.")
    thresholds = serializers.JSONField(
        required=False, help_text="{head: {label: threshold}} overriding the version's."
    )
    log_requests = serializers.BooleanField(default=False)
    log_retention_days = serializers.IntegerField(required=False, min_value=1)
    cascade = serializers.JSONField(
        required=False,
        help_text='{"policy": {"model": <policy id>, "version": <n>}, "band": [low, high], "heads": '
        "{<trained category>: <policy category>}}: the policy decides the inputs whose score of a handed-over "
        "category lies within the band.",
    )


class DeploymentListQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=DeploymentStatus.choices, required=False)
    model = IdField(required=False)


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
)
class TextsField(serializers.JSONField):
    """One text or a list of texts; `logic.inputs_validate` checks them and names the bad one."""


class ClassifyRequestSerializer(serializers.Serializer):
    inputs = TextsField(help_text="Texts to classify (or one string).")


# `label` is also an attribute of every DRF field, so this shape is declared inline.
HEAD_RESULT = inline_serializer(
    "HeadResult",
    {
        "label": serializers.CharField(
            allow_null=True, help_text="The decided label (null: none, multi-label)"
        ),
        "score": serializers.FloatField(),
        "labels": serializers.ListField(child=serializers.CharField(), help_text="Every decided label"),
        "label_scores": serializers.DictField(child=serializers.FloatField()),
        "flagged": serializers.BooleanField(),
        "decided_by": serializers.ChoiceField(
            choices=["model", "policy"],
            required=False,
            help_text="A cascade deployment's: who decided this head",
        ),
        "reason": serializers.CharField(
            required=False, help_text="The policy's reason, when a policy decided"
        ),
        "policy_category": serializers.CharField(
            required=False, help_text="A cascade's: the policy category that decided this head"
        ),
    },
)


class ClassifyResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    version = serializers.IntegerField()
    results = serializers.ListField(child=serializers.DictField(child=HEAD_RESULT))


class PlaygroundRequestSerializer(serializers.Serializer):
    input = TextsField(help_text="A text (or a list of texts; each counts as one query).")


class PlaygroundQuotaSerializer(serializers.Serializer):
    used = serializers.IntegerField(help_text="Playground queries made with this model.")
    free = serializers.IntegerField(
        allow_null=True, help_text="What the org's plan includes per model; null: unlimited."
    )
    remaining = serializers.IntegerField(
        allow_null=True, help_text="Free queries left (beyond them, a paid plan bills each); null: unlimited."
    )


class PlaygroundResponseSerializer(ClassifyResponseSerializer):
    quota = PlaygroundQuotaSerializer()


class RequestLogEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = RequestLogEntry
        fields = ["id", "created_at", "endpoint", "api_key_id", "text", "prediction"]
        read_only_fields = fields


class UsageDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    meter = serializers.ChoiceField(choices=["classification", "playground"])
    deployment_id = serializers.IntegerField(allow_null=True, help_text="null for playground queries")
    deployment = serializers.CharField(allow_null=True, help_text="the deployment's name")
    model_id = serializers.IntegerField()
    version = serializers.IntegerField()
    requests = serializers.IntegerField()
    units = serializers.IntegerField(help_text="classified inputs")


# `from` is a Python keyword: the response shape is declared inline.
USAGE_RESPONSE = inline_serializer(
    "UsageResponse",
    {
        "from": serializers.DateField(),
        "to": serializers.DateField(),
        "days": UsageDaySerializer(many=True),
        "totals": serializers.DictField(
            child=serializers.DictField(child=serializers.IntegerField()),
            help_text="per meter: requests and units",
        ),
        "llm": serializers.DictField(
            child=serializers.IntegerField(),
            help_text="policies: decisions asked of an LLM, its calls and tokens (cached decisions cost none)",
        ),
    },
)


class CompatRequestSerializer(serializers.Serializer):
    """What both SDKs send: OpenAI's `input`, Mistral's documented `inputs`."""

    model = serializers.CharField(required=False, help_text="A deployment or model, by name or id.")
    input = serializers.JSONField(
        required=False,
        help_text="A text, a list of texts, or OpenAI's multi-modal list of `{type: text, text}` parts.",
    )
    inputs = TextsField(required=False, help_text="Mistral's spelling of `input`.")


class ModerationResultSerializer(serializers.Serializer):
    """One input's result; answers to `inputs` carry only `categories` and `category_scores` (Mistral)."""

    flagged = serializers.BooleanField(required=False)
    categories = serializers.DictField(child=serializers.BooleanField())
    category_scores = serializers.DictField(child=serializers.FloatField())
    category_applied_input_types = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False
    )


class ModerationResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    results = ModerationResultSerializer(many=True)


_LABEL_SCORES = inline_serializer(
    "ClassificationScores", {"scores": serializers.DictField(child=serializers.FloatField())}
)


class ClassificationResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    results = serializers.ListField(
        child=serializers.DictField(child=_LABEL_SCORES),
        help_text="per input: {<head>: {scores: {<label>: p}}}",
    )
