"""Fixtures for `arbiter.ml`: the synthetic snapshot, a shared embedding cache and a trained artifact."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from arbiter.ml import EmbeddingCache, TrainOptions, TrainResult, train_from_snapshot  # noqa: E402

from .synthetic import HEADS, synthetic_rows  # noqa: E402


@pytest.fixture(scope="session")
def embedding_cache() -> EmbeddingCache:
    """One in-memory cache for the session: each distinct text is embedded once across all tests."""
    return EmbeddingCache()


@pytest.fixture(scope="session")
def head_result(tmp_path_factory: pytest.TempPathFactory, embedding_cache: EmbeddingCache) -> TrainResult:
    """The synthetic snapshot trained with the `head` strategy, exported to ONNX."""
    return train_from_snapshot(
        rows=synthetic_rows(),
        heads=HEADS,
        options=TrainOptions(strategy="head", max_epochs=30, seed=7),
        out_dir=tmp_path_factory.mktemp("head") / "artifact",
        cache=embedding_cache,
    )
