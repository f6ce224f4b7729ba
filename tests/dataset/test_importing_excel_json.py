"""Excel workbooks (with zip-bomb defences), JSON Lines and JSON rows."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import openpyxl
import pytest

from services.dataset.importing import ImportFileError, ImportOptions, JsonRowsReader, TableReader, open_table


def collect(reader: TableReader) -> tuple[list[list[Any]], list[str]]:
    rows: list[list[Any]] = []
    rejected: list[str] = []
    for batch in reader.batches(size=3):
        rows.extend(batch.rows)
        rejected.extend(str(r) for r in batch.rejected)
    return rows, rejected


def workbook_bytes(rows: list[list[Any]], *, title: str = "Sheet1") -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_excel_rows_and_types() -> None:
    data = workbook_bytes(
        [
            ["text", "toxicity", "score", "flagged"],
            ["<script>alert(1)</script> 🙂", "toxic", 0.87, True],
            ["fine", "safe", 0, False],
            [None, None, None, None],
            ["only text", None, None, None],
        ]
    )
    reader = open_table(io.BytesIO(data), file_name="labels.xlsx")
    rows, rejected = collect(reader)
    assert reader.format == "xlsx"
    assert reader.columns == ["text", "toxicity", "score", "flagged"]
    assert rows == [
        ["<script>alert(1)</script> 🙂", "toxic", "0.87", "TRUE"],
        ["fine", "safe", "0", "FALSE"],
        ["only text", None, None, None],
    ]
    assert not rejected


def test_excel_values_beyond_the_header_are_rejected_with_the_row() -> None:
    data = workbook_bytes([["text", "label"], ["a", "x"], ["b", "y", "stray"], ["c", "z"]])
    rows, rejected = collect(open_table(io.BytesIO(data), file_name="book.xlsx"))
    assert rows == [["a", "x"], ["c", "z"]]
    assert rejected == ["row 3: expected 2 columns, got a value in column C"]


def test_excel_named_sheet() -> None:
    book = openpyxl.Workbook()
    book.active.append(["ignored"])
    second = book.create_sheet("Labels")
    second.append(["text", "label"])
    second.append(["hello there friend", "safe"])
    buffer = io.BytesIO()
    book.save(buffer)
    reader = open_table(
        io.BytesIO(buffer.getvalue()), file_name="b.xlsx", options=ImportOptions(sheet="Labels")
    )
    assert collect(reader)[0] == [["hello there friend", "safe"]]
    with pytest.raises(ImportFileError, match="no sheet named 'Nope'; the workbook has Sheet, Labels"):
        open_table(io.BytesIO(buffer.getvalue()), file_name="b.xlsx", options=ImportOptions(sheet="Nope"))


def test_zip_bomb_is_refused_before_anything_is_inflated() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/worksheets/sheet1.xml", b"\x00" * (20 * 1024 * 1024))
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(ImportFileError) as error:
        open_table(io.BytesIO(buffer.getvalue()), file_name="invoice.xlsx")
    assert error.value.code == "zip_bomb"
    assert "invoice.xlsx: the workbook part xl/worksheets/sheet1.xml compresses" in str(error.value)


def test_workbooks_over_the_size_limit_are_refused() -> None:
    data = workbook_bytes([["text"], *[[f"row {i} " * 20] for i in range(200)]])
    options = ImportOptions(max_xlsx_uncompressed_bytes=10_000)
    with pytest.raises(ImportFileError, match="over the limit of 10,000"):
        open_table(io.BytesIO(data), file_name="big.xlsx", options=options)


def test_a_file_named_xlsx_that_is_not_a_workbook() -> None:
    with pytest.raises(ImportFileError, match=r"report.xlsx: not a valid \.xlsx workbook"):
        open_table(io.BytesIO(b"text,label\nhi,ok\n"), file_name="report.xlsx")


def test_jsonl_with_classifier_format_and_errors() -> None:
    data = (
        b'{"text": "you are an idiot", "labels": {"toxicity": ["toxic"], "category": ["insult"]}}\n'
        b'{"text": "have a nice day", "labels": {"toxicity": ["safe"], "category": null}}\n'
        b'{"text": "broken", "labels": {"toxicity": ["safe"]\n'
        b"\n"
        b'["not", "an", "object"]\n'
        b'{"text": "late key", "source": "forum", "labels": {"toxicity": "safe"}}\n'
    )
    reader = open_table(io.BytesIO(data), file_name="train.jsonl")
    rows, rejected = collect(reader)
    assert reader.format == "jsonl"
    assert reader.columns == ["text", "toxicity", "category", "source"]
    assert rows[0] == ["you are an idiot", ["toxic"], ["insult"]]
    assert rows[1] == ["have a nice day", ["safe"], None]
    assert rows[2] == ["late key", "safe", None, "forum"]
    assert rejected == [
        "line 3: column 52: not valid JSON: Expecting ',' delimiter",
        "line 5: expected a JSON object, got an array",
    ]


def test_jsonl_head_named_like_a_field_is_prefixed() -> None:
    reader = open_table(io.BytesIO(b'{"text": "x", "labels": {"text": ["a"]}}\n'), file_name="t.jsonl")
    assert collect(reader)[0] == [["x", ["a"]]]
    assert reader.columns == ["text", "labels.text"]


def test_jsonl_with_invalid_utf8_names_the_line() -> None:
    reader = open_table(io.BytesIO(b'{"text": "ok"}\n{"text": "caf\xe9"}\n'), file_name="t.jsonl")
    rows, rejected = collect(reader)
    assert rows == [["ok"]]
    assert rejected[0].startswith("line 2: byte")


def test_json_rows_and_json_documents() -> None:
    reader = JsonRowsReader([{"text": "a", "label": "x"}, "oops", {"text": "b"}])
    rows, rejected = collect(reader)
    assert rows == [["a", "x"], ["b", None]]
    assert rejected == ["row 2: expected a JSON object, got a string"]
    document = open_table(io.BytesIO(b'[{"text": "a"}]'), file_name="rows.json")
    assert collect(document)[0] == [["a"]]
    with pytest.raises(ImportFileError, match=r"rows.json, line 1, column 3: not valid JSON"):
        open_table(io.BytesIO(b"[{x"), file_name="rows.json")
    with pytest.raises(ImportFileError, match="expected an array of row objects, got an object"):
        open_table(io.BytesIO(b'{"a": 1}'), file_name="rows.json", options=ImportOptions(format="json"))
