"""A policy version served like a trained model: loaded from its artifact by the model cache, it answers
`classify(texts)` with one head per category (`[safe, unsafe]`, see `arbiter.llm.policy.policy_heads`), each
carrying the model's `reason`.

Decisions are cached by (policy version, input hash) in this service's database (`PolicyDecision`): the same
text is never sent twice to the LLM for one version, across processes and restarts; each row records the LLM
calls and tokens it cost, which is what the usage API reports as the policy's LLM calls, and is billed with it
(`usage.recorded`, meter `llm_call`); calls beyond the plan's LLM calls are refused (402/429) before any is
made. An input the model gave no usable decision for (timeout, refusal, prose, a category not in the policy, an
unreadable image) fails the request with a 502 naming the input and the reason; nothing is cached for it and
nothing is called "safe".
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from arbiter.api.errors import ApiError
from arbiter.entitlements import entitlements_check
from arbiter.events import publish
from arbiter.llm import LlmClient
from arbiter.llm.policy import (
    PolicyDecision,
    PolicyDocument,
    PolicyError,
    policy_artifact_load,
    policy_decide,
    policy_heads,
)
from arbiter.ml.image_encoders import image_bytes
from arbiter.ml.specs import HeadSpec
from arbiter.storage import get_blob_store
from services.inference.models import Entitlement
from services.inference.models import PolicyDecision as CachedDecision
from services.inference.serving.inputs import MULTIMODAL, multimodal_parts

log = logging.getLogger(__name__)

ALIAS = "inference"
LLM_CALL = "llm_call"
# A loaded policy holds a document and two HTTP clients: next to nothing against the memory budget.
POLICY_MEMORY_BYTES = 64 * 1024


@dataclass(frozen=True)
class PolicyHead:
    """What the deployment code reads of a loaded head (`spec`, `thresholds`), as for a trained head."""

    spec: HeadSpec
    thresholds: Mapping[str, float]


@dataclass(frozen=True)
class LlmCost:
    """What asking the LLM cost: its calls and tokens."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: LlmCost) -> LlmCost:
        return LlmCost(
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class Decided:
    """A policy's decisions for some texts, and the cost of those not cached before (cached ones cost none)."""

    decisions: list[PolicyDecision]
    cost: LlmCost


def input_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _data_url(image_key: str) -> str:
    """The checked image as a `data:` URL: the endpoint reads the bytes this service fetched and checked,
    never the caller's URL (which it could not reach, or should not)."""
    data = image_bytes(image_key)
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8", "image/jpeg"),
    (b"RIFF", "image/webp"),
    (b"GIF8", "image/gif"),
)


