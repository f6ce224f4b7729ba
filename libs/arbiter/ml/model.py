"""A trained classifier in memory: heads made of linear components over shared features.

Every head, whichever strategy trained it, is a mixture of linear components. A component reads one
feature source (`"encoder"`: the sentence embedding; `"tfidf-N"`: a TF-IDF featurizer) and gives one
logit per label; the head's probabilities are the share-weighted sum of the components' softmax
(multi-class) or sigmoid (multi-label) outputs. `head` and `full` give one encoder component,
a TF-IDF + logistic regression candidate one TF-IDF component, and `auto`'s blend both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from arbiter.ml.specs import HeadSpec
from arbiter.ml.tfidf import TfidfFeatures

ENCODER = "encoder"
# Feature sources a base model brings (see arbiter.ml.image_encoders), computed by the runtime.
BUILTIN_PREFIX = "builtin:"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


@dataclass
class LinearComponent:
    """Logits = features @ weight.T + bias over one feature source."""

    features: str
    weight: np.ndarray
    bias: np.ndarray
    share: float = 1.0


@dataclass
class HeadModel:
    """One head: its spec, its components and the score threshold of each label for `flagged`."""

    spec: HeadSpec
    components: list[LinearComponent]
    thresholds: dict[str, float] = field(default_factory=dict)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits) if self.spec.multi_label else softmax(logits)

    def probabilities(self, logits: Mapping[str, np.ndarray]) -> np.ndarray:
        """Mix the components' probabilities; `logits[features]` holds each component's logits."""
        total = sum(component.share for component in self.components)
        return sum(
            (component.share / total) * self.activate(logits[component.features])
            for component in self.components
        )  # type: ignore[return-value]

    def uses(self, features: str) -> bool:
        return any(component.features == features for component in self.components)

    def default_thresholds(self) -> dict[str, float]:
        """0.5 per label for multi-label heads; 0.0 (plain argmax) for multi-class heads."""
        value = 0.5 if self.spec.multi_label else 0.0
        return {label: value for label in self.spec.labels}


@dataclass
class EncoderInfo:
    """What the artifact's encoder is: the base model it came from and how it embeds."""

    base_model: str
    pooling: str
    dim: int
    max_tokens: int
    fine_tuned: bool


@dataclass
class ClassifierModel:
    """All heads of a model version plus the feature sources they read."""

    heads: list[HeadModel]
    tfidf: dict[str, TfidfFeatures]
    encoder: EncoderInfo | None

    def head(self, name: str) -> HeadModel:
        for head in self.heads:
            if head.spec.name == name:
                return head
        raise KeyError(name)

    @property
    def uses_encoder(self) -> bool:
        return any(head.uses(ENCODER) for head in self.heads) or bool(self.builtin_features)

    @property
    def builtin_features(self) -> set[str]:
        return {c.features for h in self.heads for c in h.components if c.features.startswith(BUILTIN_PREFIX)}

    def encoder_logits(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """Logits of each head's encoder component from sentence embeddings `[rows, dim]`."""
        result = {}
        for head in self.heads:
            for component in head.components:
                if component.features == ENCODER:
                    result[head.spec.name] = embeddings @ component.weight.T + component.bias
        return result

    def probabilities(
        self, *, texts: Sequence[str], encoder_logits: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Per head, probabilities `[len(texts), labels]`.

        `encoder_logits` (per head using the encoder) come from a runtime: from embeddings in torch, or
        straight out of the ONNX graph, which holds the heads; TF-IDF logits are computed here.
        """
        sparse = {
            name: features.transform(texts)
            for name, features in self.tfidf.items()
            if any(head.uses(name) for head in self.heads)
        }
        result = {}
        for head in self.heads:
            logits: dict[str, np.ndarray] = {}
            for component in head.components:
                if component.features == ENCODER:
                    if encoder_logits is None:
                        raise ValueError(f"Head '{head.spec.name}' reads the encoder: pass encoder_logits.")
                    logits[ENCODER] = encoder_logits[head.spec.name]
                elif component.features.startswith(BUILTIN_PREFIX):
                    # A base model's built-in network (vision-moderation's Open-NSFW): the runtime gives
                    # its features under their name.
                    if encoder_logits is None or component.features not in encoder_logits:
                        raise ValueError(
                            f"Head '{head.spec.name}' reads {component.features}: the runtime gives it."
                        )
                    features = encoder_logits[component.features]
                    logits[component.features] = features @ component.weight.T + component.bias
                else:
                    matrix = sparse[component.features]
                    logits[component.features] = np.asarray(matrix @ component.weight.T) + component.bias
            result[head.spec.name] = head.probabilities(logits)
        return result
