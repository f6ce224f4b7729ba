"""Snapshots: the file, the validation report, the split, the event, test-set checks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.storage import get_blob_store
from tests.dataset.conftest import DatasetApi

pytestmark = pytest.mark.django_db(databases="__all__")


def snapshot_file(api: DatasetApi, snapshot_id: int) -> list[dict[str, Any]]:
    body = b"".join(api.get(f"/snapshots/{snapshot_id}/download").streaming_content)
    return [json.loads(line) for line in body.splitlines()]


def make(
    api: DatasetApi, rows: list[dict[str, Any]], mapping: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = api.post("/datasets", {"rows": rows, **({"mapping": mapping} if mapping else {})})
    assert response.status_code == 201, response.content
    return response.json()


def test_report_explains_every_invalid_row(api: DatasetApi) -> None:
    rows = [
        {"text": "fine comment", "toxicity": "safe", "category": '["insult"]'},
        {"text": "", "toxicity": "safe", "category": None},
        {"text": "word " * 300, "toxicity": "toxic", "category": None},
        {"text": "made up label", "toxicity": "toxik", "category": None},
        {"text": "broken list", "toxicity": "toxic", "category": '["insult", '},
        {"text": "nothing applies", "toxicity": "NULL", "category": None},
        {"text": "Fine comment!", "toxicity": "toxic", "category": '["threat"]'},
        {"text": "fine comment", "toxicity": "safe", "category": '["insult"]'},
    ]
    mapping = {
        "input_column": "text",
        "columns": [
            {"name": "text", "role": "text"},
            {"name": "toxicity", "role": "label", "labels": ["safe", "toxic"]},
            {"name": "category", "role": "label", "format": "multi", "labels": ["insult", "threat"]},
        ],
    }
    dataset = make(api, rows, mapping)
    created = api.post(f"/datasets/{dataset['id']}/snapshots", {"name": "v1", "max_tokens": 100})
    assert created.status_code == 201, created.content
    snapshot = created.json()
    report = snapshot["report"]
    assert (report["rows_total"], report["valid_rows"], report["invalid_rows"]) == (8, 3, 5)
    assert report["invalid_reasons"] == {
        "empty_input": 1,
        "over_token_limit": 1,
        "unknown_label": 1,
        "malformed_json": 1,
        "unlabeled": 1,
    }
    reasons = {
        r["row"]: [(p["code"], p["column"]) for p in r["reasons"]] for r in report["invalid_rows_sample"]
    }
    assert reasons == {
        2: [("empty_input", "text")],
        3: [("over_token_limit", "text")],
        4: [("unknown_label", "toxicity")],
        5: [("malformed_json", "category")],
        6: [("unlabeled", None)],
    }
    assert (
        report["invalid_rows_sample"][1]["reasons"][0]["message"] == "about 400 tokens, over the limit of 100"
    )
    assert report["duplicates"]["exact"] == {"groups": 1, "rows": 1}
    assert report["duplicates"]["normalised"] == {"groups": 1, "rows": 2}
    assert report["duplicates"]["conflicting"] == {"groups": 1, "rows": 3}
    assert report["duplicates"]["examples"][0]["rows"] == [1, 7, 8]
    assert any("different labels" in w for w in report["warnings"])
    assert "head 'toxicity': class 'safe' has 2 examples (fewer than 10)" in report["warnings"]

    paged = api.get(f"/snapshots/{snapshot['id']}/invalid-rows", page_size=2).json()
    assert (paged["count"], [r["row"] for r in paged["results"]]) == (5, [2, 3])

    lines = snapshot_file(api, snapshot["id"])
    assert lines == [
        {
            "row": 1,
            "input": "fine comment",
            "labels": {"toxicity": ["safe"], "category": ["insult"]},
            "split": None,
        },
        {
            "row": 7,
            "input": "Fine comment!",
            "labels": {"toxicity": ["toxic"], "category": ["threat"]},
            "split": None,
        },
        {
            "row": 8,
            "input": "fine comment",
            "labels": {"toxicity": ["safe"], "category": ["insult"]},
            "split": None,
        },
    ]
    assert snapshot["heads"] == [
        {"name": "toxicity", "labels": ["safe", "toxic"], "multi_label": False},
        {"name": "category", "labels": ["insult", "threat"], "multi_label": True},
    ]


def test_snapshot_is_content_addressed_and_announced(api: DatasetApi) -> None:
    dataset = api.post("/datasets", {"example": "moderation"}).json()
    snapshot = api.post(f"/datasets/{dataset['id']}/snapshots", {"test_percent": 20, "seed": 3}).json()
    content = get_blob_store().get_bytes(snapshot["blob"])
    assert hashlib.sha256(content).hexdigest() == snapshot["sha256"]
    assert snapshot["blob"] == f"snapshots/{snapshot['sha256'][:2]}/{snapshot['sha256']}.jsonl"
    assert snapshot["manifest"] == {
        "heads": snapshot["heads"],
        "type": "text_classification",
        "input_column": "text",
        "rows": snapshot["rows"],
        "sha256": snapshot["sha256"],
        "blob": snapshot["blob"],
    }

    events = OutboxEvent.objects.using("dataset").filter(type="snapshot.created")
    assert events.count() == 1
    stored = events.get().payload
    payload = json.loads(stored) if isinstance(stored, str) else stored
    assert payload["subject"] == f"snapshots/{snapshot['id']}"
    assert payload["data"]["snapshot_id"] == snapshot["id"]
    assert payload["data"]["heads"] == snapshot["heads"]
    assert payload["data"]["split"] == snapshot["split"]
    get_event_type("snapshot.created").validate(payload["data"])

    again = api.post(f"/datasets/{dataset['id']}/snapshots", {"test_percent": 20, "seed": 3}).json()
    assert again["id"] != snapshot["id"] and again["sha256"] == snapshot["sha256"]
    other_seed = api.post(f"/datasets/{dataset['id']}/snapshots", {"test_percent": 20, "seed": 4}).json()
    assert other_seed["sha256"] != snapshot["sha256"]


def test_the_split_is_stratified_and_keeps_duplicates_together(api: DatasetApi) -> None:
    dataset = api.post("/datasets", {"example": "moderation"}).json()
    snapshot = api.post(f"/datasets/{dataset['id']}/snapshots", {"test_percent": 25, "seed": 11}).json()
    lines = snapshot_file(api, snapshot["id"])
    split = snapshot["split"]
    assert split["train"] + split["test"] == len(lines) == snapshot["rows"]
    assert abs(split["test"] / len(lines) - 0.25) < 0.05
    toxicity = snapshot["report"]["heads"]["toxicity"]["splits"]
    for label in ("safe", "toxic"):
        share = toxicity["test"][label] / (toxicity["test"][label] + toxicity["train"][label])
        assert abs(share - 0.25) < 0.08
    by_text: dict[str, set[str]] = {}
    for line in lines:
        by_text.setdefault(line["input"].casefold(), set()).add(line["split"])
    assert all(len(splits) == 1 for splits in by_text.values())


def test_a_second_snapshot_checked_as_a_test_set(api: DatasetApi) -> None:
    train = make(api, [{"text": f"comment {i}", "label": "ab"[i % 2]} for i in range(40)])
    test = make(api, [{"text": "Comment 3!", "label": "b"}, {"text": "fresh text", "label": "c"}])
    train_snapshot = api.post(f"/datasets/{train['id']}/snapshots", {}).json()
    test_snapshot = api.post(f"/datasets/{test['id']}/snapshots", {}).json()
    check = api.get(f"/snapshots/{train_snapshot['id']}/test-check", test_snapshot=test_snapshot["id"]).json()
    assert check["usable"] is False
    assert check["problems"] == ["head 'label': test labels ['c'] never occur in the training snapshot"]
    assert check["leakage"] == {"exact": 0, "normalised": 1, "example_rows": [1]}
    assert check["test_counts"] == {"label": {"b": 1, "c": 1}}
    assert api.get(f"/snapshots/{train_snapshot['id']}/test-check").status_code == 400


def test_choices_are_checked(api: DatasetApi) -> None:
    dataset = make(api, [{"text": "x y z", "label": "a", "url": "https://example.com/a.png"}] * 2)
    path = f"/datasets/{dataset['id']}/snapshots"
    assert (
        api.post(path, {"input_column": "nope"}).json()["error"]["message"]
        == "input_column: no column named 'nope'"
    )
    wrong_role = api.post(path, {"label_columns": ["text"]}).json()["error"]["message"]
    assert wrong_role.startswith("label_columns: 'text' has the role 'text', not 'label'")
    image = api.post(path, {"type": "image_classification"}).json()["error"]["message"]
    assert "needs a column with the role 'image'" in image
    mapping = {
        "input_column": "text",
        "columns": [{"name": "text", "role": "text"}, {"name": "label", "role": "label"}],
    }
    empty = make(api, [{"text": "", "label": "a"}], mapping)
    refused = api.post(f"/datasets/{empty['id']}/snapshots", {})
    assert refused.status_code == 400
    assert refused.json()["error"]["details"]["invalid_reasons"] == {"empty_input": 1}


def test_image_classification_snapshot(api: DatasetApi) -> None:
    rows = [
        {"image": f"https://cdn.example.com/{i}.jpg", "label": "cat" if i % 2 else "dog"} for i in range(20)
    ]
    rows.append({"image": "not a url", "label": "cat"})
    dataset = make(api, rows)
    assert dataset["mapping"]["input_column"] == "image"
    # The images are fetched by a background job (tests/dataset/test_images.py follows it to the snapshot);
    # until it is done an image snapshot is refused, not made of unfetched rows.
    refused = api.post(f"/datasets/{dataset['id']}/snapshots", {"type": "image_classification"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "images_pending"


def test_demo_seed_gives_the_demo_org_a_dataset_and_a_snapshot(api: DatasetApi) -> None:
    from arbiter.tenancy.scoping import org_scope
    from services.dataset.demo import seed_demo

    with org_scope(api.tenant.org.pk):
        seed_demo(org_id=api.tenant.org.pk)
    (dataset,) = api.get("/datasets").json()["results"]
    assert dataset["name"] == "Example: comment moderation"
    (snapshot,) = api.get("/snapshots").json()["results"]
    assert snapshot["dataset"] == dataset["id"] and snapshot["split"]["test"] > 0
