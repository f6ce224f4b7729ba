"""Properties of the importers and of label cells, checked on generated inputs (hypothesis).

Round trips: a table written by Python's own `csv` or `json` modules, in any of the supported encodings and
delimiters, reads back cell for cell. Robustness: whatever bytes are uploaded, reading ends in rows and row
rejections or in one `ImportFileError`, never another exception, and every cell it yields can be stored.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.dataset.importing import (
    ImportFileError,
    ImportOptions,
    LabelError,
    LabelSpec,
    TableReader,
    label_parser,
    open_table,
)
from services.dataset.importing.labels import NULL_TOKENS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text PostgreSQL can store: no NUL, no lone surrogates.
text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
cell_text = st.text(text_chars, max_size=40)
column_name = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)


def read_all(reader: TableReader) -> tuple[list[list[Any]], list[str]]:
    rows: list[list[Any]] = []
    rejected: list[str] = []
    for batch in reader.batches(size=7):
        rows.extend(batch.rows)
        rejected.extend(str(rejection) for rejection in batch.rejected)
    return rows, rejected


@st.composite
def tables(draw: st.DrawFn, cells: st.SearchStrategy[str] = cell_text, min_columns: int = 1) -> Any:
    header = draw(st.lists(column_name, min_size=min_columns, max_size=5, unique=True))
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), min_size=1, max_size=8))
    return header, rows


def write_csv(header: list[str], rows: list[list[str]], *, delimiter: str, line_end: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# --- delimited text --------------------------------------------------------------------------------------


@PROPERTIES
@given(
    table=tables(),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    line_end=st.sampled_from(["\n", "\r\n"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
)
def test_csv_round_trips_in_every_unicode_encoding(
    table: Any, delimiter: str, line_end: str, encoding: str
) -> None:
    header, rows = table
    # csv.writer quotes a lone \r only when it is part of the line end: otherwise it writes a line break.
    assume(line_end == "\r\n" or not any("\r" in cell for row in rows for cell in row))
    data = write_csv(header, rows, delimiter=delimiter, line_end=line_end).encode(encoding)
    reader = open_table(
        io.BytesIO(data), file_name="t.csv", options=ImportOptions(delimiter=delimiter, header=True)
    )
    read, rejected = read_all(reader)
    assert reader.columns == header
    assert read == rows and not rejected


@PROPERTIES
@given(table=tables(), delimiter=st.sampled_from([",", ";", "\t", "|"]))
def test_csv_round_trips_in_a_named_legacy_encoding(table: Any, delimiter: str) -> None:
    header, rows = table
    text = write_csv(header, rows, delimiter=delimiter, line_end="\r\n")
    try:
        data = text.encode("cp1252")
    except UnicodeEncodeError:
        assume(False)
    options = ImportOptions(delimiter=delimiter, header=True, encoding="windows-1252")
    reader = open_table(io.BytesIO(data), file_name="t.csv", options=options)
    assert read_all(reader) == (rows, [])


# Cells as people type them: words (some accented), numbers and punctuation, but no candidate delimiter.
SENTENCES = (
    "the a movie was great awful you are kind rude idiot thanks Paris café naïve crème brûlée déjà vu "
    "Straße über schön Größe año mañana señor garçon façade fiancée Zoë €5 10% 3.5 ok! why? it's"
)
WORDS = SENTENCES.split()
plain_cell = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@PROPERTIES
@given(
    table=tables(plain_cell, min_columns=2),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "cp1252", "utf-16"]),
)
def test_delimiter_and_encoding_are_sniffed(table: Any, delimiter: str, encoding: str) -> None:
    header, rows = table
    data = write_csv(header, rows, delimiter=delimiter, line_end="\n").encode(encoding)
    reader = open_table(io.BytesIO(data), file_name="t.csv", options=ImportOptions(header=True))
    read, rejected = read_all(reader)
    assert (
        reader.details["delimiter"] == {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}[delimiter]
    )
    assert reader.details["encoding"] == {"utf-8": "utf-8", "cp1252": "cp1252", "utf-16": "utf-16"}[
        encoding
    ] or (encoding != "utf-16" and data.isascii() and reader.details["encoding"] == "utf-8")
    assert reader.columns == header
    assert read == rows and not rejected


# --- JSON Lines and JSON rows ----------------------------------------------------------------------------

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    cell_text,
)
json_objects = st.lists(
    st.dictionaries(column_name.filter(lambda name: name != "labels"), json_scalar, max_size=5),
    min_size=1,
    max_size=8,
)


@PROPERTIES
@given(objects=json_objects, ensure_ascii=st.booleans(), as_document=st.booleans())
def test_json_rows_round_trip(objects: list[dict[str, Any]], ensure_ascii: bool, as_document: bool) -> None:
    if as_document:
        data, name = json.dumps(objects, ensure_ascii=ensure_ascii).encode(), "rows.json"
    else:
        lines = (json.dumps(item, ensure_ascii=ensure_ascii) for item in objects)
        data, name = "\n".join(lines).encode(), "rows.jsonl"
    reader = open_table(io.BytesIO(data), file_name=name)
    read, rejected = read_all(reader)
    columns = list(dict.fromkeys(key for item in objects for key in item))
    assert reader.columns == columns and not rejected
    expected = [[item.get(column) for column in columns] for item in objects]
    assert [row + [None] * (len(columns) - len(row)) for row in read] == expected


# --- any upload ------------------------------------------------------------------------------------------


def storable(value: Any) -> bool:
    """What a PostgreSQL JSON column takes: no NaN or infinities, text without NUL or lone surrogates."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return all(storable(item) for item in value)
    if isinstance(value, dict):
        return all(storable(key) and storable(item) for key, item in value.items())
    return value is None or isinstance(value, bool | int)


