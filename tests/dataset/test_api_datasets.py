"""Uploading datasets through the API: formats, inferred mappings, bad input, limits, background imports."""

from __future__ import annotations

import io
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from django.core.management import call_command
from django.utils import timezone

from arbiter.testing.factories import DatasetJobFactory, RowFactory
from arbiter.testing.tenants import Tenant
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row
from tests.dataset.conftest import DatasetApi

pytestmark = pytest.mark.django_db(databases="__all__")


def workbook(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_csv_upload_infers_the_mapping_and_keeps_text_verbatim(api: DatasetApi) -> None:
    tricky = '<img src=x onerror="alert(1)"> 🤬 tab\there, bell \x07, "quoted"\r\nsecond line'
    body = 'id,comment,toxicity,category\r\n1,"' + tricky.replace('"', '""') + '",toxic,insult|threat\r\n'
    body += "".join(f"{i},comment number {i} is fine,safe,\r\n" for i in range(2, 30))
    created = api.create(body.encode(), "comments.csv")

    assert created["state"] == "ready"
    assert (created["rows"], created["valid_rows"], created["invalid_rows"]) == (29, 29, 0)
    assert created["source"]["detected"]["delimiter"] == "comma"
    roles = {c["name"]: (c["role"], c.get("format")) for c in created["mapping"]["columns"]}
    assert roles == {
        "id": ("ignore", None),
        "comment": ("text", None),
        "toxicity": ("label", "single"),
        "category": ("label", "multi"),
    }
    assert created["mapping"]["input_column"] == "comment"
    assert [h["name"] for h in created["heads"]] == ["toxicity", "category"]
    assert {p["name"]: p["reason"] for p in created["profiles"]}["category"].startswith("short values")
    assert created["preview"][0]["cells"]["comment"] == tricky

    first = api.rows(created["id"])[0]
    assert first["input"] == tricky
    assert first["labels"] == {"toxicity": ["toxic"], "category": ["insult", "threat"]}
    assert api.rows(created["id"])[1]["labels"] == {"toxicity": ["safe"], "category": None}
    response = api.get(f"/datasets/{created['id']}/rows")
    assert response["Content-Type"] == "application/json"


def test_semicolon_file_with_fractional_scores_becomes_labels_with_a_threshold(api: DatasetApi) -> None:
    lines = ["texte;toxicity;insult"]
    scores = [("0,92", "0,10"), ("0,49", "0,51"), ("0,5", "0,02"), ("0,03", "0,97"), ("0,70", "NULL")]
    for i in range(40):
        toxicity, insult = scores[i % len(scores)]
        lines.append(f"commentaire numéro {i}, très varié;{toxicity};{insult}")
    created = api.create("\n".join(lines).encode("cp1252"), "scores.csv")
    assert created["source"]["detected"]["encoding"] == "cp1252"
    assert created["source"]["detected"]["delimiter"] == "semicolon"
    formats = {c["name"]: c.get("format") for c in created["mapping"]["columns"]}
    assert formats == {"texte": None, "toxicity": "score", "insult": "score"}

    patched = api.patch(
        f"/datasets/{created['id']}",
        {
            "mapping": {
                "columns": [
                    {"name": "toxicity", "labels": ["non_toxic", "toxic"], "threshold": 0.5},
                    {"name": "insult", "labels": ["clean", "insult"], "threshold": 0.9},
                ]
            }
        },
    )
    assert patched.status_code == 200, patched.content
    rows = api.rows(created["id"])
    assert rows[0]["input"] == "commentaire numéro 0, très varié"
    assert [r["labels"] for r in rows[:5]] == [
        {"toxicity": ["toxic"], "insult": ["clean"]},
        {"toxicity": ["non_toxic"], "insult": ["clean"]},
        {"toxicity": ["toxic"], "insult": ["clean"]},
        {"toxicity": ["non_toxic"], "insult": ["insult"]},
        {"toxicity": ["toxic"], "insult": None},
    ]
    snapshot = api.post(f"/datasets/{created['id']}/snapshots", {}).json()
    assert snapshot["report"]["heads"]["toxicity"]["labels"] == {"non_toxic": 16, "toxic": 24}
    assert snapshot["report"]["heads"]["insult"] == {
        "labels": {"clean": 24, "insult": 8},
        "does_not_apply": 8,
        "splits": None,
    }


def test_mapping_edits_are_validated_and_recorded(api: DatasetApi) -> None:
    created = api.create(b"text,label\nhello there,a\ngood morning,b\n")
    bad = api.patch(
        f"/datasets/{created['id']}", {"mapping": {"columns": [{"name": "label", "role": "nope"}]}}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("mapping: column 'label': role must be one of")
    good = api.patch(
        f"/datasets/{created['id']}",
        {
            "name": "greetings",
            "mapping": {"columns": [{"name": "label", "head": "greeting", "labels": ["a"]}]},
        },
    )
    assert good.status_code == 200
    assert good.json()["name"] == "greetings"
    assert (good.json()["valid_rows"], good.json()["invalid_rows"]) == (1, 1)
    invalid = api.rows(created["id"], invalid="true")
    assert [r["problems"][0]["code"] for r in invalid] == ["unknown_label"]
    history = api.get(f"/datasets/{created['id']}/history").json()["results"]
    assert [h["action"] for h in history] == ["mapping", "rename", "import"]
    assert {h["actor"] for h in history} == {history[0]["actor"]}
    assert history[0]["actor"].startswith("api-key:")


def test_json_rows_and_the_example_dataset(api: DatasetApi) -> None:
    created = api.post(
        "/datasets",
        {
            "name": "from json",
            "rows": [
                {"text": "first post", "labels": {"spam": ["no"]}},
                {"text": "BUY NOW", "labels": {"spam": ["yes"]}},
                "not an object",
            ],
        },
    )
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["columns"] == ["text", "spam"]
    assert data["rows"] == 2
    assert data["job"]["rejections"] == [
        {"line": 3, "end_line": 3, "message": "row 3: expected a JSON object, got a string"}
    ]

    example = api.post("/datasets", {"example": "moderation"})
    assert example.status_code == 201
    body = example.json()
    assert body["rows"] > 200
    assert [h["name"] for h in body["heads"]] == ["toxicity", "category", "sentiment"]
    snapshot = api.post(f"/datasets/{body['id']}/snapshots", {}).json()
    heads = snapshot["report"]["heads"]
    assert heads["category"]["does_not_apply"] == heads["toxicity"]["labels"]["safe"]
    assert sum(heads["sentiment"]["labels"].values()) == snapshot["rows"]


def test_excel_upload(api: DatasetApi) -> None:
    data = workbook(
        [["comment", "label"], *[[f"comment {i} with words", ["ok", "bad"][i % 2]] for i in range(12)]]
    )
    created = api.create(data, "sheet.xlsx")
    assert created["source"]["format"] == "xlsx"
    assert created["rows"] == 12
    assert api.rows(created["id"])[1]["labels"] == {"label": ["bad"]}


def test_zip_bomb_is_refused_and_nothing_is_kept(api: DatasetApi) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", b"<" * (30 * 1024 * 1024))
    response = api.upload(buffer.getvalue(), "invoice.xlsx")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "zip_bomb"
    assert error["message"].startswith("invoice.xlsx: the workbook part xl/worksheets/sheet1.xml compresses")
    assert not Dataset.objects.unscoped().filter(org_id=api.tenant.org.pk).exists()


@pytest.mark.parametrize(
    ("data", "name", "fields", "code", "message"),
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "photo.csv",
            {},
            "not_text",
            "photo.csv, line 3: this is not a text file",
        ),
        (
            "text,label\nfine,a\ncafé,b\n".encode("cp1252"),
            "shop.csv",
            {"encoding": "utf-8"},
            "bad_encoding",
            "shop.csv, line 3: byte 0xe9 is not valid utf-8",
        ),
        (b"text,label\n", "empty.csv", {}, "no_rows", "empty.csv: no row could be read"),
        (
            b"a,b\n1,2,3,4\n",
            "wide.csv",
            {},
            "no_rows",
            "wide.csv: no row could be read: line 2: expected 2 fields, got 4",
        ),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            "old.xls",
            {},
            "unsupported_format",
            "old.xls: legacy .xls workbooks",
        ),
    ],
)
def test_unreadable_files_get_a_clear_error(
    api: DatasetApi, data: bytes, name: str, fields: dict[str, str], code: str, message: str
) -> None:
    response = api.upload(data, name, **fields)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(message), error["message"]
    assert not Dataset.objects.unscoped().filter(org_id=api.tenant.org.pk).exists()


