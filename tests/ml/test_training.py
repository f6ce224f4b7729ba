"""Training strategies end to end on the synthetic snapshot."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from arbiter.ml import (
    BaseModelError,
    EmbeddingCache,
    EpochProgress,
    HeadSpec,
    Predictor,
    TrainingCancelled,
    TrainingDataError,
    TrainOptions,
    TrainResult,
    train_from_snapshot,
)

from .synthetic import HEADS, synthetic_rows


def test_head_strategy_separates_the_synthetic_snapshot(head_result: TrainResult) -> None:
    metrics = head_result.metrics
    assert metrics["split"] == "test" and metrics["rows"] == 40
    assert metrics["heads"]["toxicity"]["macro"]["f1"] >= 0.95
    assert metrics["heads"]["topics"]["macro"]["f1"] >= 0.9
    # Every 7th row has `topics: null`: those test rows are not counted for that head.
    assert metrics["heads"]["topics"]["support"] == 40 - len([i for i in range(0, 200, 5) if i % 7 == 3])
    assert metrics["heads"]["toxicity"]["support"] == 40
    written = json.loads((head_result.artifact_dir / "metrics.json").read_text())
    assert written["heads"] == metrics["heads"]
    assert written["training"]["selected"] == "head"
    assert [epoch["epoch"] for epoch in written["training"]["history"]] == list(
        range(1, len(written["training"]["history"]) + 1)
    )


def test_progress_is_reported_per_epoch_and_the_best_epoch_is_kept(
    tmp_path: Path, embedding_cache: EmbeddingCache
) -> None:
    seen: list[EpochProgress] = []
    result = train_from_snapshot(
        rows=synthetic_rows(),
        heads=HEADS,
        options=TrainOptions(
            strategy="head", max_epochs=6, early_stopping=0, selection_rule="loss", export_onnx=False
        ),
        out_dir=tmp_path / "artifact",
        on_progress=seen.append,
        cache=embedding_cache,
    )
    assert [progress.epoch for progress in seen] == [1, 2, 3, 4, 5, 6]
    first = seen[0].to_dict()
    assert set(first) >= {"epoch", "train_loss", "valid_loss", "selection_metric", "head_metrics"}
    assert set(first["head_metrics"]) == {"toxicity", "topics"}
    best = min(seen, key=lambda progress: progress.valid_loss or 0)
    assert result.best_epoch == best.epoch
    assert result.selection_metric == pytest.approx(best.selection_metric, abs=1e-4)


def test_early_stopping_stops_after_patience_epochs(tmp_path: Path, embedding_cache: EmbeddingCache) -> None:
    # A quarter of the toxicity labels flipped: a fast learner soon overfits them.
    noisy = [
        {
            **row,
            "labels": {
                **row["labels"],
                "toxicity": [{"safe": "toxic", "toxic": "safe"}[row["labels"]["toxicity"][0]]],
            },
        }
        if row["row"] % 4 == 1
        else row
        for row in synthetic_rows()
    ]
    result = train_from_snapshot(
        rows=noisy,
        heads=HEADS,
        options=TrainOptions(
            strategy="head",
            max_epochs=60,
            early_stopping=2,
            learning_rate=0.05,
            selection_rule="loss",
            export_onnx=False,
        ),
        out_dir=tmp_path / "artifact",
        cache=embedding_cache,
    )
    assert len(result.history) < 60
    assert len(result.history) - result.best_epoch == 2  # type: ignore[operator]


def test_same_seed_gives_the_same_metrics(tmp_path: Path, embedding_cache: EmbeddingCache) -> None:
    def train(seed: int, folder: str) -> TrainResult:
        return train_from_snapshot(
            rows=synthetic_rows(seed=1),
            heads=HEADS,
            options=TrainOptions(strategy="head", max_epochs=4, seed=seed, export_onnx=False),
            out_dir=tmp_path / folder,
            cache=embedding_cache,
        )

    first, second, other = train(5, "a"), train(5, "b"), train(6, "c")
    assert first.metrics["heads"] == second.metrics["heads"]
    assert [p.to_dict()["train_loss"] for p in first.history] == [
        p.to_dict()["train_loss"] for p in second.history
    ]
    assert [p.train_loss for p in first.history] != [p.train_loss for p in other.history]


def test_cancel_stops_training(tmp_path: Path, embedding_cache: EmbeddingCache) -> None:
    epochs: list[int] = []
    with pytest.raises(TrainingCancelled):
        train_from_snapshot(
            rows=synthetic_rows(),
            heads=HEADS,
            options=TrainOptions(strategy="head", max_epochs=50, early_stopping=0, export_onnx=False),
            out_dir=tmp_path / "artifact",
            on_progress=lambda progress: epochs.append(progress.epoch),
            should_cancel=lambda: len(epochs) >= 2,
            cache=embedding_cache,
        )
    assert epochs == [1, 2]


def test_auto_within_a_tiny_budget_serves_tfidf_without_an_encoder(tmp_path: Path) -> None:
    result = train_from_snapshot(
        rows=synthetic_rows(),
        heads=HEADS,
        options=TrainOptions(strategy="auto", time_budget_minutes=0.001 / 60, selection_rule="f1"),
        out_dir=tmp_path / "artifact",
    )
    assert result.selected == "tfidf"
    assert [candidate["name"] for candidate in result.candidates] == ["tfidf", "head", "full", "refit"]
    assert result.candidates[1]["skipped"] == "the time budget was spent"
    assert result.candidates[2]["skipped"] == "the time budget was spent"
    assert result.metrics["heads"]["toxicity"]["macro"]["f1"] >= 0.95
    assert not (result.artifact_dir / "encoder").exists()
    assert result.artifact.config["onnx"] is None
    predictor = Predictor.load(result.artifact_dir)
    assert predictor.runtime_name == "tfidf"
    [prediction] = predictor.predict(["you are a stupid moron, the election"])
    assert prediction["toxicity"]["label"] == "toxic"
    assert prediction["topics"]["labels"] == ["politics"]


PARITY = [HeadSpec(name="parity", labels=("even", "odd"))]


def parity_rows(count: int = 200, *, seed: int = 0) -> list[dict[str, Any]]:
    """Rows whose label is the parity of a ticket number: a surface pattern that character n-grams see
    (the last digit) and sentence embeddings do not."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        number = rng.randrange(1000, 99999)
        when = rng.choice(["today", "yesterday", "last week", "this morning"])
        rows.append(
            {
                "row": i,
                "input": f"ticket {number} was filed {when}",
                "labels": {"parity": ["odd" if number % 2 else "even"]},
                "split": "test" if i % 5 == 0 else "train",
            }
        )
    return rows


