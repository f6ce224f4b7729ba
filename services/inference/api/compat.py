"""Drop-in endpoints for the OpenAI and Mistral SDKs: `POST /v1/moderations` and `POST /v1/classifications`.

The org comes from the API key (there is none in the path); the key needs the `inference` scope. `model`
names a deployment (its name or id) or a model (its name or id: its newest live deployment); without it,
the org's newest live deployment answers.

`/v1/moderations` answers in OpenAI's shape when the body has `input`, which is what both SDKs send
(Mistral's `inputs=` argument travels as `input`, and OpenAI's shape is a superset of Mistral's, which its
SDK reads as is), and exactly in Mistral's shape when the body has `inputs`.
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.keyscoped import KeyScopedView
from arbiter.api.schema import error_responses
from services.inference import compat, logic, selectors
from services.inference.api import serializers as s
from services.inference.api.views import caller_of, json_object


class _KeyScopedView(KeyScopedView):
    """The classify endpoints: the key needs the `inference` scope (KeyScopedView's default) for every method."""

    endpoint = ""

    def classify(self, request: Request, raw_inputs: Any, field: str) -> tuple[Any, logic.Classification]:
        body = json_object(request)
        model = body.get("model")
        if model is not None and not isinstance(model, str | int):
            raise ApiError(
                status=400, code="invalid", message="model: give a deployment or model name or id."
            )
        texts = logic.inputs_validate(raw_inputs, field=field)
        deployment = selectors.deployment_for_model(model=str(model) if model is not None else None)
        classification = logic.deployment_classify(
            deployment=deployment, texts=texts, caller=caller_of(request, self.org_id), endpoint=self.endpoint
        )
        return deployment, classification


def _openai_texts(value: Any) -> Any:
    """OpenAI's multi-modal input (`[{"type": "text", "text": ...}]`) as plain texts; images are refused."""
    if not isinstance(value, list) or not any(isinstance(item, dict) for item in value):
        return value
    texts = []
    for index, item in enumerate(value):
        if isinstance(item, dict) and item.get("type") == "text":
            texts.append(item.get("text"))
        elif isinstance(item, dict):
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f"input[{index}]: only text inputs are supported, got {item.get('type')!r}.",
                details={"index": index},
            )
        else:
            texts.append(item)
    return texts


class ModerationsView(_KeyScopedView):
    endpoint = "moderations"

    @extend_schema(
        request=s.CompatRequestSerializer,
        responses={200: s.ModerationResponseSerializer, **error_responses(404, 409, 413, 503)},
        description="OpenAI's moderation endpoint (and Mistral's `classifiers.moderate`): one result per input. "
        "A body with `input` answers in OpenAI's shape, one with `inputs` in Mistral's.",
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        if "input" in body:
            deployment, classification = self.classify(request, _openai_texts(body["input"]), "input")
            results = [
                compat.moderation_result(result, classification.heads) for result in classification.results
            ]
        elif "inputs" in body:
            deployment, classification = self.classify(request, body["inputs"], "inputs")
            results = [
                compat.mistral_moderation_result(result, classification.heads)
                for result in classification.results
            ]
        else:
            raise ApiError(
                status=400,
                code="invalid",
                message="input: this field is required.",
                details={"input": ["This field is required."]},
            )
        return Response({"id": f"modr-{uuid.uuid4().hex}", "model": deployment.name, "results": results})


class ClassificationsView(_KeyScopedView):
    endpoint = "classifications"

    @extend_schema(
        request=s.CompatRequestSerializer,
        responses={200: s.ClassificationResponseSerializer, **error_responses(404, 409, 413, 503)},
        description="Mistral's `classifiers.classify`: per input, each head's label scores.",
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        field = "input" if "input" in body or "inputs" not in body else "inputs"
        if field not in body:
            raise ApiError(
                status=400,
                code="invalid",
                message="input: this field is required.",
                details={"input": ["This field is required."]},
            )
        deployment, classification = self.classify(request, body[field], field)
        results = [compat.mistral_classification_result(result) for result in classification.results]
        return Response({"id": uuid.uuid4().hex, "model": deployment.name, "results": results})
