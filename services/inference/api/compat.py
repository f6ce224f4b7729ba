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
from services.inference import compat, images, logic, selectors
from services.inference.api import serializers as s
from services.inference.api.views import caller_of, json_object
from services.inference.serving.inputs import MULTIMODAL


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
        deployment = selectors.deployment_for_model(model=str(model) if model is not None else None)
        kind = images.model_input_kind(deployment.artifact) if deployment.status == "live" else "text"
        texts = (
            images.classify_inputs(raw_inputs, field=field, kind=kind, store=deployment.log_requests)
            if deployment.status == "live"
            else []
        )
        classification = logic.deployment_classify(
            deployment=deployment, texts=texts, caller=caller_of(request, self.org_id), endpoint=self.endpoint
        )
        return deployment, classification

    def classify_multimodal(
        self, request: Request, parts: list[dict[str, Any]]
    ) -> tuple[Any, logic.Classification, str | list[str]]:
        """OpenAI's multi-modal input: one input made of parts; the parts of the kind the model classifies
        are classified and, per head, the part that scores highest on a flagging label answers."""
        body = json_object(request)
        model = body.get("model")
        deployment = selectors.deployment_for_model(model=str(model) if model is not None else None)
        if deployment.status != "live":
            return (
                deployment,
                logic.deployment_classify(
                    deployment=deployment,
                    texts=[],
                    caller=caller_of(request, self.org_id),
                    endpoint=self.endpoint,
                ),
                "text",
            )
        kind = images.model_input_kind(deployment.artifact)
        if kind == MULTIMODAL:
            return self._policy_multimodal(request, deployment, parts)
        usable = [
            (index, part) for index, part in enumerate(parts) if ("image_url" in part) == (kind == "image")
        ]
        if not usable:
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f"input: this model classifies {'images' if kind == 'image' else 'text'}, and the input "
                f"has no {'image_url' if kind == 'image' else 'text'} part.",
            )
        if kind == "image":
            texts = images.images_resolve(
                [(f"input[{index}]", part) for index, part in usable], store=deployment.log_requests
            )
        else:
            texts = logic.inputs_validate([part["text"] for _, part in usable], field="input")
        classification = logic.deployment_classify(
            deployment=deployment, texts=texts, caller=caller_of(request, self.org_id), endpoint=self.endpoint
        )
        merged = compat.results_merge(classification.results, classification.heads)
        return deployment, logic.Classification(results=[merged], heads=classification.heads), kind

    def _policy_multimodal(
        self, request: Request, deployment: Any, parts: list[dict[str, Any]]
    ) -> tuple[Any, logic.Classification, list[str]]:
        """A policy reads the parts together: its text parts joined, with the image (one per input)."""
        pictures = [(index, part) for index, part in enumerate(parts) if "image_url" in part]
        if len(pictures) > 1:
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f"input[{pictures[1][0]}]: a policy reads one image per input; send the others as "
                "inputs of their own.",
            )
        words = [part.get("text") for part in parts if "image_url" not in part]
        if not all(isinstance(word, str) for word in words):
            raise ApiError(
                status=400, code="invalid", message="input: each text part's text must be a string."
            )
        item: dict[str, Any] = {"text": "\n".join(str(word) for word in words)}
        if pictures:
            item["image_url"] = pictures[0][1]["image_url"]
        texts = images.classify_inputs(item, field="input", kind=MULTIMODAL, store=deployment.log_requests)
        classification = logic.deployment_classify(
            deployment=deployment, texts=texts, caller=caller_of(request, self.org_id), endpoint=self.endpoint
        )
        applied = [
            kind for kind, present in (("text", bool(item["text"])), ("image", bool(pictures))) if present
        ]
        return deployment, classification, applied


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
            parts = images.openai_multimodal(body["input"])
            if parts is not None:
                deployment, classification, kind = self.classify_multimodal(request, parts)
            else:
                deployment, classification = self.classify(request, body["input"], "input")
                served = (
                    images.model_input_kind(deployment.artifact) if deployment.status == "live" else "text"
                )
                kind = "image" if served == "image" else "text"
            results = [
                compat.moderation_result(result, classification.heads, input_type=kind)
                for result in classification.results
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
