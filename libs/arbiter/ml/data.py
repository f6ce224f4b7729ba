"""Snapshot rows as arrays: texts plus, per head, a label indicator matrix and an "applies" mask.

A snapshot row is `{"row": 17, "input": "text", "labels": {"toxicity": ["toxic"], "insult": null},
"split": "train"}`. `labels[head]` null or missing means the head does not apply to the row: the row is
masked out of that head's loss and metrics. For a multi-label head `[]` means "applies, no label".
`split` "valid" puts a row in the validation rows (instead of holding some training rows out). An optional
`weight` (a positive number, 1 when missing) is the row's sample weight in every training loss.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from arbiter.ml.errors import TrainingDataError
from arbiter.ml.specs import HeadSpec


@dataclass(frozen=True)
class HeadLabels:
    """Labels of one head over a set of rows.

    `indicators` is float32 `[rows, labels]` (one-hot for a multi-class head), `mask` is bool `[rows]`:
    True where the head applies. `weights` is float32 `[rows]`, each row's sample weight, or None when every
    row weighs 1 (the losses then take the unweighted path).
    """

    spec: HeadSpec
    indicators: np.ndarray
    mask: np.ndarray
    weights: np.ndarray | None = None

    def subset(self, indices: np.ndarray) -> HeadLabels:
        weights = None if self.weights is None else self.weights[indices]
        return HeadLabels(self.spec, self.indicators[indices], self.mask[indices], weights)

    def concat(self, other: HeadLabels) -> HeadLabels:
        weights = None
        if self.weights is not None or other.weights is not None:
            weights = np.concatenate([self.row_weights(), other.row_weights()])
        return HeadLabels(
            self.spec,
            np.concatenate([self.indicators, other.indicators]),
            np.concatenate([self.mask, other.mask]),
            weights,
        )

    def row_weights(self) -> np.ndarray:
        """Every row's sample weight (ones when none were given)."""
        if self.weights is None:
            return np.ones(len(self.mask), dtype=np.float32)
        return self.weights

    @property
    def class_ids(self) -> np.ndarray:
        """Multi-class heads: the label index per row (meaningless where `mask` is False)."""
        return self.indicators.argmax(axis=1)

    def counts(self) -> dict[str, int]:
        """Rows carrying each label, among the rows where the head applies."""
        totals = self.indicators[self.mask].sum(axis=0)
        return {label: int(total) for label, total in zip(self.spec.labels, totals, strict=True)}


@dataclass(frozen=True)
class LabelledRows:
    """Texts with their labels for every head, in a fixed row order."""

    row_ids: tuple[Any, ...]
    texts: tuple[str, ...]
    heads: dict[str, HeadLabels]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray | Sequence[int]) -> LabelledRows:
        index = np.asarray(indices, dtype=np.int64)
        return LabelledRows(
            row_ids=tuple(self.row_ids[i] for i in index),
            texts=tuple(self.texts[i] for i in index),
            heads={name: head.subset(index) for name, head in self.heads.items()},
        )

    def concat(self, other: LabelledRows) -> LabelledRows:
        return LabelledRows(
            row_ids=self.row_ids + other.row_ids,
            texts=self.texts + other.texts,
            heads={name: head.concat(other.heads[name]) for name, head in self.heads.items()},
        )


@dataclass(frozen=True)
class SnapshotRows:
    """Rows of a snapshot sorted by their `split`: "train", "valid", "test", or None (the caller decides)."""

    train: LabelledRows
    valid: LabelledRows
    test: LabelledRows
    unassigned: LabelledRows


def rows_parse(*, rows: Iterable[Mapping[str, Any]], heads: Sequence[HeadSpec]) -> SnapshotRows:
    """Turn snapshot rows into arrays, checking every label against the head specs."""
    specs = {spec.name: spec for spec in heads}
    index = {spec.name: {label: i for i, label in enumerate(spec.labels)} for spec in heads}
    buckets: dict[str | None, tuple[list[Any], list[str], dict[str, list[list[str] | None]]]] = {
        split: ([], [], {name: [] for name in specs}) for split in ("train", "valid", "test", None)
    }
    weights: dict[str | None, list[float]] = {split: [] for split in buckets}
    for position, row in enumerate(rows):
        row_id = row.get("row", position)
        split = row.get("split")
        if split not in buckets:
            raise TrainingDataError(
                f"Row {row_id} has split {split!r}; a split is 'train', 'valid', 'test' or null.",
                details={"row": row_id},
            )
        text = row.get("input")
        if not isinstance(text, str):
            raise TrainingDataError(f"Row {row_id} has no text input.", details={"row": row_id})
        labels = row.get("labels") or {}
        unknown = set(labels) - set(specs)
        if unknown:
            raise TrainingDataError(
                f"Row {row_id} ({split or 'unassigned'}) has labels for head(s) {sorted(unknown)} that the "
                f"snapshot does not declare (heads: {sorted(specs)}). Use rows and heads from one snapshot.",
                details={"row": row_id, "heads": sorted(unknown)},
            )
        ids, texts, values = buckets[split]
        weights[split].append(_row_weight(row_id=row_id, value=row.get("weight", 1.0)))
        ids.append(row_id)
        texts.append(text)
        for name, spec in specs.items():
            value = labels.get(name)
            if value is not None:
                _check_labels(row_id=row_id, spec=spec, value=value, known=index[name])
            values[name].append(value)
    # A snapshot whose rows all weigh 1 keeps the unweighted losses (weights None).
    weighted = any(weight != 1.0 for split in weights.values() for weight in split)
    parsed = {
        split: _to_arrays(
            ids=ids,
            texts=texts,
            values=values,
            specs=specs,
            index=index,
            weights=np.asarray(weights[split], dtype=np.float32) if weighted else None,
        )
        for split, (ids, texts, values) in buckets.items()
    }
    return SnapshotRows(
        train=parsed["train"], valid=parsed["valid"], test=parsed["test"], unassigned=parsed[None]
    )


