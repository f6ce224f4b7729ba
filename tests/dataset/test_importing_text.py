"""Reading delimited text files: encodings, delimiters, line ends, quoting and broken rows."""

from __future__ import annotations

import io
from typing import Any

import pytest

from services.dataset.importing import ImportFileError, ImportOptions, TableReader, open_table
from services.dataset.importing.text import SAMPLE_BYTES


def read(
    data: bytes, name: str = "upload.csv", **options: Any
) -> tuple[TableReader, list[list[Any]], list[str]]:
    reader = open_table(io.BytesIO(data), file_name=name, options=ImportOptions(**options))
    rows: list[list[Any]] = []
    rejected: list[str] = []
    for batch in reader.batches(size=7):
        rows.extend(batch.rows)
        rejected.extend(str(r) for r in batch.rejected)
    return reader, rows, rejected


TEXTS = ["Ça va? «très» bien", "naïve café", "“smart quotes” – and € signs"]


@pytest.mark.parametrize(
    ("encoding", "bom", "expected"),
    [("utf-8", b"", "utf-8"), ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"), ("cp1252", b"", "cp1252")],
)
def test_encodings_are_detected_and_text_is_kept(encoding: str, bom: bytes, expected: str) -> None:
    body = "text,label\n" + "".join(f"{t},ok\n" for t in TEXTS)
    reader, rows, _ = read(bom + body.encode(encoding))
    assert reader.details["encoding"] == expected
    assert reader.columns == ["text", "label"]  # no BOM glued to the first name
    assert [r[0] for r in rows] == TEXTS


@pytest.mark.parametrize(
    ("encoding", "texts"),
    [
        ("cp1251", ["Привет как у тебя дела сегодня?", "Ты ведёшь себя ужасно - прекрати"]),
        ("cp1253", ["Καλημέρα τι κάνεις σήμερα", "Είσαι πολύ αγενής - σταμάτα"]),
    ],
)
def test_non_western_code_pages_are_detected(encoding: str, texts: list[str]) -> None:
    body = "text,label\n" + "".join(f"{t},ok\n" for t in texts * 10)
    reader, rows, _ = read(body.encode(encoding))
    assert reader.details["encoding"] == encoding
    assert [r[0] for r in rows[:2]] == texts


def test_utf16_with_bom() -> None:
    reader, rows, _ = read("text\tlabel\r\nhéllo 👋\tgreeting\r\n".encode("utf-16"))
    assert reader.details["delimiter"] == "tab"
    assert rows == [["héllo 👋", "greeting"]]


def test_latin1_after_an_ascii_sample_switches_cleanly() -> None:
    ascii_part = "text,label\n" + "plain ascii text,ok\n" * (SAMPLE_BYTES // 10)
    reader, rows, rejected = read((ascii_part + "déjà vu,ok\n").encode("cp1252"))
    assert reader.details["encoding"] == "cp1252"
    assert rows[-1] == ["déjà vu", "ok"]
    assert not rejected
    assert any("Windows-1252" in note for note in reader.notes)


def test_damaged_utf8_is_repaired_and_the_line_named() -> None:
    good = "text,label\n" + "emoji 😀 fine,ok\n" * 50
    data = good.encode() + b"cut emoji \xf0\x9f,ok\n" + b"after,ok\n"
    reader, rows, _ = read(data)
    assert reader.details["encoding"] == "utf-8"
    assert rows[50] == ["cut emoji \ufffd", "ok"]
    assert rows[51] == ["after", "ok"]
    assert reader.notes == ["line 52: bytes that are not valid utf-8 were replaced with U+FFFD"]


def test_a_wrong_explicit_encoding_names_the_line() -> None:
    data = "text,label\nfine,ok\nstill fine,ok\ncafé,ok\n".encode("cp1252")
    with pytest.raises(ImportFileError) as error:
        read(data, name="shop.csv", encoding="utf-8")
    assert str(error.value) == "shop.csv, line 4: byte 0xe9 is not valid utf-8; check the file's encoding"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiters_are_sniffed(delimiter: str) -> None:
    # The other candidate delimiters appear inside the text, so only the real one splits rows evenly.
    text = "".join(ch for ch in "hello, world; a|b" if ch != delimiter)
    lines = [
        ["id", "text", "label"],
        ["1", text, "safe"],
        ["2", f"again {text}", "toxic"],
        ["3", "plain", "safe"],
    ]
    data = "\n".join(delimiter.join(line) for line in lines).encode()
    reader, rows, rejected = read(data)
    assert not rejected
    assert reader.columns == ["id", "text", "label"]
    assert rows[0] == ["1", text, "safe"]


def test_semicolons_with_decimal_commas() -> None:
    reader, rows, _ = read(b"text;toxicity\nyou are lovely;0,03\nshut up, idiot;0,91\n")
    assert reader.details["delimiter"] == "semicolon"
    assert rows == [["you are lovely", "0,03"], ["shut up, idiot", "0,91"]]


def test_line_ends_and_quoted_newlines_are_kept_verbatim() -> None:
    data = (
        b'text,label\r\n"first line\r\nsecond line",a\r\n'
        b'lone cr,b\r"quoted \r inside","c"\n"<b>html</b> \x07bell",d'
    )
    _, rows, rejected = read(data)
    assert not rejected
    assert rows == [
        ["first line\r\nsecond line", "a"],
        ["lone cr", "b"],
        ["quoted \r inside", "c"],
        ["<b>html</b> \x07bell", "d"],
    ]


def test_rows_with_the_wrong_number_of_fields_are_rejected_with_their_line() -> None:
    data = (
        b"text,label,source\nok row,a,web\nbad,row,with,five,fields\n\n"
        b"trailing comma,b,app,\nshort,row\nlast,c,web\n"
    )
    _, rows, rejected = read(data)
    assert rows == [["ok row", "a", "web"], ["trailing comma", "b", "app"], ["last", "c", "web"]]
    assert rejected == ["line 3: expected 3 fields, got 5", "line 6: expected 3 fields, got 2"]


def test_an_unclosed_quote_is_explained() -> None:
    data = b"text,label\n" + b'"hello, there",a\n' * 30 + b'"opened and never closed,b\nnext,c\nmore,d\n'
    _, rows, rejected = read(data)
    assert len(rows) == 30
    assert len(rejected) == 1
    assert rejected[0].startswith("lines 32-34: expected 2 fields, got 1")
    assert "quote" in rejected[0]


def test_stray_quotes_in_a_tab_file_do_not_swallow_lines() -> None:
    data = b'"Great movie\t1\nNot "great"\t0\n"Awful\t0\nok\t1\n'
    reader, rows, rejected = read(data, name="reviews.txt")
    assert reader.details["quoting"] is False
    assert len(rows) == 4 and not rejected
    assert rows[0] == ['"Great movie', "1"]


def test_header_is_detected_or_not() -> None:
    with_header, _, _ = read(b"comment,toxic\nyou are great,0\nyou are awful,1\n")
    assert with_header.columns == ["comment", "toxic"]
    without, rows, _ = read(b"you are great\t0\nyou are awful\t1\nwhat a day\t0\n")
    assert without.columns == ["column_1", "column_2"]
    assert len(rows) == 3
    forced, rows, _ = read(b"a,b\nc,d\n", header=False)
    assert forced.columns == ["column_1", "column_2"] and rows[0] == ["a", "b"]


def test_a_single_column_file_keeps_commas_in_its_text() -> None:
    reader, rows, rejected = read(b"text\nhello, world\nno delimiter here at all\nsemi; colon\n")
    assert reader.columns == ["text"]
    assert rows == [["hello, world"], ["no delimiter here at all"], ["semi; colon"]]
    assert not rejected


def test_binary_files_are_refused() -> None:
    with pytest.raises(ImportFileError, match=r"photo.csv, line 3: this is not a text file"):
        read(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", name="photo.csv")


def test_legacy_xls_is_refused_with_advice() -> None:
    with pytest.raises(ImportFileError, match=r"save the sheet as \.xlsx or CSV"):
        read(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, name="old.xls")


def test_memory_stays_bounded_on_a_large_file() -> None:
    import tracemalloc

    body = b"text,label\n" + b"some moderately long comment text here,safe\n" * 700_000  # about 30 MB
    tracemalloc.start()
    reader = open_table(io.BytesIO(body), file_name="big.csv")
    count = sum(len(batch.rows) for batch in reader.batches())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 700_000
    assert peak < 24 * 1024 * 1024  # one chunk of text and one batch of rows, not the file
