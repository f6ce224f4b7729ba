"""Image columns: the background job fetches each row's image from a loopback server (inside an allowed
network), stores it content-addressed, and marks every bad image a failed row with its reason; failed rows can
be fetched again; image snapshots reference the images by hash and do not change when rows do."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from arbiter.images import image_blob_key
from arbiter.storage import get_blob_store
from arbiter.testing.images import ImageServer, make_bomb_png, make_image, running_image_server
from arbiter.testing.tenants import Tenant, assert_not_found

from .conftest import DatasetApi

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

RED, BLUE = (220, 20, 20), (20, 20, 220)


@pytest.fixture
def server(override_arbiter_settings: Any) -> Iterator[ImageServer]:
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.1/32", ARBITER_FETCH_TIMEOUT_SECONDS=5)
    with running_image_server() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_fetch(api: DatasetApi, dataset_id: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        images = api.get(f"/datasets/{dataset_id}").json().get("images") or {}
        job = images.get("job")
        if job and job["state"] in ("completed", "failed"):
            return images
        assert time.monotonic() < deadline, f"the image fetch job did not finish: {images}"
        time.sleep(0.1)


def csv_of(rows: list[tuple[str, str]]) -> bytes:
    return ("image,tobacco\n" + "".join(f"{url},{label}\n" for url, label in rows)).encode()


BAD = {
    "missing": "http_status",
    "page": "not_an_image",
    "cut": "truncated",
    "bomb": "decompression_bomb",
    "huge": "too_large",
    "sneaky": "address",
    "down": "connect",
}


def serve_all(server: ImageServer) -> list[tuple[str, str]]:
    rows = []
    for i in range(12):
        colour, label = (RED, "yes_tobacco") if i % 2 else (BLUE, "no_tobacco")
        body = make_image("JPEG", size=(60 + i, 40), color=colour, mark=(i * 20, 0, 0))
        rows.append((server.serve(f"/good/{i}.jpg", body), label))
    whole = make_image("JPEG", size=(300, 200), noise=True)
    server.serve("/bad/page.jpg", b"<!doctype html><html>a login page</html>", content_type="text/html")
    server.serve("/bad/cut.jpg", whole[: len(whole) // 2])
    server.serve("/bad/bomb.png", make_bomb_png(), content_type="image/png")
    server.serve("/bad/huge.jpg", b"\xff\xd8\xff" + b"\0" * (50 * 1024 * 1024))
    server.redirect("/bad/sneaky.jpg", "http://169.254.169.254/latest/meta-data/x.jpg")
    rows += [
        (server.url("/bad/missing.jpg"), "no_tobacco"),
        (server.url("/bad/page.jpg"), "no_tobacco"),
        (server.url("/bad/cut.jpg"), "no_tobacco"),
        (server.url("/bad/bomb.png"), "yes_tobacco"),
        (server.url("/bad/huge.jpg"), "yes_tobacco"),
        (server.url("/bad/sneaky.jpg"), "yes_tobacco"),
        (f"http://127.0.0.1:{closed_port()}/bad/down.jpg", "yes_tobacco"),
    ]
    return rows


def test_image_rows_are_fetched_failed_with_reasons_refetched_and_snapshotted(
    api: DatasetApi, server: ImageServer
) -> None:
    rows = serve_all(server)
    created = api.create(csv_of(rows), "tobacco.csv")
    assert created["mapping"]["input_column"] == "image"
    assert next(c for c in created["mapping"]["columns"] if c["name"] == "image")["role"] == "image"
    dataset_id = created["id"]

    images = wait_for_fetch(api, dataset_id)
    assert (images["fetched"], images["failed"]) == (12, 7)
    listed = api.rows(dataset_id)
    assert len(listed) == 19  # nothing else in the dataset is lost
    for row in listed[:12]:
        image = row["images"]["image"]
        assert image["state"] == "fetched", row
        assert image["width"] == 60 + row["number"] - 1 and image["height"] == 40
    failures = {
        row["cells"]["image"].rsplit("/", 1)[1].split(".")[0]: row["images"]["image"] for row in listed[12:]
    }
    assert {name: image["error"]["code"] for name, image in failures.items()} == BAD
    assert all(image["state"] == "failed" and image["error"]["message"] for image in failures.values())
    assert "HTTP 404" in failures["missing"]["error"]["message"]
    assert "169.254.169.254" in failures["sneaky"]["error"]["message"]

    # The stored image and its thumbnail, by hash.
    first = listed[0]["images"]["image"]
    full = api.get(f"/datasets/{dataset_id}/images/{first['sha256']}")
    assert full.status_code == 200 and full["Content-Type"] == "image/jpeg"
    assert hashlib.sha256(full.content).hexdigest() == first["sha256"]
    thumb = api.get(f"/datasets/{dataset_id}/images/{first['sha256']}", thumbnail="true")
    assert thumb.status_code == 200
    with Image.open(io.BytesIO(thumb.content)) as small:
        assert max(small.size) <= 160
    assert api.get(f"/datasets/{dataset_id}/images/{'0' * 64}").status_code == 404

    # The missing image appears; fetching again fixes that row and leaves the rest as they were.
    server.serve("/bad/missing.jpg", make_image("PNG", size=(30, 30), color=RED))
    job = api.post(f"/datasets/{dataset_id}/images/fetch", {"retry_failed": True})
    assert job.status_code == 202, job.content
    images = wait_for_fetch(api, dataset_id)
    assert (images["fetched"], images["failed"]) == (13, 6)
    fixed = api.get(f"/datasets/{dataset_id}/rows/13").json()["images"]["image"]
    assert (fixed["state"], fixed["mime"], fixed["attempts"]) == ("fetched", "image/png", 2)

    # A snapshot with the image input (its type left out: the image column makes it an image snapshot):
    # fetched rows only, each input the image's hash; failed rows say why.
    response = api.post(f"/datasets/{dataset_id}/snapshots", {})
    assert response.status_code == 201, response.content
    snapshot = response.json()
    assert snapshot["type"] == "image_classification"
    assert snapshot["rows"] == 13
    assert snapshot["report"]["invalid_reasons"] == {"image_failed": 6}
    body = api.get(f"/snapshots/{snapshot['id']}/download")
    content = b"".join(body.streaming_content)
    lines = [json.loads(line) for line in content.splitlines()]
    assert all(line["input"].startswith("sha256:") for line in lines)
    store = get_blob_store()
    for line in lines:
        assert store.exists(image_blob_key(line["input"].removeprefix("sha256:")))

    # Editing a row's image does not touch the snapshot: its file and the images it names stay.
    old = lines[0]["input"].removeprefix("sha256:")
    server.serve("/good/replacement.jpg", make_image("JPEG", size=(99, 99), color=(1, 200, 1)))
    edited = api.patch(
        f"/datasets/{dataset_id}/rows/{lines[0]['row']}",
        {"cells": {"image": server.url("/good/replacement.jpg")}},
    )
    assert edited.status_code == 200, edited.content
    wait_for_fetch(api, dataset_id)
    after = api.get(f"/datasets/{dataset_id}/rows/{lines[0]['row']}").json()["images"]["image"]
    assert after["width"] == 99 and after["sha256"] != old
    again = b"".join(api.get(f"/snapshots/{snapshot['id']}/download").streaming_content)
    assert again == content
    assert hashlib.sha256(again).hexdigest() == snapshot["sha256"]
    assert store.exists(image_blob_key(old))


@pytest.mark.cross_tenant(
    "dataset-images-fetch", "dataset-image", "console-dataset-image", "console-dataset-images-fetch"
)
def test_another_orgs_images_are_404(tenant: Tenant, victim: Tenant, server: ImageServer) -> None:
    owner = DatasetApi(victim, victim.client(["datasets:read", "datasets:write"]))
    url = server.serve("/victim.jpg", make_image("JPEG", color=RED))
    dataset = owner.create(csv_of([(url, "yes_tobacco")]), "victim.csv")
    sha = wait_for_fetch(owner, dataset["id"]) and owner.rows(dataset["id"])[0]["images"]["image"]["sha256"]
    attacker = tenant.client(["admin"])
    own = DatasetApi(tenant, attacker).create(csv_of([(url, "no_tobacco")]), "mine.csv")
    d = f"/datasets/{dataset['id']}"
    for org in (victim, tenant):
        assert_not_found(attacker.get(org.url(f"{d}/images/{sha}")))
        assert_not_found(attacker.post(org.url(f"{d}/images/fetch"), {}, format="json"))
    # In the console too: the attacker's session, through either org's pages.
    from django.test import Client

    browser = Client()
    browser.force_login(tenant.owner)
    for slug in (victim.slug, tenant.slug):
        page = f"/console/{slug}/datasets/{dataset['id']}"
        assert browser.get(f"{page}/images/{sha}?thumbnail=1").status_code == 404
        assert browser.post(f"{page}/images-fetch").status_code == 404
    # The same picture in the attacker's own dataset is served from it, and only that way.
    wait_for_fetch(DatasetApi(tenant, attacker), own["id"])
    assert attacker.get(tenant.url(f"/datasets/{own['id']}/images/{sha}")).status_code == 200
    own_page = f"/console/{tenant.slug}/datasets/{own['id']}"
    assert browser.get(f"{own_page}/images/{sha}").status_code == 200


def test_the_rows_grid_shows_thumbnails_failures_and_fetches_again(
    tenant: Tenant, server: ImageServer
) -> None:
    from django.test import Client

    api = DatasetApi(tenant, tenant.client(["datasets:read", "datasets:write"]))
    good = server.serve("/grid/good.jpg", make_image("JPEG", size=(200, 100), color=RED))
    dataset = api.create(
        csv_of([(good, "yes_tobacco"), (server.url("/grid/gone.jpg"), "no_tobacco")]), "g.csv"
    )
    wait_for_fetch(api, dataset["id"])
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.get(f"/console/{tenant.slug}/datasets/{dataset['id']}")
    html = page.content.decode()
    assert page.status_code == 200
    sha = api.rows(dataset["id"])[0]["images"]["image"]["sha256"]
    thumb_url = f"/console/{tenant.slug}/datasets/{dataset['id']}/images/{sha}?thumbnail=1"
    assert f'src="{thumb_url}"' in html
    assert "image failed" in html and "HTTP 404" in html
    assert "1</strong> could not be fetched" in html
    thumb = browser.get(thumb_url)
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as small:
        assert small.size == (160, 80)
    # The missing image appears; the button fetches it.
    server.serve("/grid/gone.jpg", make_image("JPEG", color=BLUE))
    fetched = browser.post(f"/console/{tenant.slug}/datasets/{dataset['id']}/images-fetch")
    assert fetched.status_code == 302
    images = wait_for_fetch(api, dataset["id"])
    assert (images["fetched"], images["failed"]) == (2, 0)
    assert (
        "image failed" not in browser.get(f"/console/{tenant.slug}/datasets/{dataset['id']}").content.decode()
    )