def test_bad_rows_are_rejected_with_their_line_and_column(api: DatasetApi) -> None:
    csv_body = b"text,label\nfine,a\ntoo,many,fields,here,x\nalso fine,b\n"
    created = api.create(csv_body, "rows.csv")
    assert created["rows"] == 2
    assert created["job"]["rows_rejected"] == 1
    assert created["job"]["rejections"][0]["message"] == "line 3: expected 2 fields, got 5"
    report = api.post(f"/datasets/{created['id']}/snapshots", {}).json()["report"]
    (source,) = report["imports"]
    assert (source["file_name"], source["rows_read"], source["rows_imported"], source["rows_rejected"]) == (
        "rows.csv",
        3,
        2,
        1,
    )
    assert source["rejections"][0]["message"] == "line 3: expected 2 fields, got 5"

    jsonl = b'{"text": "ok", "label": "a"}\n{"text": "broken" "label": "b"}\n{"text": "fine", "label": "b"}\n'
    created = api.create(jsonl, "rows.jsonl")
    assert created["rows"] == 2
    assert (
        created["job"]["rejections"][0]["message"]
        == "line 2: column 19: not valid JSON: Expecting ',' delimiter"
    )


def test_a_failed_upload_to_an_existing_dataset_loses_nothing(api: DatasetApi) -> None:
    created = api.create(b"text,label\nkeep me,a\nand me,b\n")
    dataset_id = created["id"]
    bad = api.upload(
        "text,label\nnew,a\ncafé,b\n".encode("cp1252"),
        "more.csv",
        f"/datasets/{dataset_id}/uploads",
        encoding="utf-8",
    )
    assert bad.status_code == 400
    assert "more.csv, line 3" in bad.json()["error"]["message"]
    assert [r["input"] for r in api.rows(dataset_id)] == ["keep me", "and me"]
    assert Row.objects.unscoped().filter(dataset_id=dataset_id).count() == 2

    good = api.upload(b"label,text,source\nb,appended,web\n", "more.csv", f"/datasets/{dataset_id}/uploads")
    assert good.status_code == 201, good.content
    assert good.json()["rows_imported"] == 1
    rows = api.rows(dataset_id)
    assert [(r["number"], r["input"], r["labels"]) for r in rows] == [
        (1, "keep me", {"label": ["a"]}),
        (2, "and me", {"label": ["b"]}),
        (3, "appended", {"label": ["b"]}),
    ]
    assert rows[2]["cells"]["source"] == "web"


