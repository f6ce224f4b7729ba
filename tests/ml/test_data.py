"""Snapshot rows, splits, head specs and options."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from arbiter.ml import (
    HeadSpec,
    MLError,
    TrainingDataError,
    TrainOptions,
    label_is_negative,
    rows_parse,
    rows_split,
)
from arbiter.ml.data import rows_check_trainable

from .synthetic import HEADS, synthetic_rows


def test_rows_become_indicators_with_does_not_apply_masks() -> None:
    parsed = rows_parse(
        rows=[
            {
                "row": 1,
                "input": "a",
                "labels": {"toxicity": ["toxic"], "topics": ["sports", "politics"]},
                "split": "train",
            },
            {"row": 2, "input": "b", "labels": {"toxicity": ["safe"], "topics": []}, "split": "train"},
            {"row": 3, "input": "c", "labels": {"toxicity": ["safe"], "topics": None}, "split": "test"},
            {"row": 4, "input": "d", "labels": {"topics": ["politics"]}, "split": None},
        ],
        heads=HEADS,
    )
    train = parsed.train
    assert train.row_ids == (1, 2) and parsed.test.row_ids == (3,) and parsed.unassigned.row_ids == (4,)
    assert train.heads["topics"].indicators.tolist() == [[1, 1], [0, 0]]
    assert train.heads["topics"].mask.tolist() == [True, True]  # `[]` applies: "no label"
    assert parsed.test.heads["topics"].mask.tolist() == [False]  # null: does not apply
    assert parsed.unassigned.heads["toxicity"].mask.tolist() == [False]  # missing: does not apply


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"input": "x", "labels": {"toxicity": ["rude"]}, "split": "train"}, "'rude' is not one of head"),
        ({"input": "x", "labels": {"toxicity": ["safe", "toxic"]}, "split": "train"}, "exactly one label"),
        ({"input": "x", "labels": {"insult": ["yes"]}, "split": "test"}, "does not declare"),
        ({"input": "x", "labels": {"toxicity": "safe"}, "split": "train"}, "must be a list"),
        ({"input": "x", "labels": {}, "split": "validation"}, "a split is 'train', 'valid', 'test' or null"),
    ],
)
def test_rows_that_break_the_contract_are_refused_with_the_reason(row: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        rows_parse(rows=[row], heads=HEADS)


def test_split_is_stratified_and_seeded() -> None:
    rows = rows_parse(rows=[{**row, "split": None} for row in synthetic_rows(300)], heads=HEADS).unassigned
    kept, held = rows_split(rows=rows, percent=20, seed=3)
    again_kept, again_held = rows_split(rows=rows, percent=20, seed=3)
    _, other_held = rows_split(rows=rows, percent=20, seed=4)

    assert len(held) == pytest.approx(60, abs=3)
    assert held.row_ids == again_held.row_ids and kept.row_ids == again_kept.row_ids
    assert held.row_ids != other_held.row_ids
    assert set(kept.row_ids).isdisjoint(held.row_ids)
    share = held.heads["toxicity"].counts()["toxic"] / len(held)
    overall = rows.heads["toxicity"].counts()["toxic"] / len(rows)
    assert share == pytest.approx(overall, abs=0.05)


def test_a_head_with_a_single_class_is_refused() -> None:
    rows = [
        {
            "input": f"text {i}",
            "labels": {"toxicity": ["safe"], "topics": ["sports"] if i % 2 else []},
            "split": "train",
        }
        for i in range(10)
    ]
    train = rows_parse(rows=rows, heads=HEADS).train
    with pytest.raises(TrainingDataError, match="'toxicity' has a single class") as caught:
        rows_check_trainable(train=train, test=train.subset([]))
    assert caught.value.code == "invalid_training_data"
    assert caught.value.to_dict()["details"]["counts"] == {"safe": 10, "toxic": 0}


def test_test_rows_with_classes_unseen_in_training_are_refused() -> None:
    spec = HeadSpec(name="toxicity", labels=("safe", "toxic", "threat"))
    rows = [
        {"input": f"t{i}", "labels": {"toxicity": [("safe", "toxic")[i % 2]]}, "split": "train"}
        for i in range(8)
    ]
    rows.append({"input": "kill", "labels": {"toxicity": ["threat"]}, "split": "test"})
    parsed = rows_parse(rows=rows, heads=[spec])
    with pytest.raises(TrainingDataError, match=r"test rows of head 'toxicity' use label\(s\) \['threat'\]"):
        rows_check_trainable(train=parsed.train, test=parsed.test)


def test_negative_labels_are_detected_from_their_names() -> None:
    assert [
        label
        for label in ("safe", "NOT", "0", "not_toxic", "Non-offensive", "neutral", "none")
        if label_is_negative(label)
    ] == ["safe", "NOT", "0", "not_toxic", "Non-offensive", "neutral", "none"]
    assert not any(label_is_negative(label) for label in ("toxic", "OFF", "1", "nothing", "notable", "spam"))
    assert HeadSpec(name="h", labels=("OFF", "NOT")).resolved_negative_labels == ("NOT",)
    assert HeadSpec(name="h", labels=("a", "b"), negative_labels=("b",)).to_dict()["negative_labels"] == ["b"]


def test_options_validate_and_keep_unknown_keys_aside() -> None:
    options = TrainOptions.from_dict({"max_epochs": 3, "selection_rule": "f1", "max_invalid_row_percent": 5})
    assert options.max_epochs == 3 and options.extra == {"max_invalid_row_percent": 5}
    assert "extra" not in options.to_dict()
    with pytest.raises(MLError, match="Unknown selection rule"):
        TrainOptions(selection_rule="accuracy")  # type: ignore[arg-type]
    with pytest.raises(MLError, match="needs at least 2 label"):
        HeadSpec(name="toxicity", labels=("toxic",))
    assert np.isclose(TrainOptions().valid_percent, 10.0)
