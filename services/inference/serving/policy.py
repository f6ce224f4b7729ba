"""A policy version served like a trained model: loaded from its artifact by the model cache, it answers
`classify(texts)` with one head per category (`[safe, unsafe]`, see `arbiter.llm.policy.policy_heads`), each
carrying the model's `reason`.

Decisions are cached by (policy version, input hash) in this service's database (`PolicyDecision`): the same
text is never sent twice to the LLM for one version, across processes and restarts; each row records the LLM
calls and tokens it cost, which is what the usage API reports as the policy's LLM calls. An input the model gave
no usable decision for (timeout, refusal, prose, a category not in the policy, an unreadable image) fails the
request with a 502 naming the input and the reason; nothing is cached for it and nothing is called "safe".
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from arbiter.api.errors import ApiError
from arbiter.llm import LlmClient
from arbiter.llm.policy import (
    PolicyDecision,
    PolicyDocument,
    PolicyError,
    policy_artifact_load,
    policy_decide,
    policy_heads,
)
from arbiter.ml.specs import HeadSpec
from arbiter.storage import get_blob_store
from services.inference.models import PolicyDecision as CachedDecision

log = logging.getLogger(__name__)

ALIAS = "inference"
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


class PolicyModel:
    runtime = "llm"
    size_bytes = POLICY_MEMORY_BYTES
    input_kind = "text"

    def __init__(self, *, key: str, document: PolicyDocument, meta: Mapping[str, Any]) -> None:
        self.key = key
        self.document = document
        self.org_id = int(meta["org_id"])
        self.heads = [PolicyHead(spec=HeadSpec.from_dict(h), thresholds={}) for h in policy_heads(document)]
        self._client = LlmClient(document.provider.endpoint())
        self._vision = LlmClient(document.vision_provider.endpoint()) if document.vision_provider else None

    def close(self) -> None:
        self._client.close()
        if self._vision is not None:
            self._vision.close()

    def decisions(self, texts: Sequence[str]) -> list[PolicyDecision]:
        """Each text's decision, from the cache or the LLM; a 502 for the first text without one."""
        return self.decisions_costed(texts).decisions

    def decisions_costed(self, texts: Sequence[str], *, indexes: Sequence[int] | None = None) -> Decided:
        """`decisions`, with what this call cost (the LLM calls and tokens of the decisions not cached yet).

        `indexes` are the texts' positions in the request (a cascade sends some of its inputs): a 502 names the
        input by it."""
        positions = list(indexes) if indexes is not None else list(range(len(texts)))
        hashes = [input_hash(text) for text in texts]
        cached = {
            row.input_sha256: PolicyDecision.from_dict(row.decision)
            for row in CachedDecision.objects.unscoped().filter(
                artifact=self.key, input_sha256__in=set(hashes)
            )
        }
        missing = list(dict.fromkeys(h for h in hashes if h not in cached))
        by_hash = dict(zip(hashes, texts, strict=True))

        def decide(text: str) -> PolicyDecision | PolicyError:
            try:
                return policy_decide(
                    self.document, client=self._client, text=text, vision_client=self._vision
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
