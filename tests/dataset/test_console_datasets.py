"""Console pages of the dataset service: the upload wizard, the column mapping, the rows grid, snapshots."""

from __future__ import annotations

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.dataset.models import Dataset, DatasetJob, Row, Snapshot

pytestmark = pytest.mark.django_db(databases="__all__")

TOXIC = ["you are an idiot", "shut up moron", "i hate you loser", "you stupid fool"]
SAFE = ["have a nice day", "thanks for the help", "lovely weather", "see you tomorrow"]


def comments_csv(extra: str = "") -> bytes:
    lines = ["id,comment,toxicity"]
    lines += [
        f"{i},{(TOXIC if i % 2 else SAFE)[(i // 2) % 4]} {i},{'toxic' if i % 2 else 'safe'}"
        for i in range(1, 25)
    ]
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


def browser(tenant: Tenant, role: str | None = None) -> Client:
    client = Client()
    client.force_login(tenant.add_member(role)[0] if role else tenant.owner)
    return client


def upload(client: Client, tenant: Tenant, body: bytes, name: str = "comments.csv") -> Dataset:
    response = client.post(f"/console/{tenant.slug}/datasets/new", {"file": SimpleUploadedFile(name, body)})
    assert response.status_code == 302, response.content[:500]
    with org_scope(tenant.org.pk):
        dataset = Dataset.objects.order_by("-pk").first()
    assert response["Location"] == f"/console/{tenant.slug}/datasets/{dataset.pk}/columns"
    return dataset


def confirm_columns(client: Client, tenant: Tenant, dataset: Dataset, **fields: str) -> object:
    form = {
        "role_0": "ignore",
        "role_1": "text",
        "input_column": "1",
        "role_2": "label",
        "head_2": "toxicity",
        "format_2": "single",
        "labels_2": "",
        **fields,
    }
    return client.post(f"/console/{tenant.slug}/datasets/{dataset.pk}/columns", form)


def test_an_empty_org_can_upload_or_start_from_the_example(tenant: Tenant) -> None:
    client = browser(tenant)
    page = client.get(f"/console/{tenant.slug}/datasets")
    assert b"No datasets yet" in page.content and b"No dataset yet? Use an example" in page.content

    example = client.post(f"/console/{tenant.slug}/datasets/new", {"example": "moderation"})

    with org_scope(tenant.org.pk):
        dataset = Dataset.objects.get()
        rows = Row.objects.filter(dataset=dataset).count()
    assert example.status_code == 302 and rows > 0
    columns = client.get(example["Location"])
    assert b"toxicity" in columns.content and b"category" in columns.content


def test_upload_then_confirm_the_columns_with_a_preview(tenant: Tenant) -> None:
    client = browser(tenant)
    dataset = upload(client, tenant, comments_csv())

    columns = client.get(f"/console/{tenant.slug}/datasets/{dataset.pk}/columns")
    html = columns.content.decode()
    assert columns.status_code == 200
    assert re.search(r'name="role_1"[^>]*>.*?<option value="text" selected', html, re.S)
    assert re.search(r'name="role_2"[^>]*>.*?<option value="label" selected', html, re.S)
    assert "you are an idiot 1" in html  # the preview reads the first rows

    saved = confirm_columns(client, tenant, dataset, labels_2="safe, toxic")

    assert saved.status_code == 302
    assert saved["Location"] == f"/console/{tenant.slug}/datasets/{dataset.pk}/snapshots"
    dataset.refresh_from_db()
    label_column = next(c for c in dataset.mapping["columns"] if c["name"] == "toxicity")
    assert label_column["labels"] == ["safe", "toxic"] and dataset.mapping["input_column"] == "comment"
    assert "24 of 24 rows are valid" in client.get(saved["Location"]).content.decode()


def test_a_mapping_mistake_is_explained_and_nothing_changes(tenant: Tenant) -> None:
    client = browser(tenant)
    dataset = upload(client, tenant, comments_csv())
    before = dict(dataset.mapping)
    wrong = confirm_columns(client, tenant, dataset, format_2="score", labels_2="a, b, c")
    assert wrong.status_code == 400 and b"two labels" in wrong.content
    dataset.refresh_from_db()
    assert dataset.mapping == before


def test_an_unreadable_file_says_why_and_keeps_nothing(tenant: Tenant) -> None:
    response = browser(tenant).post(
        f"/console/{tenant.slug}/datasets/new", {"file": SimpleUploadedFile("empty.csv", b"")}
    )
    assert response.status_code == 400
    assert b"no row could be read" in response.content
    with org_scope(tenant.org.pk):
        assert not Dataset.objects.exists()
    missing = browser(tenant).post(f"/console/{tenant.slug}/datasets/new", {})
    assert missing.status_code == 400 and b"Choose a file" in missing.content


