"""Label cells, column-role inference, mapping edits, and the public datasets read end to end."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.dataset.importing import (
    LabelError,
    LabelSpec,
    MappingError,
    infer_mapping,
    label_parser,
    mapping_from_dict,
    open_table,
)


@pytest.mark.parametrize(
    ("spec", "cell", "expected"),
    [
        (LabelSpec(head="toxicity"), "toxic", ["toxic"]),
        (LabelSpec(head="toxicity"), "  toxic ", ["toxic"]),
        (LabelSpec(head="toxicity"), ["toxic"], ["toxic"]),
        (LabelSpec(head="category", format="multi"), "insult|threat", ["insult", "threat"]),
        (LabelSpec(head="category", format="multi"), '["insult", "spam"]', ["insult", "spam"]),
        (LabelSpec(head="category", format="multi"), ["spam", "spam"], ["spam"]),
        (LabelSpec(head="category", format="multi"), "[]", []),
        (LabelSpec(head="category", format="multi", separator=","), "a, b", ["a", "b"]),
        (LabelSpec(head="sentiment", format="code"), "1", ["1"]),
        (LabelSpec(head="sentiment", format="code", labels=("negative", "positive")), "1", ["positive"]),
        (LabelSpec(head="sentiment", format="code", labels=("negative", "positive")), 0, ["negative"]),
        (LabelSpec(head="toxicity", format="score", labels=("non_toxic", "toxic")), "0.5", ["toxic"]),
        (LabelSpec(head="toxicity", format="score", labels=("non_toxic", "toxic")), "0,49", ["non_toxic"]),
        (LabelSpec(head="toxicity", format="score", threshold=0.8), 0.79, ["not_toxicity"]),
    ],
)
def test_label_cells(spec: LabelSpec, cell: Any, expected: list[str]) -> None:
    assert label_parser(spec)(cell) == expected


@pytest.mark.parametrize("cell", [None, "", "  ", "NULL", "null", "None", "N/A", "n/a", "nan"])
@pytest.mark.parametrize("label_format", ["single", "multi", "code", "score"])
def test_empty_and_null_cells_mean_the_head_does_not_apply(cell: Any, label_format: str) -> None:
    assert label_parser(LabelSpec(head="h", format=label_format))(cell) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "cell", "code", "message"),
    [
        (LabelSpec(head="t", labels=("safe", "toxic")), "toxik", "unknown_label", "unknown label 'toxik'"),
        (LabelSpec(head="c", format="multi"), '["a", ', "malformed_json", "malformed JSON label list"),
        (
            LabelSpec(head="s", format="code", labels=("neg", "pos")),
            "2",
            "unknown_label",
            "unknown label code 2",
        ),
        (LabelSpec(head="s", format="code"), "1.5", "malformed_label", "not a whole number"),
        (LabelSpec(head="t", format="score"), "1.7", "score_out_of_range", "outside 0..1"),
        (LabelSpec(head="t", format="score"), "high", "malformed_label", "expected a number"),
        (LabelSpec(head="t"), ["a", "b"], "several_labels", "2 labels for the single-label head"),
    ],
)
def test_bad_label_cells_say_why(spec: LabelSpec, cell: Any, code: str, message: str) -> None:
    with pytest.raises(LabelError, match=message) as error:
        label_parser(spec)(cell)
    assert error.value.code == code


def test_roles_are_inferred_from_a_sample() -> None:
    columns = [
        "id",
        "comment",
        "image",
        "meta",
        "toxicity",
        "sentiment",
        "category",
        "severity_label",
        "notes",
    ]
    rows = []
    for i in range(60):
        rows.append(
            [
                str(1000 + i),
                f"this is comment number {i}, with some words in it",
                f"https://cdn.example.com/img/{i}.jpg",
                '{"source": "forum", "lang": "en"}',
                f"0.{i % 10}5",
                str(i % 3),
                ["insult|threat", "spam", "", "threat"][i % 4],
                ["low", "high"][i % 2],
                f"free note {i} " * (i % 5),
            ]
        )
    mapping, profiles = infer_mapping(columns, rows)
    roles = {c.name: (c.role, c.format) for c in mapping.columns}
    assert roles == {
        "id": ("ignore", None),
        "comment": ("text", None),
        "image": ("image", None),
        "meta": ("json", None),
        "toxicity": ("label", "score"),
        "sentiment": ("label", "code"),
        "category": ("label", "multi"),
        "severity_label": ("label", "single"),
        "notes": ("text", None),
    }
    assert mapping.input_column == "comment"
    by_name = {p.name: p for p in profiles}
    assert by_name["category"].nulls == 15
    assert by_name["severity_label"].as_dict()["top_values"] == [
        {"value": "low", "count": 30},
        {"value": "high", "count": 30},
    ]
    assert all(p.reason for p in profiles)


def test_a_short_file_still_gets_an_input_column() -> None:
    mapping, _ = infer_mapping(["a", "b"], [["hi", "x"], ["yo", "y"]])
    assert mapping.input_column is not None


def test_mapping_edits_are_validated_and_merged() -> None:
    inferred, _ = infer_mapping(["text", "score"], [[f"some text {i}", f"0.{i}"] for i in range(1, 9)])
    edited = mapping_from_dict(
        {
            "columns": [
                {"name": "score", "head": "toxicity", "labels": ["non_toxic", "toxic"], "threshold": 0.7}
            ]
        },
        columns=["text", "score"],
        previous=inferred,
    )
    score = edited.column("score")
    assert (score.role, score.format, score.head, score.threshold) == ("label", "score", "toxicity", 0.7)
    assert label_parser(score.label_spec())("0.69") == ["non_toxic"]
    assert edited.input_column == "text"

    bad = [
        ({"columns": [{"name": "nope", "role": "text"}]}, "column 'nope' is not in the dataset"),
        ({"columns": [{"name": "text", "role": "banana"}]}, "role must be one of"),
        ({"columns": [{"name": "score", "labels": ["only-one"]}]}, "needs two labels"),
        ({"columns": [{"name": "score", "threshold": 2}]}, "threshold must be a number in 0..1"),
        ({"input_column": "score"}, "input_column 'score' must be a column with the role text or image"),
        (
            {"columns": [{"name": "text", "role": "label", "head": "x"}, {"name": "score", "head": "x"}]},
            "head 'x' is given by more than one column",
        ),
    ]
    for payload, message in bad:
        with pytest.raises(MappingError, match=message):
            mapping_from_dict(payload, columns=["text", "score"], previous=inferred)


def test_olid_reads_into_three_heads_with_the_published_counts(shared_data: Path) -> None:
    path = shared_data / "olid-training-v1.0.tsv"
    with path.open("rb") as raw:
        reader = open_table(raw, file_name=path.name)
        rows = [row for batch in reader.batches() for row in batch.rows]
    assert reader.details["delimiter"] == "tab" and reader.details["header"] is True
    assert len(rows) == 13_240
    mapping, _ = infer_mapping(reader.columns, rows[:2000])
    assert mapping.input_column == "tweet"
    counts = {}
    for column in mapping.label_columns:
        parse, index = label_parser(column.label_spec()), reader.columns.index(column.name)
        counts[column.head] = Counter(
            label for row in rows for label in (parse(row[index]) or ["<does not apply>"])
        )
    # Zampieri et al. (2019), table 3: the training split's counts per level.
    assert counts == {
        "subtask_a": {"NOT": 8840, "OFF": 4400},
        "subtask_b": {"TIN": 3876, "UNT": 524, "<does not apply>": 8840},
        "subtask_c": {"IND": 2407, "GRP": 1074, "OTH": 395, "<does not apply>": 9364},
    }
    assert rows[3][1] == '@USER Someone should\'veTaken" this piece of shit to a volcano. 😂"'


@pytest.mark.parametrize(
    "name",
    ["sentiment-amazon_cells_labelled.txt", "sentiment-imdb_labelled.txt", "sentiment-yelp_labelled.txt"],
)
def test_sentiment_files_read_without_a_header(shared_data: Path, name: str) -> None:
    data = (shared_data / name).read_bytes()
    reader = open_table(io.BytesIO(data), file_name=name)
    rows = [row for batch in reader.batches() for row in batch.rows]
    assert len(rows) == 1000 == data.count(b"\n")
    mapping, _ = infer_mapping(reader.columns, rows)
    (label_column,) = mapping.label_columns
    assert label_column.format == "code"
    assert Counter(row[1] for row in rows) == {"0": 500, "1": 500}
