"""TF-IDF features (word and character n-grams) and logistic-regression heads on them.

The fitted vocabulary is stored as JSON and the idf weights as safetensors, so an artifact that uses
TF-IDF holds no pickle. Transforming rebuilds scikit-learn `CountVectorizer`s from the stored
vocabulary and applies the idf weights and L2 normalisation per block, which is exactly what
`TfidfVectorizer(sublinear_tf=True)` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from arbiter.ml.data import HeadLabels


@dataclass(frozen=True)
class _Block:
    analyzer: str
    ngram_range: tuple[int, int]
    max_features: int


# Word uni/bi-grams catch topical words; character n-grams within word boundaries catch misspellings,
# obfuscation ("f*ck") and morphology, which matter in moderation data.
_BLOCKS = (
    _Block(analyzer="word", ngram_range=(1, 2), max_features=100_000),
    _Block(analyzer="char_wb", ngram_range=(2, 5), max_features=150_000),
)


class TfidfFeatures:
    """A fitted word+char TF-IDF featurizer; `transform` gives an L2-normalised-per-block sparse matrix."""

    def __init__(self, *, blocks: list[dict[str, Any]], idf: list[np.ndarray]) -> None:
        self.blocks = blocks
        self.idf = idf
        self._vectorizers = [
            CountVectorizer(
                analyzer=block["analyzer"],
                ngram_range=tuple(block["ngram_range"]),
                lowercase=True,
                vocabulary={term: i for i, term in enumerate(block["vocabulary"])},
                dtype=np.float32,
            )
            for block in blocks
        ]

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TfidfFeatures:
        blocks: list[dict[str, Any]] = []
        idf: list[np.ndarray] = []
        for block in _BLOCKS:
            vectorizer = TfidfVectorizer(
                analyzer=block.analyzer,
                ngram_range=block.ngram_range,
                max_features=block.max_features,
                min_df=2 if len(texts) >= 50 else 1,
                sublinear_tf=True,
                lowercase=True,
                dtype=np.float32,
            )
            vectorizer.fit(texts)
            vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
            blocks.append(
                {"analyzer": block.analyzer, "ngram_range": list(block.ngram_range), "vocabulary": vocabulary}
            )
            idf.append(vectorizer.idf_.astype(np.float32))
        return cls(blocks=blocks, idf=idf)

    @property
    def dim(self) -> int:
        return sum(len(block["vocabulary"]) for block in self.blocks)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        parts = []
        for vectorizer, idf in zip(self._vectorizers, self.idf, strict=True):
            counts = vectorizer.transform(texts).astype(np.float32)
            counts.data = np.log1p(counts.data)
            parts.append(normalize(counts.multiply(idf).tocsr(), norm="l2", copy=False))
        return sp.hstack(parts, format="csr", dtype=np.float32)

    def save(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps({"blocks": self.blocks}, ensure_ascii=False))
        save_file(
            {f"idf.{i}": values for i, values in enumerate(self.idf)}, str(folder / f"{name}.safetensors")
        )

    @classmethod
    def load(cls, folder: Path, name: str) -> TfidfFeatures:
        blocks = json.loads((folder / f"{name}.json").read_text())["blocks"]
        tensors = load_file(str(folder / f"{name}.safetensors"))
        return cls(blocks=blocks, idf=[tensors[f"idf.{i}"] for i in range(len(blocks))])


def logistic_fit(
    *, features: sp.csr_matrix, labels: HeadLabels, c: float, class_weighting: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a logistic-regression head; returns (weight `[labels, dim]`, bias `[labels]`) as logits.

    Multi-class heads get a multinomial model (a binary one is written as two logit rows, `[0, z]`,
    so softmax gives back sklearn's sigmoid); multi-label heads get one binary model per label.
    Labels without training rows get a large negative bias: they are never predicted. Rows' sample weights
    (`labels.weights`) are the models' `sample_weight`.
    """
    x = features[labels.mask]
    indicators = labels.indicators[labels.mask]
    sample_weight = None if labels.weights is None else labels.weights[labels.mask]
    count = indicators.shape[1]
    weight = np.zeros((count, features.shape[1]), dtype=np.float32)
    bias = np.full(count, -20.0, dtype=np.float32)
    balance = "balanced" if class_weighting else None
    if not labels.spec.multi_label:
        classes = indicators.argmax(axis=1)
        present = np.unique(classes)
        if len(present) == 1:
            bias[present[0]] = 20.0
            return weight, bias
        model = LogisticRegression(C=c, class_weight=balance, max_iter=1000, random_state=seed)
        model.fit(x, classes, sample_weight=sample_weight)
        if len(present) == 2:
            weight[present[1]] = model.coef_[0]
            bias[present[0]] = 0.0
            bias[present[1]] = model.intercept_[0]
        else:
            weight[present] = model.coef_
            bias[present] = model.intercept_
        return weight, bias
    for i in range(count):
        target = indicators[:, i]
        if target.min() == target.max():
            bias[i] = 20.0 if target[0] else -20.0
            continue
        model = LogisticRegression(C=c, class_weight=balance, max_iter=1000, random_state=seed)
        model.fit(x, target.astype(np.int64), sample_weight=sample_weight)
        weight[i] = model.coef_[0]
        bias[i] = model.intercept_[0]
    return weight, bias
