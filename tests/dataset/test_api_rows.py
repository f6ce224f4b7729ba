"""Rows: the paginated preview with search and filters, adding, editing, relabelling, deleting, history."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from tests.dataset.conftest import DatasetApi

pytestmark = pytest.mark.django_db(databases="__all__")

BODY = (
    "text,toxicity,category,score\n"
    "You are an idiot,toxic,insult,0.9\n"
    "Have a lovely day,safe,,0.1\n"
    "I will find you,toxic,threat|insult,0.8\n"
    ",safe,,0.2\n"
    "Buy cheap pills now,toxic,spam,0.7\n"
    "what a LOVELY photo,safe,,0.05\n"
)


@pytest.fixture
def dataset(api: DatasetApi) -> dict[str, Any]:
    created = api.create(BODY.encode(), "rows.csv")
    mapping = {"columns": [{"name": "score", "role": "label", "format": "score", "labels": ["low", "high"]}]}
    assert api.patch(f"/datasets/{created['id']}", {"mapping": mapping}).status_code == 200
    return created


def inputs(rows: list[dict[str, Any]]) -> list[str | None]:
    return [row["input"] for row in rows]


def test_preview_filters(api: DatasetApi, dataset: dict[str, Any]) -> None:
    path = f"/datasets/{dataset['id']}/rows"
    page = api.get(path, page_size=2).json()
    assert (page["count"], page["pages"], len(page["results"])) == (6, 3, 2)
    assert inputs(api.rows(dataset["id"], q="lovely")) == ["Have a lovely day", "what a LOVELY photo"]
    assert inputs(api.rows(dataset["id"], head="category", label="insult")) == [
        "You are an idiot",
        "I will find you",
    ]
    assert inputs(api.rows(dataset["id"], head="category")) == [
        "You are an idiot",
        "I will find you",
        "Buy cheap pills now",
    ]
    assert inputs(api.rows(dataset["id"], head="score", label="high")) == [
        "You are an idiot",
        "I will find you",
        "Buy cheap pills now",
    ]
    invalid = api.rows(dataset["id"], invalid="true")
    assert [(row["number"], row["problems"][0]["code"]) for row in invalid] == [(4, "empty_input")]
    assert len(api.rows(dataset["id"], invalid="false")) == 5
    assert api.get(path, invalid="maybe").status_code == 400


def test_add_edit_relabel_delete_and_history(api: DatasetApi, dataset: dict[str, Any]) -> None:
    path = f"/datasets/{dataset['id']}/rows"
    added = api.post(
        path, {"text": "  <b>new</b> row \u200b ", "labels": {"toxicity": ["safe"], "score": ["low"]}}
    )
    assert added.status_code == 201, added.content
    row = added.json()
    assert row["number"] == 7
    assert row["input"] == "  <b>new</b> row \u200b "
    assert row["labels"] == {"toxicity": ["safe"], "category": None, "score": ["low"]}
    assert row["cells"]["score"] == "0"

    fixed = api.patch(f"{path}/4", {"text": "now it has text"})
    assert fixed.status_code == 200
    assert fixed.json()["valid"] is True

    relabelled = api.patch(
        f"{path}/2", {"labels": {"toxicity": ["toxic"], "category": ["insult", "spam"], "score": ["high"]}}
    ).json()
    assert relabelled["labels"] == {"toxicity": ["toxic"], "category": ["insult", "spam"], "score": ["high"]}
    assert relabelled["cells"] == {
        "text": "Have a lovely day",
        "toxicity": "toxic",
        "category": "insult|spam",
        "score": "1",
    }
    not_applicable = api.patch(f"{path}/1", {"labels": {"category": None}}).json()
    assert not_applicable["labels"]["category"] is None

    wrong = api.patch(f"{path}/2", {"labels": {"score": ["medium"]}})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["message"] == "labels.score: head 'score' takes one of 'low' or 'high'"
    assert api.patch(f"{path}/2", {"labels": {"nope": ["x"]}}).status_code == 400

    assert api.client.delete(api.url(f"{path}/5")).status_code == 204
    assert api.get(f"{path}/5").status_code == 404
    assert [r["number"] for r in api.rows(dataset["id"])] == [1, 2, 3, 4, 6, 7]

    history = api.get(f"/datasets/{dataset['id']}/history").json()["results"]
    assert [(h["action"], h["row"]) for h in history[:5]] == [
        ("delete", 5),
        ("relabel", 1),
        ("relabel", 2),
        ("edit", 4),
        ("add", 7),
    ]
    relabel = history[2]
    assert relabel["before"] == {"toxicity": "safe", "category": "", "score": "0.1"}
    assert relabel["after"] == {"toxicity": "toxic", "category": "insult|spam", "score": "1"}
    assert history[0]["before"]["text"] == "Buy cheap pills now"
    assert all(h["actor"].startswith("api-key:") and h["at"] for h in history)
    only_row_2 = api.get(f"/datasets/{dataset['id']}/history", row=2).json()["results"]
    assert [h["action"] for h in only_row_2] == ["relabel"]


def test_changes_never_reach_an_existing_snapshot(api: DatasetApi, dataset: dict[str, Any]) -> None:
    snapshot = api.post(f"/datasets/{dataset['id']}/snapshots", {"label_columns": ["toxicity"]}).json()
    before = b"".join(api.get(f"/snapshots/{snapshot['id']}/download").streaming_content)
    api.patch(f"/datasets/{dataset['id']}/rows/1", {"text": "changed", "labels": {"toxicity": ["safe"]}})
    api.client.delete(api.url(f"/datasets/{dataset['id']}/rows/2"))
    after = b"".join(api.get(f"/snapshots/{snapshot['id']}/download").streaming_content)
    assert before == after
    assert b'"You are an idiot"' in after
    assert api.get(f"/snapshots/{snapshot['id']}").json()["rows"] == snapshot["rows"]


def test_csv_export_neutralises_formulas(api: DatasetApi) -> None:
    created = api.post(
        "/datasets",
        {
            "rows": [
                {"text": '=HYPERLINK("http://evil")', "label": "+1"},
                {"text": "@SUM(A1)", "label": "-2"},
                {"text": "\tindented", "label": "ok"},
                {"text": 'plain, with comma "and quotes"', "label": ["a", "b"]},
            ]
        },
    ).json()
    response = api.get(f"/datasets/{created['id']}/export.csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["row", "text", "label"],
        ["1", '\'=HYPERLINK("http://evil")', "'+1"],
        ["2", "'@SUM(A1)", "'-2"],
        ["3", "'\tindented", "ok"],
        ["4", 'plain, with comma "and quotes"', '["a", "b"]'],
    ]