@pytest.mark.slow
def test_auto_keeps_the_candidate_that_wins_on_a_constructed_dataset(
    tmp_path: Path, embedding_cache: EmbeddingCache
) -> None:
    result = train_from_snapshot(
        rows=parity_rows(),
        heads=PARITY,
        options=TrainOptions(strategy="auto", time_budget_minutes=1, max_epochs=10, export_onnx=False),
        out_dir=tmp_path / "artifact",
        cache=embedding_cache,
    )
    names = [candidate["name"] for candidate in result.candidates if "skipped" not in candidate]
    assert names[:2] == ["tfidf", "head"] and names[-2:] == ["blend", "refit"]
    scores = {candidate["name"]: candidate.get("selection_metric") for candidate in result.candidates}
    assert scores["tfidf"] == 1.0 and scores["head"] < 0.8
    # Only TF-IDF separates parity: it wins, and the blend gives the encoder no share.
    assert result.selected == "tfidf"
    (blend,) = [candidate for candidate in result.candidates if candidate["name"] == "blend"]
    assert blend["encoder_share"] == {"parity": 0.0}
    assert [len(head.components) for head in result.artifact.model.heads] == [1]
    assert result.metrics["macro"]["f1"] == 1.0
    assert Predictor.load(result.artifact_dir).runtime_name == "tfidf"


def test_full_strategy_fine_tunes_the_encoder_on_a_tiny_input(tmp_path: Path) -> None:
    result = train_from_snapshot(
        rows=synthetic_rows(30),
        heads=HEADS,
        options=TrainOptions(strategy="full", max_epochs=2, batch_size=16, max_tokens=16, export_onnx=False),
        out_dir=tmp_path / "artifact",
    )
    assert result.selected == "full"
    assert [progress.candidate for progress in result.history] == ["full", "full"]
    assert result.artifact.config["encoder"]["fine_tuned"] is True
    assert (result.artifact_dir / "encoder" / "model.safetensors").is_file()
    assert set(result.metrics["heads"]) == {"toxicity", "topics"}


def test_no_training_rows_is_a_clear_error(tmp_path: Path) -> None:
    rows = [{**row, "split": "test"} for row in synthetic_rows(20)]
    with pytest.raises(TrainingDataError, match="no training rows"):
        train_from_snapshot(rows=rows, heads=HEADS, out_dir=tmp_path / "artifact")


def test_single_class_head_is_a_clear_error(tmp_path: Path) -> None:
    rows = [{**row, "labels": {**row["labels"], "toxicity": ["safe"]}} for row in synthetic_rows(30)]
    with pytest.raises(TrainingDataError, match="single class"):
        train_from_snapshot(rows=rows, heads=HEADS, out_dir=tmp_path / "artifact")


def test_a_base_model_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="could not be loaded") as caught:
        train_from_snapshot(
            rows=synthetic_rows(30),
            heads=HEADS,
            options=TrainOptions(strategy="head"),
            base_model=str(tmp_path / "no-such-model"),
            out_dir=tmp_path / "artifact",
        )
    assert caught.value.code == "base_model_unavailable"