def _row_weight(*, row_id: Any, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise TrainingDataError(
            f"Row {row_id}: weight must be a positive number, got {value!r}.", details={"row": row_id}
        )
    return float(value)


def _check_labels(*, row_id: Any, spec: HeadSpec, value: Any, known: Mapping[str, int]) -> None:
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise TrainingDataError(
            f"Row {row_id}: labels of head '{spec.name}' must be a list of label names or null, "
            f"got {value!r}.",
            details={"row": row_id, "head": spec.name},
        )
    if not spec.multi_label and len(value) != 1:
        raise TrainingDataError(
            f"Row {row_id}: head '{spec.name}' is multi-class and needs exactly one label (or null when it "
            f"does not apply), got {value}.",
            details={"row": row_id, "head": spec.name},
        )
    for label in value:
        if label not in known:
            raise TrainingDataError(
                f"Row {row_id}: label '{label}' is not one of head '{spec.name}' labels {list(spec.labels)}.",
                details={"row": row_id, "head": spec.name, "label": label},
            )


def _to_arrays(
    *,
    ids: list[Any],
    texts: list[str],
    values: dict[str, list[list[str] | None]],
    specs: Mapping[str, HeadSpec],
    index: Mapping[str, Mapping[str, int]],
    weights: np.ndarray | None,
) -> LabelledRows:
    heads = {}
    for name, spec in specs.items():
        indicators = np.zeros((len(texts), len(spec.labels)), dtype=np.float32)
        mask = np.zeros(len(texts), dtype=bool)
        for i, value in enumerate(values[name]):
            if value is None:
                continue
            mask[i] = True
            for label in value:
                indicators[i, index[name][label]] = 1.0
        heads[name] = HeadLabels(spec, indicators, mask, weights)
    return LabelledRows(row_ids=tuple(ids), texts=tuple(texts), heads=heads)


def rows_split(*, rows: LabelledRows, percent: float, seed: int) -> tuple[LabelledRows, LabelledRows]:
    """Split rows into (kept, held out) with `percent` held out, stratified and seeded.

    Rows are grouped by their rarest label over all heads, so a rare class lands on both sides whenever
    it has at least two rows, and the same seed always gives the same split.
    """
    count = len(rows)
    if percent <= 0 or count == 0:
        return rows, rows.subset([])
    frequency: Counter[tuple[str, int]] = Counter()
    for name, head in rows.heads.items():
        for label_index, total in enumerate(head.indicators[head.mask].sum(axis=0)):
            frequency[(name, label_index)] = int(total)
    groups: dict[tuple[str, int] | None, list[int]] = {}
    for i in range(count):
        present = [
            (name, int(label_index))
            for name, head in rows.heads.items()
            if head.mask[i]
            for label_index in np.flatnonzero(head.indicators[i])
        ]
        key = min(present, key=lambda item: (frequency[item], item)) if present else None
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for key in sorted(groups, key=lambda item: (item is None, item or ("", 0))):
        members = np.array(groups[key])
        rng.shuffle(members)
        take = int(round(len(members) * percent / 100.0))
        if take == len(members) and len(members) > 1:
            take -= 1
        held.extend(members[:take].tolist())
    held_set = set(held)
    kept = [i for i in range(count) if i not in held_set]
    return rows.subset(kept), rows.subset(sorted(held))


def rows_check_trainable(*, train: LabelledRows, test: LabelledRows) -> list[str]:
    """Raise TrainingDataError when the rows cannot train or test every head; return warnings."""
    if len(train) == 0:
        raise TrainingDataError(
            "The snapshot has no training rows. Add labelled rows, or lower the test share so some rows "
            "are used for training.",
        )
    warnings: list[str] = []
    for name, head in train.heads.items():
        applicable = int(head.mask.sum())
        if applicable == 0:
            raise TrainingDataError(
                f"Head '{name}' has no training rows: every row has null for it. Label some rows for "
                f"'{name}' or remove the head from the snapshot.",
                details={"head": name},
            )
        counts = head.counts()
        if head.spec.multi_label:
            distinct = {tuple(row) for row in head.indicators[head.mask].astype(np.int8).tolist()}
            if len(distinct) < 2:
                raise TrainingDataError(
                    f"Head '{name}' has a single class in the training data: all {applicable} rows carry "
                    f"the same labels. Add rows with other labels (or with none, `[]`).",
                    details={"head": name, "counts": counts},
                )
        else:
            present = [label for label, total in counts.items() if total]
            if len(present) < 2:
                raise TrainingDataError(
                    f"Head '{name}' has a single class in the training data ({present[0]!r} on all "
                    f"{applicable} rows). Add rows of at least one other label: {list(head.spec.labels)}.",
                    details={"head": name, "counts": counts},
                )
        for label, total in counts.items():
            if total == 0:
                warnings.append(
                    f"Label '{label}' of head '{name}' has no training rows; it cannot be predicted."
                )
        test_head = test.heads[name]
        if len(test) and not test_head.mask.any():
            warnings.append(f"Head '{name}' has no test rows; its metrics are empty.")
        test_counts = test_head.counts()
        unseen = [label for label, total in test_counts.items() if total and not counts[label]]
        if unseen:
            raise TrainingDataError(
                f"The test rows of head '{name}' use label(s) {unseen} that no training row has. Add "
                f"training rows for them, or test on a snapshot with the same classes.",
                details={"head": name, "labels": unseen},
            )
    return warnings