def test_oversize_uploads_answer_413(api: DatasetApi, override_arbiter_settings: Any) -> None:
    override_arbiter_settings(ARBITER_MAX_UPLOAD_BYTES=1000)
    response = api.upload(b"text,label\n" + b"some text,a\n" * 200, "big.csv")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "the limit is 1,000 bytes" in response.json()["error"]["message"]


def test_uploads_without_a_length_stop_at_the_limit() -> None:
    from arbiter.api.errors import ApiError
    from services.dataset.api.views import _UploadLimit

    handler = _UploadLimit(None, limit=10)
    assert handler.receive_data_chunk(b"12345678", 0) == b"12345678"
    with pytest.raises(ApiError) as error:
        handler.receive_data_chunk(b"12345678", 8)
    assert (error.value.status_code, error.value.error_code) == (413, "payload_too_large")


def test_idempotency_key_creates_one_dataset(api: DatasetApi) -> None:
    body = {"rows": [{"text": "hello", "label": "x"}]}
    first = api.post("/datasets", body, HTTP_IDEMPOTENCY_KEY="abc-1")
    again = api.post("/datasets", body, HTTP_IDEMPOTENCY_KEY="abc-1")
    assert first.json()["id"] == again.json()["id"]
    assert Dataset.objects.unscoped().filter(org_id=api.tenant.org.pk).count() == 1


