"""Evaluation of predicted probabilities against labelled rows, per head and per label.

Rows where a head does not apply (its labels are null) are left out of that head's numbers.
Decisions use each head's default rule: argmax for a multi-class head, score >= 0.5 per label for a
multi-label head. Per label, the numbers are one-vs-rest.

`model_evaluate` returns this JSON-serialisable dict (the API serves it verbatim; floats are rounded
to 6 decimals):

    {
      "split": "test",                 # or "validation" when the snapshot had no test rows
      "rows": 2648,                    # rows evaluated (any head)
      "macro": {"precision", "recall", "f1", "balanced_accuracy", "loss"},   # mean over heads
      "weighted_f1": 0.88,             # mean over heads of each head's support-weighted F1
      "heads": {
        "<head>": {
          "multi_label": false,
          "labels": ["NOT", "OFF"],    # the label order used everywhere below
          "support": 2648,             # rows where the head applies
          "accuracy": 0.79,            # multi-class: share correct; multi-label: exact label-set match
          "loss": 0.45,                # mean cross-entropy (multi-class) or binary cross-entropy
          "macro": {"precision", "recall", "f1", "balanced_accuracy"},
          "weighted_f1": 0.88,         # F1 per label weighted by its support (what papers often report)
          "per_label": {
            "<label>": {
              "support": 880,          # applicable rows that carry the label
              "predicted": 812,        # applicable rows predicted with the label
              "precision", "recall", "f1",
              "balanced_accuracy",     # (true-positive rate + true-negative rate) / 2
              "average_precision",     # area under the PR curve (step-wise), null without positives
              "confusion": {"tp", "fp", "fn", "tn"},
              "pr_curve": [{"threshold", "precision", "recall"}, ...],   # <= 101 points, by threshold desc
              "thresholds": {
                "default": 0.5,        # multi-label: 0.5; multi-class: null (argmax decides)
                "best_f1": {"threshold", "precision", "recall", "f1"} | null,
                "target_precision": {"target", "threshold", "precision", "recall", "f1"} | null
              }
            }
          },
          # multi-class heads only (null for multi-label): rows = true label, columns = predicted
          "confusion_matrix": {"labels": [...], "matrix": [[...]]} | null
        }
      }
    }

`train_from_snapshot` writes this dict to metrics.json with two more keys:

    "training": {"strategy", "selected", "selection_rule", "selection_head", "selection_metric",
                 "best_epoch", "rows": {"train", "validation", "test"},
                 "history": [EpochProgress.to_dict(), ...],     # per epoch: train/valid loss, metric
                 "candidates": [{"name", "selection_metric", "seconds", ...}, ...],   # auto only
                 "warnings": [...], "kept_heads": [...], "initialised_from_parent": [...]},
    "inherited_heads": {"<head>": {...}}    # an update's kept heads: their metrics from the parent

Macro averages run over the labels that occur in the rows or in the predictions (as scikit-learn
does); a head's balanced accuracy is its mean recall (multi-class) or the mean of its labels'
balanced accuracies (multi-label). Weighted F1 lets a common class hide a rare one, so it is reported
beside the macro numbers, never instead of them. Precision of a label never predicted is 0. Metrics of a head
without applicable rows are null. Thresholds picked here are picked on the evaluated rows: they show
what a threshold would give, the artifact's own thresholds are chosen on the validation rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn import metrics as sk

from arbiter.ml.data import HeadLabels, LabelledRows

PR_CURVE_POINTS = 100


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def head_predictions(probabilities: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """Boolean `[rows, labels]` decisions by the head's default rule."""
    if multi_label:
        return probabilities >= 0.5
    decided = np.zeros_like(probabilities, dtype=bool)
    if len(probabilities):
        decided[np.arange(len(probabilities)), probabilities.argmax(axis=1)] = True
    return decided


def head_loss(probabilities: np.ndarray, labels: HeadLabels) -> float | None:
    """Mean cross-entropy over the applicable rows (binary cross-entropy per label for multi-label)."""
    if not labels.mask.any():
        return None
    p = probabilities[labels.mask]
    y = labels.indicators[labels.mask] > 0.5
    if labels.spec.multi_label:
        # Every (row, label) cell is one binary decision: the mean over cells is the mean per-label BCE.
        return float(sk.log_loss(y.ravel(), p.ravel(), labels=[False, True]))
    return float(sk.log_loss(y.argmax(axis=1), p, labels=np.arange(len(labels.spec.labels))))


