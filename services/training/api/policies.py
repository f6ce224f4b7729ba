"""The policies API: write a policy, edit it into new versions, evaluate a version on a labelled snapshot, and
diff two versions on one snapshot. A policy is a model of type `policy` (its id is the model's id): it is
deployed, served and metered through the same APIs as a trained model."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.schema import error_responses
from arbiter.llm.policy import PROMPT_STYLES
from services.training import policies
from services.training.api.views import TrainingViewSet
from services.training.models import Model, ModelVersion, PolicyEvaluation


class PolicyProviderSerializer(serializers.Serializer):
    base_url = serializers.CharField(
        help_text="An OpenAI-compatible endpoint, e.g. https://api.openai.com/v1"
    )
    model = serializers.CharField()
    api_key = serializers.CharField(
        required=False, write_only=True, help_text="Stored encrypted, never returned"
    )
    vision = serializers.BooleanField(
        required=False, help_text="The endpoint reads images in the chat message"
    )
    logprobs = serializers.BooleanField(required=False, help_text="Score from token log-probabilities")


class PolicyExampleSerializer(serializers.Serializer):
    content = serializers.CharField()
    flag = serializers.ChoiceField(choices=["safe", "unsafe"])
    note = serializers.CharField(required=False)


class PolicyCategorySerializer(serializers.Serializer):
    name = serializers.CharField()
    definition = serializers.CharField()
    violates = serializers.CharField(required=False)
    safe = serializers.CharField(required=False)
    examples = PolicyExampleSerializer(many=True, required=False)


class PolicyWriteSerializer(serializers.Serializer):
    """Documents the body; `services.training.policies.policy_document` validates it, naming the field."""

    name = serializers.CharField(required=False, help_text="Required when creating")
    instructions = serializers.CharField(required=False)
    prompt_style = serializers.ChoiceField(choices=list(PROMPT_STYLES), required=False)
    provider = PolicyProviderSerializer(required=False)
    vision_provider = PolicyProviderSerializer(required=False, allow_null=True)
    checklist = serializers.ListField(child=serializers.CharField(), required=False)
    categories = PolicyCategorySerializer(many=True, required=False)


class PolicyProviderOutSerializer(serializers.Serializer):
    base_url = serializers.CharField()
    model = serializers.CharField()
    api_key_hint = serializers.CharField(help_text="The key's last characters; the key is never returned")
    vision = serializers.BooleanField()
    logprobs = serializers.BooleanField()


class PolicyDocumentSerializer(serializers.Serializer):
    name = serializers.CharField()
    instructions = serializers.CharField()
    prompt_style = serializers.ChoiceField(choices=list(PROMPT_STYLES))
    provider = PolicyProviderOutSerializer()
    vision_provider = PolicyProviderOutSerializer(allow_null=True)
    checklist = serializers.ListField(child=serializers.CharField())
    categories = PolicyCategorySerializer(many=True)


class PolicyVersionSerializer(serializers.ModelSerializer):
    policy = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["number", "created_at", "heads", "artifact_key", "policy", "evaluation"]

    @extend_schema_field(PolicyDocumentSerializer)
    def get_policy(self, version: ModelVersion) -> dict[str, Any]:
        return policies.policy_public(version.policy or {})


class PolicySerializer(serializers.ModelSerializer):
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = ["id", "name", "type", "base_model", "created_at", "latest_version"]

    @extend_schema_field(PolicyVersionSerializer(allow_null=True))
    def get_latest_version(self, model: Model) -> dict[str, Any] | None:
        latest = max(model.versions.all(), key=lambda v: v.number, default=None)
        return PolicyVersionSerializer(latest).data if latest is not None else None


class PolicyEvaluationRequestSerializer(serializers.Serializer):
    version = serializers.IntegerField(required=False, help_text="Default: the newest version")
    snapshot = serializers.IntegerField()
    head = serializers.CharField(required=False, help_text="The label column; optional with one")
    limit = serializers.IntegerField(required=False, help_text="At most this many rows (0: all)")


class PolicyEvaluationSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")
    snapshot = serializers.IntegerField(source="snapshot_id")

    class Meta:
        model = PolicyEvaluation
        fields = [
            "id",
            "version",
            "snapshot",
            "head",
            "limit",
            "state",
            "rows",
            "done",
            "errors",
            "message",
            "warnings",
            "llm_calls",
            "prompt_tokens",
            "completion_tokens",
            "evaluation",
            "decisions",
            "created_at",
            "finished_at",
        ]


class TrainedVersionRefSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    version = serializers.IntegerField()


class PolicyReviewSentSerializer(serializers.Serializer):
    sent_for_review = serializers.IntegerField(
        help_text="Rows sent to the review queue (they arrive there by event; 0: nothing to review)"
    )


class PolicyCompareRequestSerializer(serializers.Serializer):
    evaluation = serializers.IntegerField(
        help_text="An evaluation of this policy (its snapshot, head and version)"
    )
    model = TrainedVersionRefSerializer(help_text="The trained version to compare with")
    review = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Send the rows they disagree on to the annotation service's review queue, the policy's answer "
        "and reason as the suggestion",
    )


class PolicyVerdictSerializer(serializers.Serializer):
    flag = serializers.ChoiceField(choices=["safe", "unsafe"], required=False)
    category = serializers.CharField(allow_null=True, required=False)
    reason = serializers.CharField(required=False)
    error = serializers.CharField(required=False, help_text="Why the model gave no usable decision")
    message = serializers.CharField(required=False)
    raw = serializers.CharField(allow_null=True, required=False, help_text="What the model answered")
    labels = serializers.ListField(child=serializers.CharField(), required=False)


class PolicyFlipSerializer(serializers.Serializer):
    row = serializers.CharField()
    text = serializers.CharField()
    truth = serializers.ListField(child=serializers.CharField(), allow_null=True)
    to = PolicyVerdictSerializer()

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = PolicyVerdictSerializer()  # a Python keyword
        return fields


class PolicyDiffCountsSerializer(serializers.Serializer):
    rows = serializers.IntegerField()
    flipped = serializers.IntegerField()
    to_unsafe = serializers.IntegerField()
    to_safe = serializers.IntegerField()


class PolicyDiffSerializer(serializers.Serializer):
    snapshot = serializers.IntegerField()
    head = serializers.CharField()
    from_version = serializers.IntegerField()
    to_version = serializers.IntegerField()
    evaluations = serializers.DictField(
        child=serializers.IntegerField(), help_text="{from, to}: evaluation ids"
    )
    state = serializers.ChoiceField(choices=["succeeded", "running", "failed"])
    message = serializers.CharField(required=False)
    flips = PolicyFlipSerializer(many=True)
    counts = PolicyDiffCountsSerializer(required=False)


class PolicyModelAnswerSerializer(serializers.Serializer):
    labels = serializers.ListField(child=serializers.CharField())
    label_scores = serializers.DictField(child=serializers.FloatField())


class PolicyDisagreementSerializer(serializers.Serializer):
    row = serializers.CharField()
    text = serializers.CharField()
    truth = serializers.ListField(child=serializers.CharField(), allow_null=True)
    policy = PolicyVerdictSerializer()
    model = PolicyModelAnswerSerializer()


class PolicyCompareSerializer(serializers.Serializer):
    evaluation = serializers.IntegerField()
    policy_version = serializers.IntegerField()
    model = TrainedVersionRefSerializer()
    snapshot = serializers.IntegerField()
    head = serializers.CharField()
    rows = serializers.IntegerField()
    agreement = serializers.FloatField(allow_null=True, help_text="Share of rows with the same labels")
    disagreements = PolicyDisagreementSerializer(many=True)
    sent_for_review = serializers.IntegerField(
        help_text="Rows sent to the review queue (`review: true`); they arrive there by event"
    )


class PolicyDiffRequestSerializer(serializers.Serializer):
    snapshot = serializers.IntegerField()
    from_version = serializers.IntegerField()
    to_version = serializers.IntegerField()
    head = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False)


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise serializers.ValidationError({"non_field_errors": ["Give a JSON object."]})
    return dict(request.data)


class PolicyViewSet(TrainingViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = PolicySerializer

    def safely_get_queryset(self) -> QuerySet[Model]:
        return Model.objects.filter(type=policies.POLICY).prefetch_related("versions")

    @extend_schema(request=PolicyWriteSerializer, responses={201: PolicySerializer, **error_responses(409)})
    def create(self, request: Request, org: str) -> Response:
        data = _body(request)
        version = policies.policy_create(org_id=self.org_id, name=data.get("name", ""), data=data)
        return Response(PolicySerializer(version.model).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=PolicyDiffRequestSerializer, responses={200: PolicyDiffSerializer, 202: PolicyDiffSerializer}
    )
    @action(detail=True, methods=["post"])
    def diff(self, request: Request, org: str, pk: int) -> Response:
        data = _body(request)
        body = policies.policy_diff(
            model=self.get_object(),
            snapshot_id=data.get("snapshot"),
            head=data.get("head"),
            from_version=data.get("from_version"),
            to_version=data.get("to_version"),
            limit=data.get("limit", 0),
        )
        return Response(body, status=status.HTTP_202_ACCEPTED if body["state"] == "running" else 200)

    @extend_schema(
        request=PolicyCompareRequestSerializer,
        responses={200: PolicyCompareSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def compare(self, request: Request, org: str, pk: int) -> Response:
        """Agreement with a trained version on an evaluation's rows, and every row where they disagree."""
        data = _body(request)
        review = data.get("review", False)
        if not isinstance(review, bool):
            raise ApiError(status=400, code="invalid", message="review: true or false")
        body = policies.policy_compare(
            model=self.get_object(),
            evaluation_id=data.get("evaluation"),
            against=data.get("model"),
            review=review,
        )
        return Response(body)