json_fragments = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b":",
        b",",
        b"\n",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e999",
        b"null",
        b'"\\u0000"',
        b'"\\ud800"',
        b'"\\udfff\\ud800"',
        b'"text"',
        b"0",
        b"true",
        b"\xff",
        b"\\",
        b"[" * 50,
    ]
)


@PROPERTIES
@given(
    chunks=st.lists(st.one_of(json_fragments, st.binary(max_size=8)), max_size=30),
    name=st.sampled_from(["up.csv", "up.tsv", "up.jsonl", "up.json", "up.txt"]),
)
def test_any_upload_is_read_or_refused_with_a_reason_and_yields_storable_cells(
    chunks: list[bytes], name: str
) -> None:
    data = b"".join(chunks)
    try:
        reader = open_table(io.BytesIO(data), file_name=name)
        rows, rejected = read_all(reader)
    except ImportFileError as error:
        assert error.message and error.file_name == name
        return
    assert storable(reader.columns)
    assert all(storable(row) for row in rows)
    assert all(rejection.startswith(("line", "row")) for rejection in rejected)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"text": "a", "score": ' + b"1" * 5000 + b"}", "too large"),
        (b'{"text": "a", "score": NaN}', "NaN"),
        (b'{"text": "a", "score": Infinity}', "Infinity"),
        (b'{"text": "a", "score": -Infinity}', "Infinity"),
        (b'{"text": "a", "score": 1e999}', "too large"),
        (b"[" * 100_000, "nested"),
    ],
)
def test_json_that_cannot_be_stored_is_rejected_naming_the_line(line: bytes, reason: str) -> None:
    data = b'{"text": "fine"}\n' + line + b'\n{"text": "also fine"}\n'
    rows, rejected = read_all(open_table(io.BytesIO(data), file_name="rows.jsonl"))
    assert rows == [["fine"], ["also fine"]]
    assert len(rejected) == 1 and rejected[0].startswith("line 2:") and reason in rejected[0]


def test_nul_and_lone_surrogates_in_json_text_are_replaced_and_noted() -> None:
    data = b'{"text": "a\\u0000b", "note": "x\\ud800y", "emoji": "\\ud83d\\ude00"}\n'
    reader = open_table(io.BytesIO(data), file_name="rows.jsonl")
    rows, rejected = read_all(reader)
    assert rows == [["a\ufffdb", "x\ufffdy", "\U0001f600"]] and not rejected
    assert reader.notes == [
        "line 1: text that cannot be stored (NUL or a lone surrogate) was replaced with U+FFFD"
    ]


# --- label cells -----------------------------------------------------------------------------------------