def precision_recall_points(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, ...]:
    """(thresholds desc, precision, recall) at every distinct score: predict positive when score >= t."""
    precision, recall, thresholds = sk.precision_recall_curve(positives, scores)
    # scikit-learn orders by threshold ascending and appends the (precision 1, recall 0) end point.
    return thresholds[::-1], precision[-2::-1], recall[-2::-1]


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def threshold_best_f1(scores: np.ndarray, positives: np.ndarray) -> dict[str, float] | None:
    """The score threshold with the highest F1 (the highest threshold among ties)."""
    if not positives.any():
        return None
    thresholds, precision, recall = precision_recall_points(scores, positives)
    f1 = _f1(precision, recall)
    best = int(np.argmax(f1))
    return {
        "threshold": float(thresholds[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "f1": float(f1[best]),
    }


def threshold_for_precision(
    scores: np.ndarray, positives: np.ndarray, target: float
) -> dict[str, float] | None:
    """The lowest threshold whose precision reaches `target` (so the most recall); None if none does."""
    if not positives.any():
        return None
    thresholds, precision, recall = precision_recall_points(scores, positives)
    reaching = np.flatnonzero(precision >= target - 1e-12)
    if not len(reaching):
        return None
    best = int(reaching[np.argmax(recall[reaching])])
    return {
        "target": float(target),
        "threshold": float(thresholds[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "f1": float(_f1(precision[best : best + 1], recall[best : best + 1])[0]),
    }


def _balanced_accuracy(positives: np.ndarray, decided: np.ndarray) -> float | None:
    """One label's (true-positive rate + true-negative rate) / 2; None unless both classes occur."""
    if positives.all() or not positives.any():
        return None
    return float(sk.balanced_accuracy_score(positives, decided))


def _downsample(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit + 1).round().astype(np.int64))


def _label_metrics(
    *, scores: np.ndarray, positives: np.ndarray, decided: np.ndarray, multi_label: bool, target: float | None
) -> dict[str, Any]:
    tn = fp = fn = tp = 0
    precision = recall = f1 = 0.0
    if len(positives):  # scikit-learn refuses empty inputs: a head without applicable rows counts nothing
        tn, fp, fn, tp = (
            int(n) for n in sk.confusion_matrix(positives, decided, labels=[False, True]).ravel()
        )
        precision, recall, f1, _ = sk.precision_recall_fscore_support(
            positives, decided, average="binary", pos_label=True, zero_division=0.0
        )
    balanced = _balanced_accuracy(positives, decided)
    curve: list[dict[str, float | None]] = []
    average_precision = None
    if positives.any():
        average_precision = float(sk.average_precision_score(positives, scores))
        thresholds, precisions, recalls = precision_recall_points(scores, positives)
        curve = [
            {
                "threshold": _round(thresholds[i]),
                "precision": _round(precisions[i]),
                "recall": _round(recalls[i]),
            }
            for i in _downsample(len(thresholds), PR_CURVE_POINTS)
        ]
    best = threshold_best_f1(scores, positives)
    reached = threshold_for_precision(scores, positives, target) if target is not None else None
    return {
        "support": int(positives.sum()),
        "predicted": int(decided.sum()),
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "balanced_accuracy": _round(balanced),
        "average_precision": _round(average_precision),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "pr_curve": curve,
        "thresholds": {
            "default": 0.5 if multi_label else None,
            "best_f1": None if best is None else {key: _round(value) for key, value in best.items()},
            "target_precision": None
            if reached is None
            else {key: _round(value) for key, value in reached.items()},
        },
    }


def head_evaluate(
    *,
    probabilities: np.ndarray,
    labels: HeadLabels,
    target_precision: float | None = None,
    decided: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one head (see the module docstring for the shape).

    `decided` (boolean `[rows, labels]`) gives decisions made elsewhere, such as a policy model's verdicts,
    which need not follow the head's default rule on the scores; the scores still draw the PR curves."""
    spec = labels.spec
    probabilities = probabilities[labels.mask]
    truth = labels.indicators[labels.mask] > 0.5
    decided = (
        head_predictions(probabilities, multi_label=spec.multi_label)
        if decided is None
        else decided[labels.mask]
    )
    per_label = {
        label: _label_metrics(
            scores=probabilities[:, i],
            positives=truth[:, i],
            decided=decided[:, i],
            multi_label=spec.multi_label,
            target=target_precision,
        )
        for i, label in enumerate(spec.labels)
    }
    support = int(labels.mask.sum())
    result: dict[str, Any] = {
        "multi_label": spec.multi_label,
        "labels": list(spec.labels),
        "support": support,
        "accuracy": None,
        "loss": _round(head_loss(probabilities, labels.subset(np.flatnonzero(labels.mask)))),
        "macro": {"precision": None, "recall": None, "f1": None, "balanced_accuracy": None},
        "weighted_f1": None,
        "per_label": per_label,
        "confusion_matrix": None,
    }
    if not support:
        if not spec.multi_label:
            matrix = np.zeros((len(spec.labels), len(spec.labels)), dtype=np.int64)
            result["confusion_matrix"] = {"labels": list(spec.labels), "matrix": matrix.tolist()}
        return result
    # Macro averages over the labels that occur in the rows or in the predictions, as scikit-learn does.
    occurring = [i for i, m in enumerate(per_label.values()) if m["support"] or m["predicted"]]
    precision, recall, f1, _ = sk.precision_recall_fscore_support(
        truth, decided, labels=occurring, average="macro", zero_division=0.0
    )
    if spec.multi_label:
        # Exact label-set match per row.
        result["accuracy"] = _round(sk.accuracy_score(truth, decided))
        balanced = [m["balanced_accuracy"] for m in per_label.values() if m["balanced_accuracy"] is not None]
        balanced_accuracy = float(np.mean(balanced)) if balanced else None
    else:
        truth_ids, decided_ids = truth.argmax(axis=1), decided.argmax(axis=1)
        matrix = sk.confusion_matrix(truth_ids, decided_ids, labels=np.arange(len(spec.labels)))
        result["confusion_matrix"] = {"labels": list(spec.labels), "matrix": matrix.tolist()}
        result["accuracy"] = _round(sk.accuracy_score(truth_ids, decided_ids))
        balanced_accuracy = _multi_class_balanced_accuracy(truth_ids, decided_ids)
    if occurring:
        result["weighted_f1"] = _round(
            sk.f1_score(truth, decided, labels=occurring, average="weighted", zero_division=0.0)
        )
    result["macro"] = {
        "precision": _round(precision) if occurring else None,
        "recall": _round(recall) if occurring else None,
        "f1": _round(f1) if occurring else None,
        "balanced_accuracy": _round(balanced_accuracy),
    }
    return result


def _multi_class_balanced_accuracy(truth_ids: np.ndarray, decided_ids: np.ndarray) -> float:
    """Mean recall over the classes present in the rows (scikit-learn's balanced accuracy, without its
    warning when a class that never occurs is predicted)."""
    return float(sk.recall_score(truth_ids, decided_ids, labels=np.unique(truth_ids), average="macro"))


def model_evaluate(
    *,
    probabilities: Mapping[str, np.ndarray],
    rows: LabelledRows,
    split: str = "test",
    target_precision: float | None = None,
) -> dict[str, Any]:
    """Metrics of every head of `rows` from the predicted probabilities (see the module docstring)."""
    heads = {
        name: head_evaluate(
            probabilities=probabilities[name], labels=labels, target_precision=target_precision
        )
        for name, labels in rows.heads.items()
    }
    macro: dict[str, float | None] = {}
    for key in ("precision", "recall", "f1", "balanced_accuracy", "loss"):
        values = [
            (head["loss"] if key == "loss" else head["macro"][key])
            for head in heads.values()
            if head["support"]
        ]
        present = [value for value in values if value is not None]
        macro[key] = _round(np.mean(present)) if present else None
    weighted = [head["weighted_f1"] for head in heads.values() if head["weighted_f1"] is not None]
    return {
        "split": split,
        "rows": len(rows),
        "macro": macro,
        "weighted_f1": _round(np.mean(weighted)) if weighted else None,
        "heads": heads,
    }


def head_score(*, probabilities: np.ndarray, labels: HeadLabels, rule: str) -> float | None:
    """One head's selection score, higher is better (the loss is negated); None without rows."""
    if not labels.mask.any():
        return None
    if rule == "loss":
        loss = head_loss(probabilities, labels)
        return None if loss is None else -loss
    probabilities = probabilities[labels.mask]
    truth = labels.indicators[labels.mask] > 0.5
    decided = head_predictions(probabilities, multi_label=labels.spec.multi_label)
    if rule == "f1":
        occurring = np.flatnonzero(truth.any(axis=0) | decided.any(axis=0))
        if not len(occurring):
            return 0.0
        return float(sk.f1_score(truth, decided, labels=occurring, average="macro", zero_division=0.0))
    if labels.spec.multi_label:
        balanced = [
            score
            for i in range(truth.shape[1])
            if (score := _balanced_accuracy(truth[:, i], decided[:, i])) is not None
        ]
        return float(np.mean(balanced)) if balanced else 0.0
    return _multi_class_balanced_accuracy(truth.argmax(axis=1), decided.argmax(axis=1))


def selection_score(
    *, probabilities: Mapping[str, np.ndarray], rows: LabelledRows, rule: str, head: str | None = None
) -> tuple[float, dict[str, float]]:
    """(score, per-head scores) by the selection rule; the score is the mean over heads or `head`'s.

    Higher is better for every rule: for `loss` the score is the negated loss.
    """
    per_head = {
        name: score
        for name, labels in rows.heads.items()
        if (score := head_score(probabilities=probabilities[name], labels=labels, rule=rule)) is not None
    }
    if head is not None:
        return per_head.get(head, float("-inf")), per_head
    return (float(np.mean(list(per_head.values()))) if per_head else float("-inf")), per_head