def test_the_rows_grid_searches_filters_relabels_adds_and_deletes(tenant: Tenant) -> None:
    client = browser(tenant)
    dataset = upload(
        client, tenant, comments_csv(extra='99,"<script>alert(1)</script>",toxic\r\n100,,safe\r\n')
    )
    confirm_columns(client, tenant, dataset)
    grid = f"/console/{tenant.slug}/datasets/{dataset.pk}"

    page = client.get(grid).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    found = client.get(grid, {"q": "idiot"}).content.decode()
    assert re.findall(r'<tr id="row-(\d+)"', found) == ["1", "9", "17"]
    invalid = client.get(grid, {"validity": "invalid"}).content.decode()
    assert re.findall(r'<tr id="row-(\d+)"', invalid) == ["26"] and "the input is empty" in invalid
    toxic = client.get(grid, {"head": "toxicity", "label": "toxic"}).content.decode()
    assert len(re.findall(r'<tr id="row-', toxic)) == 13

    relabelled = client.post(
        f"{grid}/rows/2", {"head": "toxicity", "labels": "toxic"}, HTTP_HX_REQUEST="true"
    )
    assert relabelled.status_code == 200
    assert relabelled.content.decode().startswith('<tr id="row-2"')
    assert re.search(r'<option value="toxic" selected', relabelled.content.decode())
    with org_scope(tenant.org.pk):
        assert Row.objects.get(dataset=dataset, number=2).labels == {"toxicity": {"toxic": True}}

    added = client.post(grid, {"text": "a brand new comment", "label_toxicity": "safe"})
    assert added.status_code == 302
    deleted = client.post(f"{grid}/rows/1/delete", HTTP_HX_REQUEST="true")
    assert deleted.status_code == 200 and deleted.content == b""
    with org_scope(tenant.org.pk):
        numbers = set(Row.objects.filter(dataset=dataset).values_list("number", flat=True))
        new = Row.objects.get(dataset=dataset, number=27)
    assert 1 not in numbers and new.cells[1] == "a brand new comment" and new.is_valid
    assert b"Row 27 added (valid)" in client.get(added["Location"]).content


def test_a_snapshot_reports_invalid_rows_class_counts_and_warnings(tenant: Tenant) -> None:
    client = browser(tenant)
    dataset = upload(client, tenant, comments_csv(extra="98,,toxic\r\n99,you are an idiot 1,safe\r\n"))
    confirm_columns(client, tenant, dataset)

    created = client.post(
        f"/console/{tenant.slug}/datasets/{dataset.pk}/snapshots",
        {"name": "first", "input_column": "comment", "label_columns": ["toxicity"]},
    )

    with org_scope(tenant.org.pk):
        snapshot = Snapshot.objects.get()
    assert (
        created.status_code == 302
        and created["Location"] == f"/console/{tenant.slug}/snapshots/{snapshot.pk}"
    )
    report = client.get(created["Location"]).content.decode()
    assert "the input is empty" in report  # the invalid row, with its reason
    assert "different labels" in report  # the duplicate with another label
    data = json.loads(
        re.search(r'<script id="snapshot-data" type="application/json">(.*?)</script>', report, re.S).group(1)
    )
    assert data["heads"]["toxicity"]["labels"] == {"safe": 13, "toxic": 12}
    assert f"/console/{tenant.slug}/models/new?snapshot={snapshot.pk}" in report
    listing = client.get(f"/console/{tenant.slug}/datasets/{dataset.pk}/snapshots")
    assert b"first" in listing.content


def test_a_snapshot_without_valid_rows_is_refused_with_the_reasons(tenant: Tenant) -> None:
    client = browser(tenant)
    dataset = upload(client, tenant, b"id,comment,toxicity\r\n1,,safe\r\n2,,toxic\r\n3,hello,safe\r\n")
    confirm_columns(client, tenant, dataset)
    with org_scope(tenant.org.pk):
        Row.objects.filter(dataset=dataset, number=3).delete()
    refused = client.post(
        f"/console/{tenant.slug}/datasets/{dataset.pk}/snapshots", {"label_columns": ["toxicity"]}
    )
    assert refused.status_code == 400
    assert b"no valid labelled rows" in refused.content and b"empty_input" in refused.content


