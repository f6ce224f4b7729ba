"""The `similarity` labeler, the offline default: the base encoder embeds each text and each label's
description, and labels are ranked by cosine similarity.

Scores are a softmax over the cosines at a temperature. Cosines of sentence embeddings sit in a narrow band
(0.0-0.6 for MiniLM), so the temperature decides whether scores mean anything: 0.05 is the default, and
`similarity_calibrate` fits it to rows people labeled (the temperature with the lowest log loss, on a grid),
so that a 0.9 means right about nine times in ten on this head.

Texts are embedded with an int8 ONNX export of the base encoder (`arbiter.ml.onnx_encoder`: exported once,
cached under ARBITER_HOME, loaded once per process), faster on CPUs than the torch encoder and within about
0.01 cosine of it; label descriptions with the export's fp32 graph. The torch encoder is the fallback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from arbiter.llm.labeling import LabelChoice
from arbiter.ml.encoders import DEFAULT_BASE_MODEL, Encoder

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.05
MAX_TOKENS = 128
_TEMPERATURES = np.geomspace(0.005, 1.0, 60)

EmbedRuntime = Literal["auto", "onnx", "torch"]


class TextEmbedder(Protocol):
    """`Encoder` (torch) or `OnnxEncoder`: L2-normalised sentence embeddings, `[len(texts), dim]`."""

    name: str

    def embed(self, texts: Sequence[str], *, max_tokens: int) -> np.ndarray: ...


_encoders: dict[tuple[str, EmbedRuntime], TextEmbedder] = {}
_encoders_lock = threading.Lock()


def similarity_encoder(name: str = DEFAULT_BASE_MODEL, *, runtime: EmbedRuntime = "auto") -> TextEmbedder:
    """The base encoder, loaded once per process (loading takes seconds; embedding is then fast).

    `auto` is the int8 ONNX export, else the torch encoder; `onnx` and `torch` insist on one.
    """
    with _encoders_lock:
        encoder = _encoders.get((name, runtime))
        if encoder is None:
            encoder = _encoders[(name, runtime)] = _encoder_load(name, runtime)
        return encoder


def _encoder_load(name: str, runtime: EmbedRuntime) -> TextEmbedder:
    """Called with `_encoders_lock` held."""
    if runtime != "torch":
        try:
            from arbiter.ml.onnx_encoder import OnnxEncoder

            return OnnxEncoder.load(name)
        except Exception:
            # Kept as a fallback: a base model torch.onnx cannot trace, onnxruntime missing or an unwritable
            # ARBITER_HOME must make labeling slower (the torch encoder embeds the same), never impossible.
            if runtime == "onnx":
                raise
            log.warning("similarity: no ONNX export of %s, embedding with torch", name, exc_info=True)
    torch_encoder = _encoders.get((name, "torch"))
    if torch_encoder is None:
        import torch

        torch_encoder = _encoders[(name, "torch")] = Encoder.load(name, device=torch.device("cpu"))
    return torch_encoder


@dataclass(frozen=True)
class Ranked:
    labels: list[str]
    score: float
    scores: dict[str, float]


def _label_text(label: LabelChoice) -> str:
    return f"{label.name}: {label.description}" if label.description else label.name


def _softmax(cosines: np.ndarray, temperature: float) -> np.ndarray:
    logits = cosines / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return np.asarray(weights / weights.sum(axis=1, keepdims=True))


class SimilarityLabeler:
    def __init__(self, labels: Sequence[LabelChoice], *, encoder: TextEmbedder | None = None) -> None:
        if not labels:
            raise ValueError("a label schema needs at least one label")
        self.labels = list(labels)
        self.encoder = encoder or similarity_encoder()
        self.temperature = DEFAULT_TEMPERATURE
        # The few label vectors meet every text: int8 error in them shifts all cosines alike, so they come from
        # the fp32 graph where there is one (the ONNX labeler then picks torch's label on 95% of OLID tweets,
        # not 88%).
        embed_labels = getattr(self.encoder, "embed_exact", self.encoder.embed)
        self._label_vectors = embed_labels(
            [_label_text(label) for label in self.labels], max_tokens=MAX_TOKENS
        )

    def cosines(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.encoder.embed(list(texts), max_tokens=MAX_TOKENS)
        return np.asarray(vectors @ self._label_vectors.T)

    def calibrate(self, texts: Sequence[str], truth: Sequence[str]) -> float:
        """Fit the temperature to texts with known labels (names outside the schema are skipped)."""
        index = {label.name: i for i, label in enumerate(self.labels)}
        pairs = [(text, index[label]) for text, label in zip(texts, truth, strict=True) if label in index]
        if len(pairs) < 2 or len({i for _, i in pairs}) < 2:
            return self.temperature
        cosines = self.cosines([text for text, _ in pairs])
        targets = np.array([i for _, i in pairs])
        losses = [
            -np.log(np.clip(_softmax(cosines, t)[np.arange(len(targets)), targets], 1e-12, None)).mean()
            for t in _TEMPERATURES
        ]
        self.temperature = float(_TEMPERATURES[int(np.argmin(losses))])
        return self.temperature

    def rank(self, texts: Sequence[str], *, multi_label: bool = False) -> list[Ranked]:
        if not texts:
            return []
        probabilities = _softmax(self.cosines(texts), self.temperature)
        names = [label.name for label in self.labels]
        ranked = []
        for row in probabilities:
            scores = {name: round(float(p), 4) for name, p in zip(names, row, strict=True)}
            best = int(np.argmax(row))
            chosen = [names[best]]
            if multi_label:
                chosen = [name for name, p in zip(names, row, strict=True) if p >= 0.5] or chosen
            ranked.append(Ranked(labels=chosen, score=round(float(row[best]), 4), scores=scores))
        return ranked