label_text = (
    st.text(text_chars, min_size=1, max_size=20)
    .map(str.strip)
    .filter(lambda text: bool(text) and text.casefold() not in NULL_TOKENS)
)
# Extremes a JSON file can hold: integers beyond a float and beyond str(), deeply nested lists.
extreme_cells = st.builds(pow, st.sampled_from([10, -10]), st.sampled_from([400, 5000])) | st.sampled_from(
    ["1e400", "-1e400", "[" * 5000, "inf", "1_0"]
)
any_cell = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), extreme_cells),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
label_specs = st.sampled_from(["single", "multi", "code", "score"]).flatmap(
    lambda label_format: st.builds(
        LabelSpec,
        head=st.just("head"),
        format=st.just(label_format),
        # The mapping gives a score column exactly two labels: below the threshold, and at or above it.
        labels=st.none()
        | st.lists(
            label_text,
            min_size=2,
            max_size=2 if label_format == "score" else 4,
            unique=True,
        ).map(tuple),
        threshold=st.floats(min_value=0, max_value=1),
        separator=st.sampled_from(["|", ",", ";"]),
    )
)


@PROPERTIES
@given(spec=label_specs, cell=any_cell)
def test_any_cell_gives_labels_none_or_a_label_error(spec: LabelSpec, cell: Any) -> None:
    try:
        labels = label_parser(spec)(cell)
    except LabelError as error:
        assert str(error) and error.code
        return
    assert labels is None or (isinstance(labels, list) and all(isinstance(label, str) for label in labels))
    if labels is not None and spec.labels is not None:
        assert set(labels) <= set(spec.known_labels() or ())


@PROPERTIES
@given(label=label_text)
def test_a_single_label_reads_back(label: str) -> None:
    assert label_parser(LabelSpec(head="h"))(f"  {label} ") == [label]
    assert label_parser(LabelSpec(head="h", labels=(label, f"{label}!")))(label) == [label]


@PROPERTIES
@given(
    labels=st.lists(label_text, min_size=1, max_size=5, unique=True), separator=st.sampled_from(["|", ";"])
)
def test_multi_labels_read_back_from_a_separated_cell_and_a_json_list(
    labels: list[str], separator: str
) -> None:
    assume(all(separator not in label for label in labels) and not labels[0].startswith("["))
    parse = label_parser(LabelSpec(head="h", format="multi", separator=separator))
    assert parse(separator.join(labels)) == labels
    assert parse(json.dumps(labels)) == labels
    assert parse(json.dumps(labels + labels[:1])) == labels  # repeats count once


@PROPERTIES
@given(names=st.lists(label_text, min_size=2, max_size=6, unique=True), data=st.data())
def test_numeric_codes_name_their_label(names: list[str], data: st.DataObject) -> None:
    parse = label_parser(LabelSpec(head="h", format="code", labels=tuple(names)))
    code = data.draw(st.integers(min_value=0, max_value=len(names) - 1))
    for cell in (code, float(code), str(code), f"{code}.0", f" {code} "):
        assert parse(cell) == [names[code]]
    outside = data.draw(st.integers().filter(lambda n: not 0 <= n < len(names)))
    with pytest.raises(LabelError, match="unknown label code"):
        parse(outside)


@PROPERTIES
@given(score=st.floats(min_value=0, max_value=1), threshold=st.floats(min_value=0, max_value=1))
def test_scores_split_at_the_threshold(score: float, threshold: float) -> None:
    parse = label_parser(LabelSpec(head="toxic", format="score", threshold=threshold))
    expected = ["toxic" if score >= threshold else "not_toxic"]
    assert parse(score) == expected
    assert parse(repr(score)) == expected
    assert parse(repr(score).replace(".", ",")) == expected  # a decimal comma


@PROPERTIES
@given(
    score=st.floats(allow_nan=False).filter(lambda s: not 0 <= s <= 1),
)
def test_scores_outside_zero_to_one_are_refused(score: float) -> None:
    with pytest.raises(LabelError) as error:
        label_parser(LabelSpec(head="toxic", format="score"))(score)
    assert error.value.code == "score_out_of_range"


@PROPERTIES
@given(
    token=st.sampled_from(sorted(NULL_TOKENS)),
    padding=st.sampled_from(["", " ", "\t", "  "]),
    upper=st.booleans(),
    label_format=st.sampled_from(["single", "multi", "code", "score"]),
)
def test_empty_and_null_cells_in_any_case_mean_the_head_does_not_apply(
    token: str, padding: str, upper: bool, label_format: Any
) -> None:
    cell = padding + (token.upper() if upper else token) + padding
    assert label_parser(LabelSpec(head="h", format=label_format))(cell) is None