def test_a_viewer_reads_datasets_but_cannot_change_them(tenant: Tenant) -> None:
    dataset = upload(browser(tenant), tenant, comments_csv())
    viewer = browser(tenant, "viewer")
    grid = f"/console/{tenant.slug}/datasets/{dataset.pk}"
    page = viewer.get(grid)
    assert (
        page.status_code == 200
        and b"Add a row" not in page.content
        and b'<select name="labels"' not in page.content
    )
    assert viewer.post(f"{grid}/rows/1", {"head": "toxicity", "labels": "toxic"}).status_code == 403
    assert viewer.post(f"{grid}/columns", {"role_1": "ignore"}).status_code == 403
    assert viewer.post(grid, {"text": "x"}).status_code == 403
    assert viewer.get(f"/console/{tenant.slug}/datasets/new").status_code == 403


def test_a_running_import_is_followed_live_until_the_rows_are_ready(tenant: Tenant) -> None:
    client = browser(tenant)
    dataset = upload(client, tenant, comments_csv())
    with org_scope(tenant.org.pk):
        job = DatasetJob.objects.create(
            org_id=tenant.org.pk,
            dataset=dataset,
            state=DatasetJob.RUNNING,
            source={"file_name": "more.csv"},
            rows_read=1200,
            created_by="test",
            heartbeat_at=timezone.now(),
        )
    progress = f"/console/{tenant.slug}/datasets/{dataset.pk}/progress"
    for page in ("", "/columns", "/snapshots"):
        html = client.get(f"/console/{tenant.slug}/datasets/{dataset.pk}{page}").content.decode()
        assert (
            "Importing more.csv" in html
            and f'hx-get="{progress}"' in html
            and 'hx-trigger="every 2s"' in html
        )

    DatasetJob.objects.unscoped().filter(pk=job.pk).update(rows_read=5400, rows_rejected=3)
    polled = client.get(progress, headers={"HX-Request": "true"})
    assert polled.status_code == 200 and "HX-Refresh" not in polled
    assert "5400 rows read so far, 3 rejected" in polled.content.decode()

    DatasetJob.objects.unscoped().filter(pk=job.pk).update(
        state=DatasetJob.COMPLETED, finished_at=timezone.now()
    )
    done = client.get(progress, headers={"HX-Request": "true"})
    assert done.status_code == 200 and done["HX-Refresh"] == "true"  # htmx reloads the page: rows are ready
    assert progress not in client.get(f"/console/{tenant.slug}/datasets/{dataset.pk}").content.decode()


@pytest.mark.cross_tenant(
    "console-datasets",
    "console-dataset-upload",
    "console-dataset",
    "console-dataset-columns",
    "console-dataset-row",
    "console-dataset-row-delete",
    "console-dataset-snapshots",
    "console-snapshot",
    "console-dataset-progress",
)
def test_dataset_pages_of_another_org_are_404(tenant: Tenant, victim: Tenant) -> None:
    owner = browser(victim)
    dataset = upload(owner, victim, comments_csv())
    confirm_columns(owner, victim, dataset)
    owner.post(f"/console/{victim.slug}/datasets/{dataset.pk}/snapshots", {"label_columns": ["toxicity"]})
    with org_scope(victim.org.pk):
        snapshot = Snapshot.objects.get()
    attacker = browser(tenant)
    for org in (victim.slug, tenant.slug):
        base = f"/console/{org}"
        ds = f"{base}/datasets/{dataset.pk}"
        for path in [
            ds,
            f"{ds}/columns",
            f"{ds}/snapshots",
            f"{ds}/progress",
            f"{base}/snapshots/{snapshot.pk}",
        ]:
            assert_not_found(attacker.get(path))
        assert_not_found(attacker.post(f"{ds}/rows/1", {"head": "toxicity", "labels": "safe"}))
        assert_not_found(attacker.post(f"{ds}/rows/1/delete"))
        assert_not_found(attacker.post(f"{ds}/columns", {"role_1": "ignore"}))
        assert_not_found(attacker.post(f"{ds}/snapshots", {"label_columns": ["toxicity"]}))
    assert_not_found(attacker.get(f"/console/{victim.slug}/datasets"))
    assert_not_found(attacker.get(f"/console/{victim.slug}/datasets/new"))
    assert_not_found(attacker.post(f"/console/{victim.slug}/datasets/new", {"example": "moderation"}))
    with org_scope(victim.org.pk):
        assert Row.objects.filter(dataset=dataset).count() == 24 and Snapshot.objects.count() == 1
        assert Dataset.objects.count() == 1
