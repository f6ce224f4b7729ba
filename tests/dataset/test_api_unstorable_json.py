"""JSON that Python reads but PostgreSQL cannot keep (NaN, huge numbers, NUL, lone surrogates): an upload
keeps the good rows, rejects or repairs the others naming their line, and never answers 500."""

from __future__ import annotations

import pytest

from tests.dataset.conftest import DatasetApi

pytestmark = pytest.mark.django_db(databases="__all__")


def test_unstorable_json_rows_are_rejected_or_repaired_by_line(api: DatasetApi) -> None:
    body = b"\n".join(
        [
            b'{"text": "a NUL \\u0000 inside", "label": "a"}',
            b'{"text": "not a number", "label": NaN}',
            b'{"text": "too big", "label": 1' + b"0" * 400 + b"}",
            b'{"text": "half an emoji \\ud83d", "label": "b"}',
            b'{"text": "fine", "label": "b"}',
        ]
    )
    created = api.create(body, "rows.jsonl")
    assert created["rows"] == 3
    assert [rejection["message"] for rejection in created["job"]["rejections"]] == [
        "line 2: not valid JSON: NaN is not a JSON number (JSON has no NaN or Infinity)",
        "line 3: not valid JSON: the number 100000000000000000000000000000... is too large",
    ]
    assert created["job"]["notes"] == [
        "line 1: text that cannot be stored (NUL or a lone surrogate) was replaced with U+FFFD",
        "line 4: text that cannot be stored (NUL or a lone surrogate) was replaced with U+FFFD",
    ]
    texts = [row["input"] for row in api.rows(created["id"])]
    assert texts == ["a NUL \ufffd inside", "half an emoji \ufffd", "fine"]


def test_a_json_document_with_nan_is_refused_with_the_reason(api: DatasetApi) -> None:
    response = api.upload(b'[{"text": "a", "label": "x"}, {"text": "b", "label": Infinity}]', "rows.json")
    assert response.status_code == 400, response.content
    assert "Infinity is not a JSON number" in response.json()["error"]["message"]
