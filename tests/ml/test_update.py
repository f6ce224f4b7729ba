"""Updating a model version from a parent artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arbiter.ml import (
    EmbeddingCache,
    HeadSpec,
    MLError,
    Predictor,
    TrainOptions,
    TrainResult,
    train_from_snapshot,
)

from .synthetic import synthetic_rows

SENTIMENT = HeadSpec(name="sentiment", labels=("0", "1"))
TOPICS = HeadSpec(name="topics", labels=("sports", "politics"), multi_label=True)
TEXTS = ["you are a stupid moron, the election", "the football match is lovely", "this song is brilliant"]


def sentiment_rows() -> list[dict[str, Any]]:
    """The synthetic texts relabelled with a new `sentiment` head, plus `topics` for retraining."""
    rows = []
    for row in synthetic_rows(120, seed=2):
        positive = "you are a" not in row["input"]
        rows.append(
            {**row, "labels": {"sentiment": ["1" if positive else "0"], "topics": row["labels"]["topics"]}}
        )
    return rows


@pytest.fixture(scope="module")
def updated(
    head_result: TrainResult, tmp_path_factory: pytest.TempPathFactory, embedding_cache: EmbeddingCache
) -> TrainResult:
    return train_from_snapshot(
        rows=sentiment_rows(),
        heads=[SENTIMENT, TOPICS],
        options=TrainOptions(strategy="head", max_epochs=10, export_onnx=False),
        parent=head_result.artifact,
        out_dir=tmp_path_factory.mktemp("update") / "artifact",
        cache=embedding_cache,
    )


def test_update_keeps_untouched_heads_identical_and_adds_the_new_one(
    head_result: TrainResult, updated: TrainResult
) -> None:
    parent = Predictor.load(head_result.artifact_dir, runtime="torch")
    child = Predictor.load(updated.artifact_dir, runtime="torch")
    assert [head.spec.name for head in child.model.heads] == ["sentiment", "topics", "toxicity"]

    before, after = parent.probabilities(TEXTS), child.probabilities(TEXTS)
    np.testing.assert_array_equal(after["toxicity"], before["toxicity"])
    predictions = child.predict(TEXTS)
    assert [p["sentiment"]["label"] for p in predictions] == ["0", "1", "1"]
    # "0" reads as a negative label, so only "1" flags.
    assert [p["sentiment"]["flagged"] for p in predictions] == [False, True, True]
    assert updated.metrics["training"]["kept_heads"] == ["toxicity"]
    assert updated.metrics["training"]["initialised_from_parent"] == ["topics"]
    assert set(updated.metrics["heads"]) == {"sentiment", "topics"}
    assert updated.metrics["inherited_heads"]["toxicity"] == head_result.metrics["heads"]["toxicity"]


def test_full_fine_tuning_is_refused_while_kept_heads_need_the_encoder(
    head_result: TrainResult, tmp_path: Path
) -> None:
    with pytest.raises(MLError, match="Fine-tuning .* kept heads \\['toxicity'\\]"):
        train_from_snapshot(
            rows=sentiment_rows(),
            heads=[SENTIMENT, TOPICS],
            options=TrainOptions(strategy="full"),
            parent=head_result.artifact,
            out_dir=tmp_path / "artifact",
        )
