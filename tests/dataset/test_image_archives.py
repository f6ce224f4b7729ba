"""Zips of images: an upload may be a zip of images with the one table (CSV, ...) naming them. The images are
checked by the same code as fetched ones and stored exactly as a fetched copy would be (same bytes, same hash),
so thumbnails, the rows grid and image snapshots work unchanged; a file the zip lacks, or a bad image, fails
that row with the reason and nothing else is lost. Unsafe and bomb-like zips are refused with 400s."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from arbiter.images import decode_image, image_blob_key, thumbnail_blob_key
from arbiter.storage import get_blob_store
from arbiter.testing.images import ImageServer, make_bomb_png, make_image, running_image_server
from arbiter.testing.tenants import Tenant
from services.dataset.importing import ArchiveLimits, ImportFileError, MemberNotFound, open_image_archive
from services.dataset.importing.archive import _listed_files
from services.dataset.models import Dataset

from .conftest import DatasetApi

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


@pytest.fixture
def server(override_arbiter_settings: Any) -> Iterator[ImageServer]:
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.1/32", ARBITER_FETCH_TIMEOUT_SECONDS=5)
    with running_image_server() as running:
        yield running


def zip_of(files: dict[str, bytes | str], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, body in files.items():
            archive.writestr(zipfile.ZipInfo(name), body, compress_type=compression)
    return buffer.getvalue()


def wait_until(check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def images_done(api: DatasetApi, dataset_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        images = api.get(f"/datasets/{dataset_id}").json().get("images") or {}
        job = images.get("job")
        return images if job and job["state"] in ("completed", "failed") else None

    return wait_until(done)


def test_a_zip_of_images_imports_fetched_rows_failed_rows_and_urls(
    api: DatasetApi, tenant: Tenant, server: ImageServer
) -> None:
    sources = {
        "data/photos/r0.jpg": make_image("JPEG", size=(80, 40), color=RED, mark=(0, 0, 0)),
        "data/photos/r1.png": make_image("PNG", size=(50, 30), color=BLUE),
        "data/photos/deep/r2.webp": make_image("WEBP", size=(30, 20), color=GREEN),
        # EXIF says "rotate 90": stored upright, as a fetch would (width and height swap).
        "data/photos/turned.jpg": make_image("JPEG", size=(60, 20), color=RED, exif_orientation=6),
        "data/photos/in a folder/with space.gif": make_image("GIF", size=(16, 16), color=BLUE),
    }
    whole = make_image("JPEG", size=(300, 200), noise=True)
    bad = {
        "data/photos/cut.jpg": whole[: len(whole) // 2],
        "data/photos/bomb.png": make_bomb_png(),
        "data/photos/page.jpg": b"<!doctype html><html>a login page</html>",
        "a/same.jpg": make_image("JPEG", color=RED),
        "b/same.jpg": make_image("JPEG", color=BLUE),
    }
    # The same picture served over HTTP: a URL in a zip's table is fetched as usual.
    url = server.serve("/r1-over-http.png", sources["data/photos/r1.png"], content_type="image/png")
    table = (
        "image,label\n"
        "photos/r0.jpg,red\n"  # relative to the table's folder
        "data/photos/r1.png,blue\n"  # relative to the zip's root
        "r2.webp,green\n"  # a bare file name, unique in the zip
        "./photos/turned.jpg,red\n"
        "photos/in a folder/with space.gif,blue\n"
        f"{url},blue\n"
        "photos/missing.jpg,red\n"
        "photos/cut.jpg,red\n"
        "photos/bomb.png,blue\n"
        "photos/page.jpg,blue\n"
        "same.jpg,red\n"
    )
    data = zip_of(
        {
            "data/labels.csv": table,
            **sources,
            **bad,
            "data/README.txt": "not a table",
            "__MACOSX/data/._labels.csv": b"\x00\x05\x16\x07 resource fork",
        }
    )
    created = api.create(data, "pets.zip")
    assert created["name"] == "pets"
    assert created["rows"] == 11  # every row is kept, good image or not
    assert created["mapping"]["input_column"] == "image"
    assert next(c for c in created["mapping"]["columns"] if c["name"] == "image")["role"] == "image"

    images = images_done(api, created["id"])
    assert (images["fetched"], images["failed"]) == (6, 5)
    rows = {row["number"]: row for row in api.rows(created["id"])}
    assert len(rows) == 11
    store = get_blob_store()
    for number, name in enumerate(sources, start=1):
        image = rows[number]["images"]["image"]
        assert image["state"] == "fetched", rows[number]
        # Stored exactly as a fetched image would be: arbiter.images' normalised bytes, under their hash.
        expected = decode_image(sources[name])
        assert image["sha256"] == expected.sha256 and image["mime"] == expected.mime
        with store.open(image_blob_key(image["sha256"])) as stream:
            assert stream.read() == expected.data
        assert store.exists(thumbnail_blob_key(image["sha256"]))
    assert (rows[4]["images"]["image"]["width"], rows[4]["images"]["image"]["height"]) == (20, 60)
    fetched_over_http = rows[6]["images"]["image"]
    assert fetched_over_http["state"] == "fetched"
    assert fetched_over_http["sha256"] == rows[2]["images"]["image"]["sha256"]  # one picture, stored once
    assert server.hits.count("/r1-over-http.png") == 1

    failures = {rows[n]["cells"]["image"]: rows[n]["images"]["image"] for n in range(7, 12)}
    assert {cell: image["error"]["code"] for cell, image in failures.items()} == {
        "photos/missing.jpg": "not_in_archive",
        "photos/cut.jpg": "truncated",
        "photos/bomb.png": "decompression_bomb",
        "photos/page.jpg": "not_an_image",
        "same.jpg": "not_in_archive",
    }
    assert all(image["state"] == "failed" for image in failures.values())
    assert failures["photos/missing.jpg"]["error"]["message"] == "photos/missing.jpg is not in pets.zip"
    assert (
        failures["photos/cut.jpg"]["error"]["message"]
        == "data/photos/cut.jpg in pets.zip is cut off or corrupt"
    )
    assert "matches 2 files in pets.zip (a/same.jpg, b/same.jpg" in failures["same.jpg"]["error"]["message"]

    # The image endpoints serve them like any fetched image.
    sha = rows[1]["images"]["image"]["sha256"]
    full = api.get(f"/datasets/{created['id']}/images/{sha}")
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == sha
    thumb = api.get(f"/datasets/{created['id']}/images/{sha}", thumbnail="true")
    with Image.open(io.BytesIO(thumb.content)) as small:
        assert small.size == (80, 40)  # smaller than a thumbnail's 160: kept as it is

    # Trying the failed ones again reads the same zip: the same reasons, one more attempt.
    again = api.post(f"/datasets/{created['id']}/images/fetch", {"retry_failed": True})
    assert again.status_code == 202, again.content
    assert images_done(api, created["id"])["failed"] == 5
    retried = api.get(f"/datasets/{created['id']}/rows/7").json()["images"]["image"]
    assert (retried["error"]["code"], retried["attempts"]) == ("not_in_archive", 2)

    # The rows grid shows the thumbnails and the reasons.
    browser = Client()
    browser.force_login(tenant.owner)
    html = browser.get(f"/console/{tenant.slug}/datasets/{created['id']}").content.decode()
    assert f"/datasets/{created['id']}/images/{sha}?thumbnail=1" in html
    assert "photos/missing.jpg is not in pets.zip" in html

    # An image snapshot: the fetched rows, each input the stored image's hash.
    response = api.post(f"/datasets/{created['id']}/snapshots", {"type": "image_classification"})
    assert response.status_code == 201, response.content
    snapshot = response.json()
    assert snapshot["rows"] == 6
    assert snapshot["report"]["invalid_reasons"] == {"image_failed": 5}
    content = b"".join(api.get(f"/snapshots/{snapshot['id']}/download").streaming_content)
    lines = [json.loads(line) for line in content.splitlines()]
    assert {line["input"] for line in lines} == {
        f"sha256:{rows[n]['images']['image']['sha256']}" for n in range(1, 7)
    }


def test_each_upload_names_files_of_its_own_zip_also_in_the_background(
    api: DatasetApi, override_arbiter_settings: Any
) -> None:
    first = api.create(
        zip_of({"labels.csv": "image,label\ncat.jpg,red\n", "cat.jpg": make_image("JPEG", color=RED)}),
        "one.zip",
    )
    images_done(api, first["id"])
    # More rows, from another zip with its own cat.jpg, imported in the background (its table is read again
    # from the stored zip).
    override_arbiter_settings(ARBITER_IMPORT_BACKGROUND_BYTES=0)
    second = zip_of(
        {
            "more/labels.jsonl": '{"image": "cat.jpg", "label": "blue"}\n',
            "more/cat.jpg": make_image("PNG", color=BLUE),
        }
    )
    response = api.upload(second, "two.zip", path=f"/datasets/{first['id']}/uploads")
    assert response.status_code == 202, response.content
    job = response.json()
    wait_until(lambda: api.get(f"/datasets/{first['id']}/jobs/{job['id']}").json()["state"] == "completed")
    images = wait_until(lambda: [found for found in [images_done(api, first["id"])] if found["fetched"] == 2])
    assert images[0]["failed"] == 0
    rows = api.rows(first["id"])
    assert [row["cells"]["image"] for row in rows] == ["cat.jpg", "cat.jpg"]
    assert [row["images"]["image"]["mime"] for row in rows] == ["image/jpeg", "image/png"]


def test_the_console_upload_takes_a_zip(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.get(f"/console/{tenant.slug}/datasets/new").content.decode()
    assert ".zip" in page.split('id="file"', 1)[1].split(">", 1)[0]
    body = zip_of({"t.csv": "picture,label\nx/a.png,one\n", "x/a.png": make_image("PNG", color=GREEN)})
    response = browser.post(
        f"/console/{tenant.slug}/datasets/new", {"file": SimpleUploadedFile("pics.zip", body)}
    )
    assert response.status_code == 302, response.content
    dataset = Dataset.objects.unscoped().get(org_id=tenant.org.pk)
    assert dataset.mapping["input_column"] == "picture"
    assert dataset.source["archive"] == {"table": "t.csv", "files": 2}


PNG = make_image("PNG", size=(8, 8))


@pytest.mark.parametrize(
    ("files", "variables", "code", "message"),
    [
        (
            {"labels.csv": "image\n../evil.png\n", "../evil.png": PNG},
            {},
            "unsafe_path",
            "pics.zip: the archive holds '../evil.png', a name outside the archive",
        ),
        (
            {"labels.csv": "image\n/etc/x.png\n", "/etc/x.png": PNG},
            {},
            "unsafe_path",
            "pics.zip: the archive holds '/etc/x.png'",
        ),
        (
            {"labels.csv": "image\nx.png\n", "photos\\..\\..\\x.png": PNG},
            {},
            "unsafe_path",
            "a name outside the archive",
        ),
        (
            {"a.csv": "image\nx.png\n", "sub/b.jsonl": "{}\n", "x.png": PNG},
            {},
            "several_tables",
            "pics.zip: the archive holds 2 tables (a.csv, sub/b.jsonl); keep exactly one",
        ),
        ({"x.png": PNG, "notes.txt": "hi"}, {}, "no_table", "the archive holds no table"),
        (
            {"labels.csv": "image\nbig.png\n", "big.png": b"\0" * (20 * 1024 * 1024)},
            {},
            "zip_bomb",
            "pics.zip: the archive file big.png compresses",
        ),
        (
            {"labels.csv": "image\n0.png\n", **{f"{i}.png": PNG for i in range(10)}},
            {"ARBITER_ZIP_MAX_FILES": 5},
            "zip_bomb",
            "pics.zip: the archive has 11 files, more than 5",
        ),
        (
            {"labels.csv": "image\n0.png\n", "0.png": b"\1" * 200_000},
            {"ARBITER_ZIP_MAX_UNCOMPRESSED_BYTES": 100_000},
            "zip_bomb",
            "would expand to 200,",
        ),
    ],
)
def test_unsafe_and_bomb_like_zips_are_refused_and_nothing_is_kept(
    api: DatasetApi,
    override_arbiter_settings: Any,
    files: dict[str, Any],
    variables: dict[str, Any],
    code: str,
    message: str,
) -> None:
    if variables:
        override_arbiter_settings(**variables)
    response = api.upload(zip_of(files), "pics.zip")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], message in error["message"]) == (code, True), error
    assert not Dataset.objects.unscoped().filter(org_id=api.tenant.org.pk).exists()


def test_a_file_named_zip_that_is_no_zip_is_a_400(api: DatasetApi) -> None:
    response = api.upload(b"image,label\nx.png,a\n", "pics.zip")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unparseable"
    assert response.json()["error"]["message"] == "pics.zip: not a valid zip archive"


def test_the_file_count_is_walked_from_the_directory_not_trusted_from_the_end_record() -> None:
    body = zip_of({f"{i}.png": PNG for i in range(7)})
    # Data before the archive (a self-extracting zip) moves the directory; the count still holds.
    for data in (body, b"#!/bin/sh\n" * 50 + body):
        assert _listed_files(io.BytesIO(data)) == 7
    # An end record that claims 1 entry while the directory lists 7.
    end = body.rindex(b"PK\x05\x06")
    lying = bytearray(body)
    lying[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2
    assert _listed_files(io.BytesIO(bytes(lying))) == 7
    with pytest.raises(ImportFileError, match="the archive has 7 files, more than 3"):
        open_image_archive(io.BytesIO(bytes(lying)), file_name="x.zip", limits=ArchiveLimits(max_files=3))


def test_cells_name_files_by_path_or_unique_name_never_outside() -> None:
    body = zip_of(
        {"set/t.csv": "a\n", "set/img/a.png": PNG, "top.png": PNG, "x/dup.png": PNG, "y/dup.png": PNG}
    )
    archive = open_image_archive(io.BytesIO(body), file_name="s.zip", limits=ArchiveLimits())
    assert archive is not None and archive.table_name == "set/t.csv"
    assert archive.resolve("img/a.png") == "set/img/a.png"
    assert archive.resolve("img\\a.png") == "set/img/a.png"
    assert archive.resolve("set/img/a.png") == "set/img/a.png"
    assert archive.resolve("../top.png") == "top.png"  # a path from the table's folder, still inside
    assert archive.resolve("a.png") == "set/img/a.png"
    for cell in ("../../top.png", "/top.png", "dup.png", "https://example.com/a.png", "img/b.png"):
        with pytest.raises(MemberNotFound):
            archive.resolve(cell)
    assert archive.names_image("img/b.png") and not archive.names_image("a sentence of text")
    archive.close()
    # A workbook is a zip too: it is read as a workbook, not as an archive of images.
    workbook = zip_of({"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<workbook/>"})
    assert open_image_archive(io.BytesIO(workbook), file_name="book", limits=ArchiveLimits()) is None


def test_a_zip_in_s3_is_read_back_by_the_background_import_and_the_fetch_job(
    tenant: Tenant, s3_env: str, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_BLOB_STORE=f"s3://{s3_env}/arbiter", ARBITER_IMPORT_BACKGROUND_BYTES=10)
    api = DatasetApi(tenant, tenant.client(["datasets:read", "datasets:write"]))
    picture = make_image("JPEG", size=(40, 30), color=GREEN)
    body = zip_of({"t.csv": "image,label\nimg/a.jpg,green\nimg/b.jpg,green\n", "img/a.jpg": picture})
    response = api.upload(body, "s3.zip")
    assert response.status_code == 202, response.content  # a table over 10 bytes: read in the background
    dataset_id = response.json()["id"]
    images = images_done(api, dataset_id)
    assert (images["fetched"], images["failed"]) == (1, 1)
    rows = api.rows(dataset_id)
    assert rows[0]["images"]["image"]["sha256"] == decode_image(picture).sha256
    assert rows[1]["images"]["image"]["error"]["message"] == "img/b.jpg is not in s3.zip"
    assert get_blob_store().exists(image_blob_key(decode_image(picture).sha256))