class PolicyModel:
    runtime = "llm"
    size_bytes = POLICY_MEMORY_BYTES
    # Texts, images, or both in one input (`services.inference.serving.inputs`).
    input_kind = MULTIMODAL

    def __init__(self, *, key: str, document: PolicyDocument, meta: Mapping[str, Any]) -> None:
        self.key = key
        self.document = document
        self.org_id = int(meta["org_id"])
        self.model_id = meta.get("model_id")
        self.version = meta.get("version")
        self.heads = [PolicyHead(spec=HeadSpec.from_dict(h), thresholds={}) for h in policy_heads(document)]
        self._client = LlmClient(document.provider.endpoint())
        self._vision = LlmClient(document.vision_provider.endpoint()) if document.vision_provider else None

    def close(self) -> None:
        self._client.close()
        if self._vision is not None:
            self._vision.close()

    def decisions(self, texts: Sequence[str]) -> list[PolicyDecision]:
        """Each text's decision, from the cache or the LLM; a 502 for the first text without one."""
        return self.decisions_costed(texts, images=True).decisions

    def decisions_costed(
        self, texts: Sequence[str], *, indexes: Sequence[int] | None = None, images: bool = False
    ) -> Decided:
        """`decisions`, with what this call cost (the LLM calls and tokens of the decisions not cached yet).

        `indexes` are the texts' positions in the request (a cascade sends some of its inputs): a 502 names the
        input by it. With `images`, the inputs are `services.inference.serving.inputs`' (validated as a policy's
        inputs: a text there holds no NUL, so only an image this service checked is read as one); otherwise
        every input is a plain text (a cascade's, validated for its trained model)."""
        positions = list(indexes) if indexes is not None else list(range(len(texts)))
        hashes = [input_hash(text) for text in texts]
        cached = {
            row.input_sha256: PolicyDecision.from_dict(row.decision)
            for row in CachedDecision.objects.unscoped().filter(
                artifact=self.key, input_sha256__in=set(hashes)
            )
        }
        missing = list(dict.fromkeys(h for h in hashes if h not in cached))
        if missing:
            # The plan's LLM calls this month, as billing last announced them (a decision takes one or more).
            entitlements_check(model=Entitlement, org_id=self.org_id, meter=LLM_CALL, units=len(missing))
        by_hash = dict(zip(hashes, texts, strict=True))

        def decide(value: str) -> PolicyDecision | PolicyError:
            text, image_key = multimodal_parts(value) if images else (value, None)
            try:
                return policy_decide(
                    self.document,
                    client=self._client,
                    text=text,
                    image_url=_data_url(image_key) if image_key else None,
                    vision_client=self._vision,
                )
            except PolicyError as error:
                return error

        with ThreadPoolExecutor(
            max_workers=max(1, min(len(missing), self._client.settings.concurrency))
        ) as pool:
            fresh = dict(zip(missing, pool.map(decide, [by_hash[h] for h in missing]), strict=True))
        cost = LlmCost()
        for digest, outcome in fresh.items():
            if isinstance(outcome, PolicyDecision):
                self._remember(digest, outcome)
                cached[digest] = outcome
                cost = cost + LlmCost(outcome.calls, outcome.prompt_tokens, outcome.completion_tokens)
        for index, digest in zip(positions, hashes, strict=True):
            failed = fresh.get(digest)
            if isinstance(failed, PolicyError):
                raise ApiError(
                    status=502,
                    code=f"policy_{failed.reason}",
                    message=f"inputs[{index}]: the policy model gave no usable decision: {failed.message}",
                    details={"index": index, "reason": failed.reason, "raw": failed.raw},
                )
        return Decided(decisions=[cached[digest] for digest in hashes], cost=cost)

    def _remember(self, digest: str, decision: PolicyDecision) -> None:
        try:
            with transaction.atomic(using=ALIAS):
                CachedDecision.objects.unscoped().create(
                    org_id=self.org_id,
                    artifact=self.key,
                    input_sha256=digest,
                    decision=decision.to_dict(),
                    llm_calls=decision.calls,
                    prompt_tokens=decision.prompt_tokens,
                    completion_tokens=decision.completion_tokens,
                )
                # Billed once per stored decision, with it: a text decided twice at once is stored, and
                # billed, once (the other request's insert rolls back with its event).
                publish(
                    type="usage.recorded",
                    org_id=self.org_id,
                    subject=f"models/{self.model_id}" if self.model_id else "policies",
                    data={
                        "meter": LLM_CALL,
                        "units": decision.calls,
                        "requests": 1,
                        "model_id": self.model_id,
                        "version": self.version,
                        "endpoint": "policy",
                    },
                )
        except IntegrityError:
            pass  # another request decided the same text meanwhile: its decision is as good

    def classify(
        self, texts: Sequence[str], thresholds: Mapping[str, Mapping[str, float]] | None = None
    ) -> list[dict[str, dict[str, Any]]]:
        """Per input, per category: `{label, labels, score, label_scores, flagged, reason}`. A deployment's
        thresholds (per category, on `unsafe`) flag a category when its score reaches them."""
        results = []
        for decision in self.decisions(texts):
            result: dict[str, dict[str, Any]] = {}
            for name in self.document.category_names:
                score = float(decision.scores.get(name, 0.0))
                limit = (thresholds or {}).get(name, {}).get("unsafe")
                flagged = (
                    score >= limit if limit is not None else decision.flagged and decision.category == name
                )
                label = "unsafe" if flagged else "safe"
                result[name] = {
                    "label": label,
                    "labels": [label],
                    "score": score if flagged else round(1.0 - score, 6),
                    "label_scores": {"safe": round(1.0 - score, 6), "unsafe": score},
                    "flagged": flagged,
                    "reason": decision.reason if decision.category == name or not decision.flagged else "",
                }
            results.append(result)
        return results


def policy_model_load(key: str) -> PolicyModel:
    """Read a policy artifact from the blob store (raises `BlobNotFoundError` or `PolicyInvalid`)."""
    document, meta = policy_artifact_load(get_blob_store().get_bytes(key))
    return PolicyModel(key=key, document=document, meta=meta)
