"""Metrics on small hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from arbiter.ml import HeadSpec
from arbiter.ml.data import HeadLabels, LabelledRows
from arbiter.ml.metrics import (
    head_evaluate,
    model_evaluate,
    precision_recall_points,
    selection_score,
    threshold_best_f1,
    threshold_for_precision,
)

TOXICITY = HeadSpec(name="toxicity", labels=("safe", "toxic", "threat"))
TOPICS = HeadSpec(name="topics", labels=("sports", "politics"), multi_label=True)


def _labels(spec: HeadSpec, rows: list[list[str] | None]) -> HeadLabels:
    indicators = np.zeros((len(rows), len(spec.labels)), dtype=np.float32)
    for i, labels in enumerate(rows):
        for label in labels or []:
            indicators[i, spec.labels.index(label)] = 1
    return HeadLabels(spec, indicators, np.array([labels is not None for labels in rows]))


def test_multi_class_confusion_matrix_and_per_label_numbers() -> None:
    truth = _labels(TOXICITY, [["safe"], ["safe"], ["toxic"], ["toxic"], ["threat"], None])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],  # safe   -> safe
            [0.3, 0.6, 0.1],  # safe   -> toxic
            [0.2, 0.7, 0.1],  # toxic  -> toxic
            [0.1, 0.2, 0.7],  # toxic  -> threat
            [0.1, 0.1, 0.8],  # threat -> threat
            [0.0, 1.0, 0.0],  # does not apply: ignored everywhere
        ]
    )
    result = head_evaluate(probabilities=probabilities, labels=truth)

    assert result["support"] == 5
    assert result["confusion_matrix"] == {
        "labels": ["safe", "toxic", "threat"],
        "matrix": [[1, 1, 0], [0, 1, 1], [0, 0, 1]],
    }
    toxic = result["per_label"]["toxic"]
    assert toxic["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 2}
    assert toxic["precision"] == 0.5 and toxic["recall"] == 0.5 and toxic["f1"] == 0.5
    assert toxic["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2, abs=1e-6)
    assert result["accuracy"] == 0.6
    # Mean recall over classes: (1/2 + 1/2 + 1) / 3.
    assert result["macro"]["balanced_accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    # F1 per class: safe 2/3, toxic 1/2, threat 2/3.
    assert result["macro"]["f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert result["per_label"]["safe"]["thresholds"]["default"] is None
    json.dumps(result)


def test_multi_label_uses_half_as_default_threshold_and_masks_null_rows() -> None:
    truth = _labels(TOPICS, [["sports"], ["sports", "politics"], [], ["politics"], None])
    probabilities = np.array([[0.9, 0.2], [0.6, 0.4], [0.7, 0.1], [0.1, 0.95], [0.99, 0.99]])
    result = head_evaluate(probabilities=probabilities, labels=truth)

    sports = result["per_label"]["sports"]
    assert sports["confusion"] == {"tp": 2, "fp": 1, "fn": 0, "tn": 1}
    assert sports["thresholds"]["default"] == 0.5
    politics = result["per_label"]["politics"]
    assert politics["confusion"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}
    assert result["confusion_matrix"] is None
    # Exact label-set match: rows 0 and 3 only.
    assert result["accuracy"] == 0.5
    # Raising the politics threshold to 0.4 catches row 1 without a false positive.
    assert politics["thresholds"]["best_f1"] == {"threshold": 0.4, "precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_precision_recall_points_and_thresholds() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    positives = np.array([True, False, True, True, False, True])

    thresholds, precision, recall = precision_recall_points(scores, positives)

    # Tied scores (0.5) form a single point.
    assert thresholds.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert precision.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4, 4 / 6])
    assert recall.tolist() == pytest.approx([1 / 4, 1 / 4, 2 / 4, 3 / 4, 1])
    best = threshold_best_f1(scores, positives)
    assert best is not None and best["threshold"] == 0.5 and best["f1"] == pytest.approx(0.8)
    reached = threshold_for_precision(scores, positives, 0.75)
    assert reached is not None and reached["threshold"] == 0.6 and reached["recall"] == 0.75
    assert threshold_for_precision(scores, positives, 1.0)["threshold"] == 0.9  # type: ignore[index]
    assert threshold_for_precision(scores, np.zeros(6, dtype=bool), 0.5) is None


def test_pr_curve_is_downsampled_to_about_a_hundred_points() -> None:
    rng = np.random.default_rng(0)
    truth = _labels(TOPICS, [["sports"] if rng.random() < 0.3 else [] for _ in range(1000)])
    probabilities = rng.random((1000, 2))
    result = head_evaluate(probabilities=probabilities, labels=truth, target_precision=0.3)

    curve = result["per_label"]["sports"]["pr_curve"]
    assert 50 <= len(curve) <= 101
    assert [point["threshold"] for point in curve] == sorted(
        (point["threshold"] for point in curve), reverse=True
    )
    assert curve[-1]["recall"] == 1.0
    reached = result["per_label"]["sports"]["thresholds"]["target_precision"]
    assert reached["target"] == 0.3 and reached["precision"] >= 0.3
    # No positive rows for politics: no curve, no thresholds, but still counted.
    assert result["per_label"]["politics"]["pr_curve"] == []
    assert result["per_label"]["politics"]["thresholds"]["best_f1"] is None


def test_model_evaluate_macro_over_heads_and_selection_rules() -> None:
    rows = LabelledRows(
        row_ids=(1, 2, 3, 4),
        texts=("a", "b", "c", "d"),
        heads={
            "toxicity": _labels(TOXICITY, [["safe"], ["toxic"], ["threat"], None]),
            "topics": _labels(TOPICS, [None, None, None, None]),
        },
    )
    probabilities = {
        "toxicity": np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]),
        "topics": np.full((4, 2), 0.5),
    }
    result = model_evaluate(probabilities=probabilities, rows=rows)

    assert result["rows"] == 4 and result["split"] == "test"
    assert result["heads"]["topics"]["support"] == 0
    assert result["heads"]["topics"]["macro"]["f1"] is None
    # The head without rows is left out of the macro average.
    assert result["macro"]["f1"] == 1.0
    assert selection_score(probabilities=probabilities, rows=rows, rule="f1")[0] == 1.0
    loss_score, per_head = selection_score(probabilities=probabilities, rows=rows, rule="loss")
    assert loss_score == pytest.approx((np.log(0.9) + 2 * np.log(0.8)) / 3)
    assert set(per_head) == {"toxicity"}
    json.dumps(result)


def _from_definitions(
    scores: list[float], positives: list[bool], threshold: float
) -> dict[str, float | None]:
    """One label's numbers computed from their textbook definitions, in plain Python: the independent side
    of the cross-check against the scikit-learn-backed module."""
    decided = [score >= threshold for score in scores]
    tp = sum(d and p for d, p in zip(decided, positives))
    fp = sum(d and not p for d, p in zip(decided, positives))
    fn = sum(not d and p for d, p in zip(decided, positives))
    tn = sum(not d and not p for d, p in zip(decided, positives))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    balanced = (recall + tn / (tn + fp)) / 2 if (tp + fn) and (tn + fp) else None
    # Average precision: precision at each distinct threshold, weighted by the recall it adds.
    average_precision, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        hits = [p for s, p in zip(scores, positives) if s >= t]
        point_recall = sum(hits) / sum(positives)
        average_precision += (point_recall - previous_recall) * sum(hits) / len(hits)
        previous_recall = point_recall
    loss = -sum(math.log(s if p else 1 - s) for s, p in zip(scores, positives)) / len(scores)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "balanced_accuracy": balanced,
        "average_precision": average_precision,
        "loss": loss,
    }


def test_numbers_agree_with_a_hand_worked_example_and_the_definitions() -> None:
    spec = HeadSpec(name="spam", labels=("spam", "promo"), multi_label=True)
    spam_scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.3, 0.2]
    spam_truth = [True, False, True, True, False, True, False, False]
    indicators = np.zeros((8, 2), dtype=np.float32)
    indicators[:, 0] = spam_truth
    indicators[[1, 6], 1] = 1
    probabilities = np.array([[s, 0.5 if i in (1, 6) else 0.25] for i, s in enumerate(spam_scores)])
    result = head_evaluate(
        probabilities=probabilities, labels=HeadLabels(spec, indicators, np.ones(8, dtype=bool))
    )
    spam = result["per_label"]["spam"]

    # By hand, at the default threshold 0.5: rows 0-5 are predicted spam; 4 of them are, none is missed.
    assert spam["confusion"] == {"tp": 4, "fp": 2, "fn": 0, "tn": 2}
    assert spam["precision"] == pytest.approx(4 / 6, abs=1e-6) and spam["recall"] == 1.0
    assert spam["f1"] == pytest.approx(0.8, abs=1e-6)
    assert spam["balanced_accuracy"] == pytest.approx((1 + 2 / 4) / 2, abs=1e-6)
    # Recall steps 1/4 at 0.9 (precision 1), 2/4 at 0.7 (2/3), 3/4 at 0.6 (3/4), 4/4 at 0.5 (4/6).
    assert spam["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4, abs=1e-6)
    reference = _from_definitions(spam_scores, spam_truth, 0.5)
    for key in ("precision", "recall", "f1", "balanced_accuracy", "average_precision"):
        assert spam[key] == pytest.approx(reference[key], abs=1e-6), key
    promo = _from_definitions([float(p) for p in probabilities[:, 1]], [i in (1, 6) for i in range(8)], 0.5)
    assert result["loss"] == pytest.approx((reference["loss"] + promo["loss"]) / 2, abs=1e-6)


def test_numbers_agree_with_the_definitions_on_random_rows_with_ties() -> None:
    rng = np.random.default_rng(7)
    spec = HeadSpec(name="flags", labels=("a", "b", "c"), multi_label=True)
    scores = rng.integers(1, 20, size=(60, 3)) / 20  # coarse scores: many ties
    truth = rng.random((60, 3)) < 0.4
    result = head_evaluate(
        probabilities=scores, labels=HeadLabels(spec, truth.astype(np.float32), np.ones(60, dtype=bool))
    )
    losses = []
    for i, label in enumerate(spec.labels):
        reference = _from_definitions(scores[:, i].tolist(), truth[:, i].tolist(), 0.5)
        for key in ("precision", "recall", "f1", "balanced_accuracy", "average_precision"):
            assert result["per_label"][label][key] == pytest.approx(reference[key], abs=1e-6), (label, key)
        losses.append(reference["loss"])
    assert result["loss"] == pytest.approx(np.mean(losses), abs=1e-6)