def test_scopes_are_enforced(tenant: Tenant) -> None:
    reader = DatasetApi(tenant, tenant.client(["datasets:read"]))
    assert reader.get("/datasets").status_code == 200
    assert reader.post("/datasets", {"example": "moderation"}).status_code == 403


def test_a_hundred_thousand_rows(api: DatasetApi) -> None:
    body = "text,label\n" + "".join(f"comment {i} about things,{'ab'[i % 2]}\n" for i in range(100_000))
    created = api.create(body.encode(), "many.csv")
    assert (created["rows"], created["valid_rows"]) == (100_000, 100_000)
    page = api.get(f"/datasets/{created['id']}/rows", page=2000, page_size=50).json()
    assert page["count"] == 100_000
    assert page["results"][-1] == {
        **page["results"][-1],
        "number": 100_000,
        "input": "comment 99999 about things",
    }
    assert api.get(f"/datasets/{created['id']}/rows", head="label", label="b").json()["count"] == 50_000


def test_olid_gives_three_heads_with_does_not_apply_rows(api: DatasetApi, shared_data: Path) -> None:
    path = shared_data / "olid-training-v1.0.tsv"
    created = api.create(path.read_bytes(), path.name)
    assert created["rows"] == 13_240
    assert [h["name"] for h in created["heads"]] == ["subtask_a", "subtask_b", "subtask_c"]
    assert len(created["job"]["notes"]) == 24  # lines with truncated UTF-8 that were repaired
    snapshot = api.post(f"/datasets/{created['id']}/snapshots", {"input_column": "tweet"}).json()
    heads = snapshot["report"]["heads"]
    assert heads["subtask_a"]["labels"] == {"NOT": 8840, "OFF": 4400}
    assert heads["subtask_b"] == {"labels": {"TIN": 3876, "UNT": 524}, "does_not_apply": 8840, "splits": None}
    assert heads["subtask_c"] == {
        "labels": {"GRP": 1074, "IND": 2407, "OTH": 395},
        "does_not_apply": 9364,
        "splits": None,
    }
    assert snapshot["rows"] == 13_240


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_large_files_import_in_the_background_with_progress(
    tenant: Tenant, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_IMPORT_BACKGROUND_BYTES=1000)
    api = DatasetApi(tenant, tenant.client(["datasets:read", "datasets:write"]))
    body = "text,label\n" + "".join(f"background row {i},{'xy'[i % 2]}\n" for i in range(20_000))
    response = api.upload(body.encode() + b"bad,row,here\n", "big.csv")
    assert response.status_code == 202
    dataset_id, job_id = response.json()["id"], response.json()["job"]["id"]
    assert response.json()["state"] == "importing"
    deadline = time.monotonic() + 60
    while True:
        job = api.get(f"/datasets/{dataset_id}/jobs/{job_id}").json()
        if job["state"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["state"] == "completed", job
    assert (job["rows_read"], job["rows_imported"], job["rows_rejected"]) == (20_001, 20_000, 1)
    assert job["rejections"][0]["message"] == "line 20002: expected 2 fields, got 3"
    dataset = api.get(f"/datasets/{dataset_id}").json()
    assert (dataset["state"], dataset["rows"]) == ("ready", 20_000)
    assert DatasetChange.objects.unscoped().filter(dataset_id=dataset_id, action="import").count() == 1


def test_a_wrong_encoding_guess_is_corrected_and_the_text_kept(api: DatasetApi) -> None:
    # The first 64 KB are plain ASCII, so the sample looks like UTF-8; the Latin-1 comes later.
    body = "text,label\n" + "an ordinary comment,ok\n" * 4000 + '"très énervé, façon 1998",bad\n'
    created = api.create(body.encode("cp1252"), "legacy.csv")
    assert created["source"]["detected"]["encoding"] == "cp1252"
    assert created["job"]["notes"] == ["the file is not valid UTF-8: it is read as Windows-1252 (Latin-1)"]
    last = api.rows(created["id"], q="énervé")
    assert [row["input"] for row in last] == ["très énervé, façon 1998"]


def _stopped_import(dataset_id: int, *, heartbeat_ago: timedelta) -> DatasetJob:
    """An import whose process stopped after inserting one row (its heartbeat is `heartbeat_ago` old)."""
    dataset = Dataset.objects.unscoped().get(pk=dataset_id)
    job: DatasetJob = DatasetJobFactory(dataset=dataset, heartbeat_at=timezone.now() - heartbeat_ago)
    RowFactory(dataset=dataset, number=99, job=job, cells=["half", "a"])
    return job


def test_interrupted_jobs_are_settled_by_the_recovery_and_leave_nothing_behind(api: DatasetApi) -> None:
    created = api.create(b"text,label\nkept,a\n")
    job = _stopped_import(created["id"], heartbeat_ago=timedelta(hours=1))
    alive = _stopped_import(api.create(b"text,label\nother,a\n")["id"], heartbeat_ago=timedelta(seconds=5))
    assert api.rows(created["id"])[-1]["input"] == "kept"  # an unfinished import's rows are hidden
    # Reading never writes: the dataset shows the job as it is until the recovery runs.
    assert api.get(f"/datasets/{created['id']}").json()["job"]["state"] == "running"
    assert Row.objects.unscoped().filter(job=job).exists()

    out = io.StringIO()
    call_command("dataset_jobs_recover", stdout=out)

    assert out.getvalue().strip() == "Settled 1 interrupted dataset jobs."
    detail = api.get(f"/datasets/{created['id']}").json()
    assert detail["job"]["state"] == "failed"
    assert "interrupted" in detail["job"]["error"]["message"]
    assert not Row.objects.unscoped().filter(job=job).exists()
    assert detail["rows"] == 1
    # A job whose process still beats is left alone.
    assert DatasetJob.objects.unscoped().get(pk=alive.pk).state == "running"
    assert Row.objects.unscoped().filter(job=alive).exists()


def test_a_write_settles_the_datasets_interrupted_job_instead_of_refusing(api: DatasetApi) -> None:
    created = api.create(b"text,label\nkept,a\n")
    job = _stopped_import(created["id"], heartbeat_ago=timedelta(hours=1))

    response = api.upload(b"text,label\nmore,b\n", "more.csv", path=f"/datasets/{created['id']}/uploads")

    assert response.status_code == 201, response.content
    assert DatasetJob.objects.unscoped().get(pk=job.pk).state == "failed"
    assert [row["input"] for row in api.rows(created["id"])] == ["kept", "more"]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_large_datasets_are_remapped_in_the_background(
    tenant: Tenant, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_MAPPING_BACKGROUND_ROWS=10)
    api = DatasetApi(tenant, tenant.client(["datasets:read", "datasets:write"]))
    body = "text,grade\n" + "".join(f"answer number {i},{i % 3}\n" for i in range(300))
    created = api.create(body.encode(), "grades.csv")
    mapping = {"columns": [{"name": "grade", "format": "code", "labels": ["low", "mid", "high"]}]}
    response = api.patch(f"/datasets/{created['id']}", {"mapping": mapping})
    assert response.status_code == 202
    job_id = response.json()["job"]["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/datasets/{created['id']}/jobs/{job_id}").json()["state"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert api.get(f"/datasets/{created['id']}/rows", head="grade", label="high").json()["count"] == 100
    assert api.get(f"/datasets/{created['id']}").json()["state"] == "ready"


def test_a_finished_upload_is_announced_as_dataset_imported(api: DatasetApi) -> None:
    """Automation (webhooks) hears of every finished upload: the first file and one appended to it."""
    from arbiter.events.models import OutboxEvent
    from arbiter.events.registry import get_event_type

    created = api.create(b"text,label\nhello,a\nbye,b\n", "first.csv")
    appended = api.upload(
        b"text,label\nmore,a\nagain,b\nonce more,a\n", "more.csv", f"/datasets/{created['id']}/uploads"
    )
    assert appended.status_code in (200, 201, 202), appended.content

    events = [
        row.body
        for row in OutboxEvent.objects.using("dataset").filter(type="dataset.imported").order_by("id")
    ]
    for event in events:
        get_event_type("dataset.imported").validate(event["data"])
    assert [(e["data"]["file_name"], e["data"]["imported"], e["data"]["rows"]) for e in events] == [
        ("first.csv", 2, 2),
        ("more.csv", 3, 5),
    ]
    assert events[0]["subject"] == f"datasets/{created['id']}"