def ambiguous_sports_rows() -> list[dict[str, Any]]:
    """The synthetic rows plus 100 about a stadium crowd, labelled `sports` only 60% of the time: at the
    default threshold of 0.5 they are all called sports, so `sports` cannot reach a precision of 0.99."""
    rows = synthetic_rows()
    rng = random.Random(1)
    for i in range(len(rows), len(rows) + 100):
        rows.append(
            {
                "row": i,
                "input": f"the stadium crowd {rng.choice(['today', 'again', 'tonight'])} is "
                f"{rng.choice(['loud', 'big', 'here'])}",
                "labels": {"toxicity": ["safe"], "topics": ["sports"] if rng.random() < 0.6 else []},
                "split": "test" if i % 5 == 0 else "train",
            }
        )
    return rows


def test_target_precision_raises_thresholds(tmp_path: Path, embedding_cache: EmbeddingCache) -> None:
    result = train_from_snapshot(
        rows=ambiguous_sports_rows(),
        heads=HEADS,
        options=TrainOptions(strategy="head", max_epochs=10, target_precision=0.99, export_onnx=False),
        out_dir=tmp_path / "artifact",
        cache=embedding_cache,
    )
    thresholds = result.artifact.model.head("topics").thresholds
    # Picked on the validation rows: above the ambiguous rows' scores, so above the default.
    assert thresholds["sports"] > 0.5
    sports = result.metrics["heads"]["topics"]["per_label"]["sports"]
    assert sports["precision"] < 0.99  # at the default threshold, on the test rows
    reached = sports["thresholds"]["target_precision"]
    assert reached["target"] == 0.99 and reached["precision"] >= 0.99 and reached["threshold"] > 0.5
    config_thresholds = {head["name"]: head["thresholds"] for head in result.artifact.config["heads"]}
    assert config_thresholds["topics"] == thresholds


def weighted_rows(*, toxic_weight: float, safe_weight: float) -> list[dict[str, Any]]:
    """The synthetic rows plus one text about the morning bus labelled `toxic` 20 times and `safe` 20 times:
    which label it gets is decided by the two groups' sample weights alone."""
    rows = synthetic_rows(120)
    for i in range(40):
        toxic = i % 2 == 0
        rows.append(
            {
                "row": 1000 + i,
                "input": "the morning bus again",
                "labels": {"toxicity": ["toxic" if toxic else "safe"], "topics": []},
                "split": "train",
                "weight": toxic_weight if toxic else safe_weight,
            }
        )
    return rows


@pytest.mark.parametrize("strategy", ["head", "auto"], ids=["head", "tfidf"])
def test_row_weights_decide_between_contradicting_labels(
    tmp_path: Path, embedding_cache: EmbeddingCache, strategy: str
) -> None:
    options = TrainOptions(
        strategy=strategy,  # type: ignore[arg-type]
        max_epochs=15,
        learning_rate=0.01,
        selection_rule="loss",
        early_stopping=0,
        # A tiny budget makes `auto` serve its first candidate: TF-IDF.
        time_budget_minutes=20.0 if strategy == "head" else 0.001 / 60,
        export_onnx=False,
    )
    toxic_score = {}
    for side, weights in {"toxic": (8.0, 1.0), "safe": (1.0, 8.0)}.items():
        result = train_from_snapshot(
            rows=weighted_rows(toxic_weight=weights[0], safe_weight=weights[1]),
            heads=HEADS,
            options=options,
            out_dir=tmp_path / side,
            cache=embedding_cache,
        )
        assert result.selected == ("head" if strategy == "head" else "tfidf")
        [prediction] = Predictor.load(result.artifact_dir).predict(["the morning bus again"])
        toxic_score[side] = prediction["toxicity"]["label_scores"]["toxic"]
    # Ignoring the weights, both runs see the same rows and give the same score.
    assert toxic_score["toxic"] > 0.6 > 0.4 > toxic_score["safe"], toxic_score


def test_rows_split_valid_are_the_validation_rows(tmp_path: Path, embedding_cache: EmbeddingCache) -> None:
    rows = synthetic_rows(100)
    valid = [{**row, "row": 500 + i, "split": "valid"} for i, row in enumerate(synthetic_rows(17, seed=3))]
    result = train_from_snapshot(
        rows=rows + valid,
        heads=HEADS,
        options=TrainOptions(strategy="head", max_epochs=2, export_onnx=False),
        out_dir=tmp_path / "artifact",
        cache=embedding_cache,
    )
    counts = result.metrics["training"]["rows"]
    # Every training row fits (none held out); the 17 given rows validate.
    assert counts == {"train": 80, "validation": 17, "test": 20}


@pytest.mark.parametrize("weight", [0, -1, "heavy", float("nan")])
def test_a_row_weight_that_is_not_positive_is_a_clear_error(tmp_path: Path, weight: Any) -> None:
    rows = synthetic_rows(30)
    rows[4]["weight"] = weight
    with pytest.raises(TrainingDataError, match="Row 4: weight must be a positive number"):
        train_from_snapshot(rows=rows, heads=HEADS, out_dir=tmp_path / "artifact")
