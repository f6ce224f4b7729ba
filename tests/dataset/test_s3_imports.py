"""Background imports read their upload back from the blob store: here an S3 server (moto) on loopback."""

from __future__ import annotations

import io
import time
from typing import Any

import openpyxl
import pytest

from arbiter.storage import get_blob_store
from arbiter.testing.tenants import Tenant
from tests.dataset.conftest import DatasetApi

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def wait_for(api: DatasetApi, dataset_id: int, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job = api.get(f"/datasets/{dataset_id}/jobs/{job_id}").json()
        if job["state"] in ("completed", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.2)


def test_background_imports_from_s3(
    tenant: Tenant,
    s3_env: str,
    override_arbiter_settings: Any,
) -> None:
    override_arbiter_settings(
        ARBITER_BLOB_STORE=f"s3://{s3_env}/arbiter", ARBITER_IMPORT_BACKGROUND_BYTES=100
    )
    api = DatasetApi(tenant, tenant.client(["datasets:read", "datasets:write"]))

    book = openpyxl.Workbook()
    book.active.append(["text", "label"])
    for i in range(500):
        book.active.append([f"spreadsheet row {i}", "ab"[i % 2]])
    buffer = io.BytesIO()
    book.save(buffer)
    response = api.upload(buffer.getvalue(), "sheet.xlsx")
    assert response.status_code == 202, response.content
    job = wait_for(api, response.json()["id"], response.json()["job"]["id"])
    assert (job["state"], job["rows_imported"]) == ("completed", 500)

    csv_body = "text;label\n" + "".join(f"ligne numéro {i};{'xy'[i % 2]}\n" for i in range(800))
    response = api.upload(csv_body.encode("cp1252"), "lignes.csv")
    assert response.status_code == 202
    dataset_id = response.json()["id"]
    job = wait_for(api, dataset_id, response.json()["job"]["id"])
    assert (job["state"], job["rows_imported"], job["file"]["detected"]["encoding"]) == (
        "completed",
        800,
        "cp1252",
    )
    assert api.rows(dataset_id)[0]["input"] == "ligne numéro 0"
    assert get_blob_store().describe("x").startswith(f"s3://{s3_env}/arbiter/")