class PolicyVersionViewSet(TrainingViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = PolicyVersionSerializer
    lookup_field = "number"

    def safely_get_queryset(self) -> Any:
        return ModelVersion.objects.filter(model_id=self.kwargs["policy"], policy__isnull=False)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        _policy(self.kwargs["policy"])
        return super().list(request, *args, **kwargs)

    @extend_schema(request=PolicyWriteSerializer, responses={201: PolicyVersionSerializer})
    def create(self, request: Request, org: str, policy: int) -> Response:
        """Edit the policy: a new version from the newest one with the fields given (others are kept)."""
        version = policies.policy_version_create(model=_policy(policy), data=_body(request))
        return Response(PolicyVersionSerializer(version).data, status=status.HTTP_201_CREATED)


def _policy(pk: int) -> Model:
    model = Model.objects.filter(pk=pk, type=policies.POLICY).first()
    if model is None:
        raise Http404
    return model


class PolicyEvaluationViewSet(TrainingViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    serializer_class = PolicyEvaluationSerializer

    def safely_get_queryset(self) -> Any:
        return PolicyEvaluation.objects.select_related("version").filter(
            version__model_id=self.kwargs["policy"]
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        _policy(self.kwargs["policy"])
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=PolicyEvaluationRequestSerializer,
        responses={201: PolicyEvaluationSerializer, 200: PolicyEvaluationSerializer},
    )
    def create(self, request: Request, org: str, policy: int) -> Response:
        data = _body(request)
        version = policies.policy_version(model=_policy(policy), number=data.get("version"))
        evaluation, created = policies.evaluation_request(
            version=version,
            snapshot_id=data.get("snapshot"),
            head=data.get("head"),
            limit=data.get("limit", 0),
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(PolicyEvaluationSerializer(evaluation).data, status=code)

    @extend_schema(request=None, responses={202: PolicyReviewSentSerializer, **error_responses(409)})
    def review(self, request: Request, org: str, policy: int, pk: int) -> Response:
        """Send the rows on which the policy disagrees with their labels to the annotation service's review
        queue, the policy's answer and reason as each row's suggestion (a label may be the mistake)."""
        evaluation = self.get_object()
        sent = policies.evaluation_review(evaluation=evaluation)
        return Response(
            PolicyReviewSentSerializer({"sent_for_review": sent}).data, status=status.HTTP_202_ACCEPTED
        )
